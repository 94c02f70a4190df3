"""Shared fixtures: real EMT-labelled data, the local pacemaker code, and calc-job/parser factories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["aiida.tools.pytest_fixtures", "tests.storage_fixtures"]

RECORDED = Path(__file__).parent / "parsers" / "recorded"

#: Small, fast fits: ~10-25 s each on 2 CPU cores.
FAST_PARAMETERS = {
    "cutoff": 4.5,
    "maxiter": 15,
    "number_of_functions_per_element": 8,
    "display_step": 5,
    "test_size": 0.2,
    "device": "cpu",
}


@pytest.fixture(scope="session")
def emt_structures():
    """24 labelled Al-Cu fcc structures (EMT energies in eV and forces in eV/Å)."""
    from aiida_autopipec.learning.reference_data import emt_dataset

    return emt_dataset(24, seed=7)


@pytest.fixture(scope="session")
def emt_test_structures():
    from aiida_autopipec.learning.reference_data import emt_dataset

    return emt_dataset(8, seed=8)


@pytest.fixture
def fast_parameters():
    return dict(FAST_PARAMETERS)


@pytest.fixture(scope="session")
def local_computer(aiida_profile, tmp_path_factory):
    """This machine with the direct scheduler, configured as ``autopipec setup`` does (cheap polling)."""
    from aiida import orm

    from aiida_autopipec.codes import configure_localhost

    computer = orm.Computer(
        label="autopipec-localhost",
        hostname="localhost",
        transport_type="core.local",
        scheduler_type="core.direct",
        workdir=str(tmp_path_factory.mktemp("aiida_run")),
    ).store()
    return configure_localhost(computer)


@pytest.fixture(scope="session")
def pacemaker_code(local_computer):
    """The real local ``pacemaker`` registered on the test computer."""
    from aiida_autopipec.codes import get_or_create_local_code

    return get_or_create_local_code(computer=local_computer)


@pytest.fixture
def generate_calc_job(tmp_path):
    """Run ``prepare_for_submission`` of a CalcJob on ``inputs``; returns (folder path, CalcInfo)."""

    def factory(entry_point: str, inputs: dict):
        from aiida.common.folders import Folder
        from aiida.engine.utils import instantiate_process
        from aiida.manage import get_manager
        from aiida.plugins import CalculationFactory

        process = instantiate_process(get_manager().get_runner(), CalculationFactory(entry_point), **inputs)
        folder = Folder(str(tmp_path))
        return tmp_path, process.prepare_for_submission(folder)

    return factory


@pytest.fixture
def generate_calc_job_node(local_computer):
    """A stored CalcJobNode whose ``retrieved`` folder holds a recorded real Pacemaker run."""

    def factory(
        case: str,
        parameters: dict | None = None,
        reference_energies: dict | None = None,
        evaluation_overrides: dict | None = None,
    ):
        from aiida import orm
        from aiida.common import LinkType

        from aiida_autopipec.learning import files
        from aiida_autopipec.learning.pacemaker import REFERENCE_ENERGIES_JSON

        node = orm.CalcJobNode(computer=local_computer, process_type="aiida.calculations:autopipec.pacemaker")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.base.links.add_incoming(orm.Dict(parameters or {}).store(), LinkType.INPUT_CALC, "parameters")
        # Inputs the CalcJob wrote into its folder: recorded with the case, or defaults for failing runs.
        recorded_references = RECORDED / case / REFERENCE_ENERGIES_JSON
        references = reference_energies or (
            json.loads(recorded_references.read_text()) if recorded_references.is_file() else {"Al": -3.0, "Cu": -3.5}
        )
        node.base.repository.put_object_from_bytes(json.dumps(references).encode(), REFERENCE_ENERGIES_JSON)
        if (RECORDED / case / files.EVALUATION_INPUT).is_file():
            evaluation = json.loads((RECORDED / case / files.EVALUATION_INPUT).read_text())
            evaluation.update(evaluation_overrides or {})
            node.base.repository.put_object_from_bytes(json.dumps(evaluation).encode(), files.EVALUATION_INPUT)
        node.store()
        retrieved = orm.FolderData()
        retrieved.base.repository.put_object_from_tree(str(RECORDED / case))
        retrieved.base.links.add_incoming(node, LinkType.CREATE, "retrieved")
        retrieved.store()
        return node

    return factory
