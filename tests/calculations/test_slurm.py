"""Requesting GPUs with ``metadata.options.gpus`` and training through a real SLURM cluster (``core.slurm``).

The SLURM test needs the one-node cluster of ``.ci/setup_slurm.sh`` (GPU GRES on /dev/null, so ``--gres=gpu:1``
schedules on this CPU-only machine, where ``device: auto`` then trains on the CPU).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.codes import get_or_create_local_code
from aiida_autopipec.data import TrainingSetData
from tests.conftest import FAST_PARAMETERS
from tests.storage_fixtures import skip_or_fail

GRES_LINE = "#SBATCH --gres=gpu:1"
#: Written by the job's prepend_text: what SLURM put into the job's environment.
SLURM_ENVIRONMENT_FILE = "slurm_environment.txt"


@pytest.fixture(scope="module")
def slurm_computer(aiida_profile, tmp_path_factory):
    """This machine through SLURM (``core.local`` transport, ``core.slurm`` scheduler), absolute work directory."""
    computer = orm.Computer(
        label="autopipec-slurm",
        hostname="localhost",
        transport_type="core.local",
        scheduler_type="core.slurm",
        workdir=str(tmp_path_factory.mktemp("aiida_slurm").resolve()),
    ).store()
    computer.configure(safe_interval=0.0)
    computer.set_minimum_job_poll_interval(1.0)
    return computer


@pytest.fixture(scope="module")
def slurm_pacemaker(slurm_computer):
    return get_or_create_local_code(computer=slurm_computer)


def gpu_inputs(code, structures, gpus=1, **options):
    return {
        "code": code,
        "training_set": TrainingSetData.from_ase(structures),
        "parameters": orm.Dict({**FAST_PARAMETERS, "device": "auto"}),
        "metadata": {"options": {"gpus": gpus, **options}},
    }


def dry_run_script(inputs) -> str:
    """The job script AiiDA would submit (a dry run: nothing stored, nothing submitted)."""
    inputs["metadata"].update(dry_run=True, store_provenance=False)
    _, node = run_get_node(PacemakerCalculation, **inputs)
    return (Path(node.dry_run_info["folder"]) / "_aiidasubmit.sh").read_text()


def test_gpu_request_becomes_the_slurm_gres_directive(slurm_pacemaker, emt_structures):
    script = dry_run_script(gpu_inputs(slurm_pacemaker, emt_structures[:6], gpus=2))
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --gres=gpu:2" in sbatch
    # pacemaker keeps TensorFlow's device messages, from which metrics.device is read
    assert any("--verbose-tf" in line and "input.yaml" in line for line in script.splitlines())


def test_gpu_request_keeps_other_custom_scheduler_commands(slurm_pacemaker, emt_structures):
    inputs = gpu_inputs(slurm_pacemaker, emt_structures[:6], custom_scheduler_commands="#SBATCH --constraint=a100")
    lines = dry_run_script(inputs).splitlines()
    assert lines.index("#SBATCH --constraint=a100") < lines.index(GRES_LINE)


def test_no_gpu_request_no_directive(slurm_pacemaker, emt_structures):
    assert "--gres" not in dry_run_script(gpu_inputs(slurm_pacemaker, emt_structures[:6], gpus=0))


@pytest.mark.parametrize(
    ("where", "change", "message"),
    [
        ("local", {}, "scheduler 'core.direct'"),
        ("slurm", {"gpus": -1}, ">= 0"),
        ("slurm", {"device": "cpu"}, "device is 'cpu'"),
        ("slurm", {"custom_scheduler_commands": "#SBATCH --gres=gpu:4"}, "already requests GPUs"),
    ],
)
def test_bad_gpu_requests_rejected_before_anything_is_stored(
    where, change, message, slurm_pacemaker, pacemaker_code, emt_structures
):
    code = slurm_pacemaker if where == "slurm" else pacemaker_code
    options = {key: value for key, value in change.items() if key != "device"}
    inputs = gpu_inputs(code, emt_structures[:6], **{"gpus": 1, **options})
    if "device" in change:
        inputs["parameters"] = orm.Dict({**FAST_PARAMETERS, "device": change["device"]})
    nodes_before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=message):
        run_get_node(PacemakerCalculation, **inputs)
    assert orm.QueryBuilder().append(orm.Node).count() == nodes_before


@pytest.fixture(scope="module")
def slurm_cluster():
    """A SLURM controller that answers (skipped without one; an error where services are required, as in CI)."""
    if shutil.which("sbatch") is None:
        skip_or_fail("SLURM is not installed (sbatch not found); run .ci/setup_slurm.sh")
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    if state.returncode != 0 or not state.stdout.strip():
        skip_or_fail(f"SLURM does not answer (sinfo: {state.stderr.strip() or 'no nodes'}); run .ci/setup_slurm.sh")


@pytest.mark.slurm
@pytest.mark.pacemaker
def test_real_fit_through_slurm_with_a_gpu_request(slurm_cluster, slurm_pacemaker, emt_structures):
    inputs = gpu_inputs(
        slurm_pacemaker,
        emt_structures,
        prepend_text=(
            f'echo "SLURM_JOB_ID=$SLURM_JOB_ID SLURM_JOB_GPUS=${{SLURM_JOB_GPUS:-}} '
            f'SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST" > {SLURM_ENVIRONMENT_FILE}'
        ),
        additional_retrieve_list=[SLURM_ENVIRONMENT_FILE],
    )
    results, node = run_get_node(PacemakerCalculation, **inputs)

    assert node.is_finished_ok, node.exit_message
    assert node.get_option("gpus") == 1
    assert GRES_LINE in node.base.repository.get_object_content("_aiidasubmit.sh").splitlines()
    # SLURM ran it: the job's own environment carries the job id AiiDA got from sbatch, and the GPU it allotted.
    environment = dict(
        item.split("=", 1)
        for item in node.outputs.retrieved.base.repository.get_object_content(SLURM_ENVIRONMENT_FILE).split()
    )
    assert environment["SLURM_JOB_ID"] == node.get_job_id()
    assert environment["SLURM_JOB_GPUS"] == "0"
    assert environment["SLURM_JOB_NODELIST"] == "localhost"
    # No GPU on this machine: device 'auto' trained on the CPU, and the metrics say so.
    assert results["metrics"]["device"] == "cpu"
    assert results["potential"].elements == ["Al", "Cu"]
