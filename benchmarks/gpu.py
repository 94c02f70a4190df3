"""GPU: the same Pacemaker training on CPU and, where TensorFlow sees a GPU, on GPU; throughput in structures per
second per epoch (one loss-and-gradient evaluation over the training set), from Pacemaker's own ``Time/eval``
(µs per atom) in ``log.txt``. Without a GPU it says so and reports the CPU alone.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import executable, load_average, print_table, ratio, summary

NAME = "gpu"
SETTINGS = {
    "quick": {"structures": 16, "repeat": (1, 1, 2), "maxiter": 5, "functions": 8, "repeats": 1},
    "full": {"structures": 60, "repeat": (2, 2, 2), "maxiter": 20, "functions": 16, "repeats": 2},
}
ITERATION = re.compile(r"Iteration\s+#\d+.*Time/eval:\s*([0-9.]+)\s*mcs/at")


def visible_gpus() -> list[str]:
    """GPUs TensorFlow can use (asked in a subprocess, so this process stays free of TensorFlow)."""
    code = "import tensorflow as tf; print('|'.join(d.name for d in tf.config.list_physical_devices('GPU')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    return [name for name in (lines[-1].split("|") if lines else []) if name]


def fit(folder: Path, device: str, settings: dict[str, Any], structures) -> dict[str, Any]:
    """One ``pacemaker input.yaml`` on ``device``: wall time and throughput per epoch."""
    from aiida_autopipec.config import SystemConfig
    from aiida_autopipec.learning import files
    from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
    from aiida_autopipec.learning.pacemaker import prepare_fit

    config = SystemConfig(
        elements=["Al", "Cu"],
        cutoff=5.0,
        maxiter=settings["maxiter"],
        number_of_functions_per_element=settings["functions"],
        display_step=settings["maxiter"],
        test_size=0.1,
        device=device,
    )
    folder.mkdir(parents=True)
    prepare_fit(folder, PacemakerConfigGenerator(config), structures)
    start = time.perf_counter()
    with open(folder / files.STDOUT, "w") as out, open(folder / files.STDERR, "w") as err:
        result = subprocess.run([executable("pacemaker"), files.INPUT_YAML], cwd=folder, stdout=out, stderr=err)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"pacemaker on {device} failed ({result.returncode}) in {folder}")
    per_atom = [float(match) for match in ITERATION.findall((folder / files.LOG).read_text())]
    if not per_atom:
        raise RuntimeError(f"no 'Time/eval' lines in {folder / files.LOG}")
    atoms_per_structure = structures.num_atoms / structures.num_structures
    microseconds = statistics.median(per_atom)
    return {"wall_s": wall, "us_per_atom": microseconds, "structures_per_s": 1e6 / (microseconds * atoms_per_structure)}


def run(mode: str, workdir: Path) -> dict[str, Any]:
    from aiida_autopipec.learning.dataset import StructureArrays
    from aiida_autopipec.learning.reference_data import emt_dataset

    settings = SETTINGS[mode]
    structures = StructureArrays.from_atoms(emt_dataset(settings["structures"], seed=21, repeat=settings["repeat"]))
    gpus = visible_gpus()
    devices = ["cpu"] + (["gpu"] if gpus else [])
    load_before = load_average()
    runs: dict[str, list] = {device: [] for device in devices}
    for repeat in range(settings["repeats"]):
        for device in devices:
            runs[device].append(fit(workdir / f"{device}-{repeat}", device, settings, structures))
    load_after = load_average()
    throughput = {device: summary([entry["structures_per_s"] for entry in entries]) for device, entries in runs.items()}
    result = {
        "benchmark": NAME,
        "mode": mode,
        "description": "training throughput (structures/s per epoch, from Pacemaker's Time/eval): GPU / CPU",
        "gpu_available": bool(gpus),
        "gpus": gpus,
        "note": "" if gpus else "no GPU visible to TensorFlow on this machine: CPU only, no GPU/CPU ratio",
        "structures": settings["structures"],
        "atoms_per_structure": structures.num_atoms // structures.num_structures,
        "throughput_structures_per_s": throughput,
        "us_per_atom": {device: summary([e["us_per_atom"] for e in entries]) for device, entries in runs.items()},
        "fit_wall_s": {device: summary([e["wall_s"] for e in entries]) for device, entries in runs.items()},
        "ratio": ratio(throughput["gpu"]["median"], throughput["cpu"]["median"]) if gpus else None,
        "settings": settings,
        "load_average": {"before": load_before, "after": load_after},
    }
    rows = [("GPUs visible to TensorFlow", ", ".join(gpus) or "none (CPU only)")]
    for device in devices:
        rows.append((f"{device}: structures/s per epoch (median)", f"{throughput[device]['median']:.1f}"))
        rows.append((f"{device}: fit wall time (median)", f"{result['fit_wall_s'][device]['median']:.1f} s"))
    rows.append(("GPU / CPU throughput", f"{result['ratio']:.2f}" if gpus else "n/a (no GPU)"))
    rows.append(("load average before / after", f"{load_before} / {load_after}"))
    print_table(f"5. GPU vs CPU training ({mode})", rows)
    return result
