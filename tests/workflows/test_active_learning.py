"""ActiveLearningWorkChain end to end: real pacemaker, γ selection with pyace, EMT labelling, deduplicating merge."""

from __future__ import annotations

import itertools

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.reference_data import emt_dataset
from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain

pytestmark = pytest.mark.pacemaker

# The inputs (`loop_inputs`, `python_code`) are shared with the daemon tests: tests/workflows/conftest.py.


def run_loop(loop_inputs, **convergence):
    return run_get_node(ActiveLearningWorkChain, **loop_inputs, convergence=orm.Dict(convergence))


def test_reaches_the_target_by_adding_selected_structures(loop_inputs):
    """4 structures miss 0.07 eV/Å on the held-out set (~0.11); the structures the loop adds get there."""
    results, node = run_loop(loop_inputs, rmse_forces=0.07, max_iterations=4, max_new_structures=8)
    assert node.is_finished_ok, node.exit_message
    history = results["history"].get_list()
    assert len(history) >= 2
    assert not history[0]["is_converged"] and history[-1]["is_converged"]
    assert history[-1]["test"]["rmse_forces"] < 0.07 < history[0]["test"]["rmse_forces"]
    assert history[0]["selection"]["num_selected"] > 0
    assert results["metrics"]["is_converged"] is True
    # The final set is the initial one plus exactly what was labelled and added, nothing stored twice.
    added = sum(entry.get("added", 0) for entry in history)
    assert results["training_set"].num_structures == loop_inputs["training_set"].num_structures + added
    # Every fit after the first continued from the previous potential.
    fits = sorted((n for n in node.called if n.process_label == "PacemakerBaseWorkChain"), key=lambda n: n.ctime)
    assert "initial_potential" not in fits[0].inputs.pacemaker
    for previous, current in itertools.pairwise(fits):
        assert current.inputs.pacemaker.initial_potential.uuid == previous.outputs.potential.uuid
    # Each iteration wrote one line to the process report.
    from aiida.cmdline.utils.common import get_workchain_report

    report = get_workchain_report(node, "REPORT")
    assert "iter 1: 4 structures, test F-RMSE" in report and "converged" in report
    # The provenance recipe of docs/active_learning.md lists each iteration's potential and test RMSE.
    from aiida_autopipec.workflows.queries import iteration_potentials

    rows = iteration_potentials(node)
    assert [row["num_structures"] for row in rows] == [entry["num_structures"] for entry in history]
    assert [row["test_rmse_forces"] for row in rows] == pytest.approx([e["test"]["rmse_forces"] for e in history])
    assert rows[-1]["potential"] == results["potential"].uuid


def test_pool_is_stored_once_and_used_up_then_the_loop_ends_with_the_best_potential(loop_inputs):
    """3 candidates, 2 per iteration, a window that takes any γ: 2 selected, then the last 1, then none left.

    The pool stays one stored node; later selections exclude what earlier ones took (nothing is re-stored).
    """
    pool = TrainingSetData.from_ase(emt_dataset(3, seed=34, rattle=0.08, labelled=False), labelled=False)
    parameters = orm.Dict({**loop_inputs["parameters"].get_dict(), "maxiter": 10})  # accuracy is not the point
    inputs = dict(loop_inputs, candidates=pool, parameters=parameters)
    convergence = dict(rmse_forces=1e-4, max_iterations=4, max_new_structures=2, gamma_lower=1e-6, gamma_upper=1e9)
    results, node = run_loop(inputs, **convergence)
    history = results["history"].get_list()
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_CANDIDATES_EXHAUSTED.status, node.exit_message
    assert "all 3 candidates have been selected in earlier iterations" in node.exit_message
    assert len(history) == 3
    assert [entry["selection"]["num_selected"] for entry in history[:2]] == [2, 1]
    selections = sorted((n for n in node.called if n.process_label == "SelectionCalculation"), key=lambda n: n.ctime)
    assert [n.inputs.candidates.uuid for n in selections] == [inputs["candidates"].uuid] * 2
    first = selections[0].outputs.selected_indices.get_list()
    assert "exclude" not in selections[0].inputs and selections[1].inputs.exclude.get_list() == sorted(first)
    assert sorted(first + selections[1].outputs.selected_indices.get_list()) == [0, 1, 2]
    best = min(history, key=lambda entry: entry["test"]["rmse_forces"])
    assert results["metrics"]["test"]["rmse_forces"] == pytest.approx(best["test"]["rmse_forces"])
    assert history[1]["num_structures"] == history[0]["num_structures"] + history[0]["added"]
    assert results["training_set"].num_structures == history[-1]["num_structures"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"convergence": {"rmse_forces": -1}}, "rmse_forces"),
        ({"convergence": {"max_iterations": 0}}, "max_iterations"),
        ({"convergence": {"gamma_lower": 5, "gamma_upper": 2}}, "gamma_lower"),
        ({"convergence": {"max_new_structurs": 3}}, "max_new_structurs"),
        ({"labeling": {}}, "labeling.code"),
        ({"unlabelled_training": True}, "unlabelled"),
        # 4 structures of 8 atoms (~16 per element) cannot give an active set for 24 functions per element.
        ({"parameters": {"number_of_functions_per_element": 24}}, r"active set for γ needs .*functions"),
    ],
)
def test_bad_inputs_rejected_before_anything_is_stored(loop_inputs, change, message):
    inputs = dict(loop_inputs)
    if "convergence" in change:
        inputs["convergence"] = orm.Dict(change["convergence"])
    if "labeling" in change:
        inputs["labeling"] = change["labeling"]
    if "parameters" in change:
        inputs["parameters"] = orm.Dict({**loop_inputs["parameters"].get_dict(), **change["parameters"]})
    if "unlabelled_training" in change:
        inputs["training_set"] = TrainingSetData.from_ase(emt_dataset(3, seed=1, labelled=False), labelled=False)
    nodes_before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=message):
        run_get_node(ActiveLearningWorkChain, **inputs)
    assert orm.QueryBuilder().append(orm.Node).count() == nodes_before
