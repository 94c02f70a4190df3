"""Fixtures of the workflow tests: the inputs of a tiny real active-learning run (pacemaker, pyace, EMT)."""

from __future__ import annotations

import sys

import pytest
from aiida import orm

from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.reference_data import emt_dataset

#: Fits of the active-learning tests: maxiter 60 so that added structures visibly lower the test error.
LOOP_PARAMETERS = {
    "cutoff": 4.5,
    "maxiter": 60,
    "number_of_functions_per_element": 8,
    "display_step": 10,
    "device": "cpu",
}


@pytest.fixture(scope="session")
def python_code(local_computer):
    """This Python (it has pyace and ASE) for the selection and the EMT labelling."""
    return orm.InstalledCode(label="python-al", computer=local_computer, filepath_executable=sys.executable).store()


@pytest.fixture(scope="session")
def loop_inputs(pacemaker_code, python_code):
    """Too little data to start with, and a pool of more strongly rattled structures to choose from."""
    return {
        "training_set": TrainingSetData.from_ase(emt_dataset(4, seed=31, rattle=0.03)),
        "test_set": TrainingSetData.from_ase(emt_dataset(8, seed=32, rattle=0.08)),
        "candidates": TrainingSetData.from_ase(emt_dataset(40, seed=33, rattle=0.08, labelled=False), labelled=False),
        "parameters": orm.Dict(LOOP_PARAMETERS),
        "pacemaker": {"code": pacemaker_code},
        "selection": {"code": python_code},
        "labeling": {"code": python_code, "calculator": orm.Dict({"import_path": "ase.calculators.emt.EMT"})},
    }
