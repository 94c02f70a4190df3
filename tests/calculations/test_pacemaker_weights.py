"""PacemakerCalculation ``structure_weights`` and ``evaluation_subsets``: written for Pacemaker and the evaluation,
and bad values rejected before anything is stored."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning import files


@pytest.fixture
def inputs(pacemaker_code, emt_structures, fast_parameters):
    return {
        "code": pacemaker_code,
        "training_set": TrainingSetData.from_ase(emt_structures),
        "parameters": orm.Dict(fast_parameters),
    }


def test_weights_and_subsets_are_written(generate_calc_job, inputs, emt_structures):
    weights = [3.0] * 4 + [1.0] * (len(emt_structures) - 4)
    inputs["structure_weights"] = orm.List(weights)
    inputs["evaluation_subsets"] = orm.Dict({"original": [0, 1, 2, 3]})
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    frame = pd.read_pickle(folder / files.TRAINING_DATA)
    assert frame["w_energy"].tolist() == weights
    expected = [[weight] * len(atoms) for weight, atoms in zip(weights, emt_structures, strict=True)]
    assert [atom_weights.tolist() for atom_weights in frame["w_forces"]] == expected
    evaluation = json.loads((folder / files.EVALUATION_INPUT).read_text())
    assert evaluation["subsets"] == {"original": {"dataset": files.TRAINING_DATA, "indices": [0, 1, 2, 3]}}


def test_without_weights_pacemaker_weights_uniformly(generate_calc_job, inputs):
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    frame = pd.read_pickle(folder / files.TRAINING_DATA)
    assert "w_energy" not in frame.columns and "w_forces" not in frame.columns
    assert "subsets" not in json.loads((folder / files.EVALUATION_INPUT).read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"structure_weights": [1.0] * 3}, "got 3 weights for 24 training structures"),
        ({"structure_weights": [1.0] * 23 + [0]}, "weight 23 is 0"),
        ({"structure_weights": [-2.0] + [1.0] * 23}, "weight 0 is -2.0"),
        ({"structure_weights": [True] + [1.0] * 23}, "weight 0 is True"),
        ({"structure_weights": ["2"] + [1.0] * 23}, "weight 0 is '2'"),
        ({"structure_weights": [float("inf")] + [1.0] * 23}, "finite numbers > 0"),
        (
            {"structure_weights": [1.0] * 24, "settings": {"pacemaker": {"fit": {"weighting": {"type": "x"}}}}},
            "cannot be combined with settings.pacemaker fit.weighting",
        ),
        ({"evaluation_subsets": {"original": []}}, "evaluation_subsets.original: must be a non-empty list"),
        ({"evaluation_subsets": {"original": [0, 24]}}, r"structure indices in 0..23"),
        ({"evaluation_subsets": {"original": "all"}}, "evaluation_subsets.original"),
    ],
)
def test_bad_weights_or_subsets_rejected_before_anything_is_stored(inputs, change, message):
    for key, value in change.items():
        inputs[key] = orm.List(value) if isinstance(value, list) else orm.Dict(value)
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=message):
        run_get_node(PacemakerCalculation, **inputs)
    assert orm.QueryBuilder().append(orm.Node).count() == before
