"""Faults survived: labelling that fails for some structures (the loop goes on), for all (it stops and says so), and
a disk that fills up while the dataset is written (a clear error, no node stored, nothing half-written kept).

Killed, out-of-walltime, out-of-memory and diverging fits are in ``tests/workflows/test_base.py``; a daemon stopped
and restarted mid-run in ``tests/workflows/test_daemon.py`` (see docs/reliability.md).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.pacemaker import PacemakerRunner
from aiida_autopipec.learning.reference_data import emt_dataset
from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain

#: EMT that refuses structures with an odd number of Cu atoms (about half), or every structure.
CALCULATORS = """
from ase.calculators.emt import EMT


class FlakyEMT(EMT):
    def calculate(self, atoms=None, *args, **kwargs):
        if atoms is not None and atoms.get_chemical_symbols().count("Cu") % 2:
            raise RuntimeError("flaky: odd number of Cu atoms")
        super().calculate(atoms, *args, **kwargs)


class BrokenEMT(EMT):
    def calculate(self, atoms=None, *args, **kwargs):
        raise RuntimeError("broken: the DFT code crashed")
"""
LOOP_PARAMETERS = {"cutoff": 4.5, "maxiter": 20, "number_of_functions_per_element": 8, "display_step": 5}


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


# -- labelling failures inside the active-learning loop ----------------------------------------------------------
@pytest.fixture(scope="module")
def calculator_module(tmp_path_factory) -> Path:
    """A directory with ``faulty_calculators.py``, put on the labelling job's PYTHONPATH (not on this process')."""
    directory = tmp_path_factory.mktemp("faulty_calculators")
    (directory / "faulty_calculators.py").write_text(CALCULATORS)
    return directory


@pytest.fixture(scope="module")
def python_code(local_computer):
    return orm.InstalledCode(label="python-faults", computer=local_computer, filepath_executable=sys.executable).store()


def run_loop(pacemaker_code, python_code, calculator_module, calculator: str):
    return run_get_node(
        ActiveLearningWorkChain,
        training_set=TrainingSetData.from_ase(emt_dataset(4, seed=31, rattle=0.03)),
        test_set=TrainingSetData.from_ase(emt_dataset(6, seed=32, rattle=0.08)),
        candidates=TrainingSetData.from_ase(emt_dataset(30, seed=33, rattle=0.08, labelled=False), labelled=False),
        parameters=orm.Dict({**LOOP_PARAMETERS, "device": "cpu"}),
        convergence=orm.Dict({"rmse_forces": 1e-4, "max_iterations": 2, "max_new_structures": 8}),
        pacemaker={"code": pacemaker_code},
        selection={"code": python_code},
        labeling={
            "code": python_code,
            "calculator": orm.Dict({"import_path": f"faulty_calculators.{calculator}", "kwargs": {}}),
            "options": {"prepend_text": f"export PYTHONPATH={calculator_module}"},
        },
    )


@pytest.mark.pacemaker
def test_labelling_failures_are_skipped_and_reported_and_the_loop_goes_on(
    pacemaker_code, python_code, calculator_module
):
    results, node = run_loop(pacemaker_code, python_code, calculator_module, "FlakyEMT")
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_NOT_CONVERGED.status, node.exit_message
    history = results["history"].get_list()
    assert len(history) == 2  # the second fit ran on the structures that could be labelled
    first = history[0]
    selected = first["selection"]["num_selected"]
    assert 0 < first["labelling_failures"] < selected
    assert first["added"] == selected - first["labelling_failures"]
    assert history[1]["num_structures"] == history[0]["num_structures"] + first["added"]
    # The failures are on record, with their reason, in the labelling calculation's outputs.
    (labelling,) = [n for n in node.called_descendants if n.process_label == "AseLabelCalculation"]
    failures = labelling.outputs.failures.get_dict()["failures"]
    assert len(failures) == first["labelling_failures"]
    assert all(failure["error"] == "RuntimeError: flaky: odd number of Cu atoms" for failure in failures)
    labelled = labelling.outputs.labelled.to_ase()
    assert all(atoms.get_chemical_symbols().count("Cu") % 2 == 0 for atoms in labelled)
    # ... and in the work chain's report, which `verdi process report` shows.
    from aiida.cmdline.utils.common import get_workchain_report

    report = get_workchain_report(node, "REPORT")
    assert f"iter 1: {first['labelling_failures']} selected structure(s) could not be labelled" in report
    assert "first: RuntimeError: flaky: odd number of Cu atoms" in report


@pytest.mark.pacemaker
def test_labelling_that_fails_for_every_structure_stops_the_loop(pacemaker_code, python_code, calculator_module):
    results, node = run_loop(pacemaker_code, python_code, calculator_module, "BrokenEMT")
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_LABELLING_FAILED.status
    assert "labelling failed in iteration 1" in node.exit_message
    assert "broken: the DFT code crashed" in node.exit_message  # the first structure's error reaches the user
    assert "training_set" not in results or results["training_set"].num_structures == 4  # nothing half-merged


# -- the disk fills up while the dataset is written --------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 8 KiB tmpfs (needs root); the test is skipped where mounting is not permitted."""
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here")
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_while_a_fit_is_prepared_fails_clearly(small_disk, emt_structures):
    """The Pacemaker dataset (12 KB for 96 structures) does not fit in 8 KiB: ENOSPC naming the file."""
    config = SystemConfig(elements=["Al", "Cu"], cutoff=4.5, number_of_functions_per_element=8, test_size=0.2)
    runner = PacemakerRunner(PacemakerConfigGenerator(config), small_disk / "fit")
    with pytest.raises(OSError) as error:
        runner.prepare(emt_structures * 4)
    assert error.value.errno == errno.ENOSPC
    assert "cannot write the fit's input files into" in str(error.value)
    assert "No space left on device" in str(error.value) and files.TRAINING_DATA in str(error.value)
    assert list((small_disk / "fit").iterdir()) == []  # no truncated dataset left for a later fit to read


