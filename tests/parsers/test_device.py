"""Which device trained, recorded in ``metrics.device``: read from TensorFlow's messages in pacemaker's stderr."""

from __future__ import annotations

import pytest

from aiida_autopipec.learning.device import training_device
from aiida_autopipec.parsers.pacemaker import PacemakerParser
from tests.conftest import RECORDED

#: TensorFlow's GPU set-up messages in the format of TF >= 2.5 and of older versions (quoted from TensorFlow issues
#: 62170 and 31969; no GPU run could be recorded on this CPU-only machine).
TF_GPU_MESSAGE = (
    "2026-01-01 10:00:00.000000: I external/local_xla/xla/stream_executor/cuda/cuda_executor.cc:1001] ...\n"
    "I0000 00:00:1700000000.000000  1234 gpu_device.cc:2020] Created device /job:localhost/replica:0/task:0/"
    "device:GPU:0 with 78911 MB memory:  -> device: 0, name: NVIDIA H100 80GB HBM3, pci bus id: 0000:19:00.0, "
    "compute capability: 9.0\n"
)
TF_GPU_MESSAGE_OLD = (
    "2019-08-26 11:51:18.215580: I tensorflow/core/common_runtime/gpu/gpu_device.cc:1326] Created TensorFlow device "
    "(/job:localhost/replica:0/task:0/device:GPU:7 with 20545 MB memory) -> physical GPU (device: 7, name: Tesla M40 "
    "24GB, pci bus id: 0000:89:00.0, compute capability: 5.2)\n"
)


def test_recorded_cpu_run_without_cuda_driver_is_cpu():
    """The real stderr of a device 'auto' fit on this machine: TensorFlow fails cuInit and trains on the CPU."""
    stderr = (RECORDED / "success_device_auto" / "pacemaker.err").read_text()
    assert "failed call to cuInit" in stderr  # what TensorFlow really says here (pacemaker run with --verbose-tf)
    assert training_device(stderr, "auto") == {
        "device": "cpu",
        "name": None,
        "gpu_memory_mb": None,
        "evidence": "no CUDA driver (cuInit failed)",
    }


@pytest.mark.parametrize("case", ["success", "success_core_repulsion", "error_exit", "killed"])
def test_every_recorded_run_is_cpu(case):
    assert training_device((RECORDED / case / "pacemaker.err").read_text(), "auto")["device"] == "cpu"


@pytest.mark.parametrize(
    ("stderr", "device", "name", "memory"),
    [(TF_GPU_MESSAGE, "gpu:0", "NVIDIA H100 80GB HBM3", 78911), (TF_GPU_MESSAGE_OLD, "gpu:7", "Tesla M40 24GB", 20545)],
)
def test_gpu_created_by_tensorflow(stderr, device, name, memory):
    info = training_device(stderr, "auto")
    assert (info["device"], info["name"], info["gpu_memory_mb"]) == (device, name, memory)
    assert training_device(stderr, "gpu")["device"] == device


def test_device_cpu_requested_hides_gpus():
    assert training_device(TF_GPU_MESSAGE, "cpu")["device"] == "cpu"


def test_parser_records_device_in_metrics(generate_calc_job_node):
    node = generate_calc_job_node("success_device_auto", parameters={"device": "auto"})
    results, calcfunction = PacemakerParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    metrics = results["metrics"].get_dict()
    assert metrics["device"] == "cpu"
    assert metrics["device_info"]["evidence"] == "no CUDA driver (cuInit failed)"
