"""Which device (CPU or a GPU) a Pacemaker fit ran on, read from TensorFlow's own messages in its stderr.

Pacemaker's log.txt never says. With ``--verbose-tf`` (always passed, see ``files.PACEMAKER_ARGUMENTS``) TensorFlow
prints ``Created device /job:localhost/replica:0/task:0/device:GPU:0 with <N> MB memory: -> device: 0, name: <GPU>``
for every GPU it sets up; TensorFlow places the fit on the first of them. Without that line the fit ran on the CPU
(on a machine without a GPU TensorFlow says ``failed call to cuInit`` instead).
"""

from __future__ import annotations

import re

__all__ = ["training_device"]

#: TensorFlow >= 2.5 writes ``Created device /job:.../device:GPU:0 with N MB memory:  -> device: 0, name: X, ...``,
#: older versions ``Created TensorFlow device (/job:.../device:GPU:0 with N MB memory) -> physical GPU (device: 0,
#: name: X, ...)``.
_CREATED_GPU = re.compile(
    r"Created (?:TensorFlow )?device \(?\S*device:GPU:(?P<index>\d+) with (?P<memory>\d+) MB memory\)?:?\s*->\s*"
    r"(?:physical GPU \()?device:\s*\d+,\s*name:\s*(?P<name>[^,\n]+)"
)
_NO_CUDA_DRIVER = "failed call to cuInit"


def training_device(stderr: str, requested: str = "auto") -> dict:
    """``{"device": "cpu" | "gpu:<index>", "name": GPU name or None, "gpu_memory_mb": int or None, "evidence": str}``.

    ``requested`` is the TrainingConfig ``device``: with ``cpu`` Pacemaker hides the GPUs, so the fit ran on the CPU
    whatever TensorFlow found.
    """
    if requested == "cpu":
        return {"device": "cpu", "name": None, "gpu_memory_mb": None, "evidence": "device 'cpu' requested"}
    gpus = sorted((int(m["index"]), m) for m in _CREATED_GPU.finditer(stderr))
    if gpus:
        index, match = gpus[0]
        return {
            "device": f"gpu:{index}",
            "name": match["name"].strip(),
            "gpu_memory_mb": int(match["memory"]),
            "evidence": f"TensorFlow created {len(gpus)} GPU device(s)",
        }
    evidence = "no CUDA driver (cuInit failed)" if _NO_CUDA_DRIVER in stderr else "TensorFlow created no GPU device"
    return {"device": "cpu", "name": None, "gpu_memory_mb": None, "evidence": evidence}