def test_full_disk_while_a_training_set_is_built_stores_nothing(small_disk, emt_structures, monkeypatch):
    """The node's files go to a sandbox folder first: on a full disk, the constructor fails and nothing is stored."""
    before = _node_count()
    structures = emt_dataset(200, seed=3)  # ~100 KB compressed: more than the 8 KiB disk
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk))
    with pytest.raises(OSError) as error:
        TrainingSetData.from_ase(structures)
    assert error.value.errno == errno.ENOSPC
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert _node_count() == before
    # Space again: the same data store and read back exactly.
    training_set = TrainingSetData.from_ase(structures).store()
    assert training_set.num_structures == 200 and _node_count() == before + 1


def test_failing_repository_write_leaves_no_node(emt_structures, monkeypatch):
    """ENOSPC injected where the file repository writes the object (a full profile disk cannot be mounted under a
    running test profile): ``store()`` fails, the node is not in the database, and a later ``store()`` works."""
    from aiida.manage import get_manager

    backend = get_manager().get_profile_storage().get_repository()
    original = type(backend).put_object_from_filelike

    def full_disk(self, handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    training_set = TrainingSetData.from_ase(emt_structures[:5])
    before = _node_count()
    monkeypatch.setattr(type(backend), "put_object_from_filelike", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        training_set.store()
    assert _node_count() == before and not training_set.is_stored
    monkeypatch.setattr(type(backend), "put_object_from_filelike", original)
    training_set.store()
    assert _node_count() == before + 1
    reloaded = orm.load_node(training_set.pk)
    assert reloaded.content_hash == training_set.content_hash
    assert [atoms.get_potential_energy() for atoms in reloaded.to_ase()] == [
        atoms.get_potential_energy() for atoms in emt_structures[:5]
    ]
