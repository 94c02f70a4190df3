"""Per-structure weights reach Pacemaker's DataFrame (``w_energy``/``w_forces``) and change a real fit; errors on
named subsets of the training data come from the delivered model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.dataset import (
    DatasetError,
    StructureArrays,
    fit_reference_energies,
    structure_weight_columns,
    to_pacemaker_dataframe,
)
from aiida_autopipec.learning.pacemaker import PacemakerRunner, prepare_fit
from aiida_autopipec.learning.reference_data import emt_dataset

CONFIG = SystemConfig(
    elements=["Al", "Cu"],
    training={"cutoff": 4.5, "maxiter": 15, "number_of_functions_per_element": 8, "device": "cpu"},
)
#: The favoured structures: strongly rattled, unlike the 16 mildly rattled others.
NUM_FAVOURED = 6
FAVOURED_WEIGHT = 50.0


@pytest.fixture(scope="module")
def structures():
    return emt_dataset(NUM_FAVOURED, seed=41, rattle=0.2) + emt_dataset(16, seed=42, rattle=0.03)


@pytest.fixture(scope="module")
def weights():
    return [FAVOURED_WEIGHT] * NUM_FAVOURED + [1.0] * 16


def test_one_weight_per_structure_becomes_both_columns(structures, weights):
    arrays = StructureArrays.from_atoms(structures)
    frame = to_pacemaker_dataframe(
        arrays, fit_reference_energies(arrays, ["Al", "Cu"]), *structure_weight_columns(arrays, weights)
    )
    assert frame["w_energy"].tolist() == weights
    for atom_weights, forces, weight in zip(frame["w_forces"], frame["forces"], weights, strict=True):
        assert atom_weights.shape == (len(forces),)  # one per atom: a scalar crashes Pacemaker
        assert (atom_weights == weight).all()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1.0] * 21, "got 21 for 22 structures"),
        ([1.0] * 21 + [0.0], "structure 21 has 0.0"),
        ([-1.0] + [1.0] * 21, "structure 0 has -1.0"),
        ([1.0, float("nan")] + [1.0] * 20, "structure 1 has nan"),
        ([1.0] * 21 + [float("inf")], "finite and > 0"),
    ],
)
def test_bad_weights_are_rejected(structures, bad, message):
    with pytest.raises(DatasetError, match=message):
        structure_weight_columns(StructureArrays.from_atoms(structures), bad)


def test_prepare_fit_weights_the_test_set_uniformly(tmp_path, structures, weights):
    """Pacemaker joins train and test before weighting: the test set needs the columns too, or they are NaN."""
    arrays = StructureArrays.from_atoms(structures)
    test = StructureArrays.from_atoms(emt_dataset(4, seed=43))
    prepare_fit(tmp_path, PacemakerConfigGenerator(CONFIG), arrays, test, structure_weights=weights)
    train_frame = pd.read_pickle(tmp_path / files.TRAINING_DATA)
    test_frame = pd.read_pickle(tmp_path / files.TEST_DATA)
    assert train_frame["w_energy"].tolist() == weights
    assert test_frame["w_energy"].tolist() == [1.0] * 4


def test_prepare_fit_rejects_subsets_outside_the_data(tmp_path, structures):
    with pytest.raises(DatasetError, match="evaluation subset 'original'"):
        prepare_fit(
            tmp_path,
            PacemakerConfigGenerator(CONFIG),
            StructureArrays.from_atoms(structures),
            evaluation_subsets={"original": [0, 22]},
        )


@pytest.mark.pacemaker
def test_weights_reach_pacemaker_and_favour_their_structures(tmp_path, structures, weights):
    """Two real fits, same seed and data: weighting the rattled structures 50:1 lowers their force error."""
    test_structures = emt_dataset(6, seed=44, rattle=0.1)
    subsets = {"favoured": list(range(NUM_FAVOURED)), "all": list(range(len(structures)))}
    results = {}
    for name, structure_weights in (("uniform", None), ("weighted", weights)):
        runner = PacemakerRunner(PacemakerConfigGenerator(CONFIG), tmp_path / name)
        runner.train(structures, test_structures, structure_weights=structure_weights, evaluation_subsets=subsets)
        log = (tmp_path / name / files.LOG).read_text()
        results[name] = json.loads((tmp_path / name / files.EVALUATION_OUTPUT).read_text())
        results[name]["log"] = log
    assert "Both weighting columns" in results["weighted"]["log"]
    assert "Both weighting columns" not in results["uniform"]["log"]
    favoured = {name: results[name]["subsets"]["favoured"]["rmse_forces"] for name in results}
    print("force RMSE on the favoured structures (eV/Å):", favoured)
    assert favoured["weighted"] < favoured["uniform"]
    # The subset of all training structures is the training split itself (the test set is separate).
    for name in results:
        np.testing.assert_allclose(
            results[name]["subsets"]["all"]["rmse_forces"], results[name]["train"]["rmse_forces"], rtol=1e-6
        )
