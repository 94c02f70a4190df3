"""ActiveLearningWorkChain extensions: the forgetting guard, D-optimal selection and labelling by another workflow.

* The guard's rule is driven step by step (``inspect_training`` then ``train``) on finished fit nodes whose metrics
  carry chosen original-data errors (a double for the bookkeeping: cap, tolerance, report); the real loop below
  makes the original-data error rise for real and checks that the guard fires and weighs the next fit.
* The reference labelling adapter runs for real (EMT), alone and inside one real loop with D-optimal selection.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiida import orm
from aiida.cmdline.utils.common import get_workchain_report
from aiida.common import LinkType
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase.calculators.emt import EMT
from plumpy import ProcessState

from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning.reference_data import emt_dataset
from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain, ConvergenceConfig
from aiida_autopipec.workflows.labeling import AseLabelWorkChain, check_labeling_workflow
from tests.conftest import RECORDED

LOOP_PARAMETERS = {"cutoff": 4.5, "maxiter": 40, "number_of_functions_per_element": 8, "display_step": 10}
EMT_CALCULATOR = {"import_path": "ase.calculators.emt.EMT"}


@pytest.fixture(scope="module")
def inputs(pacemaker_code, python_code):
    return {
        "training_set": TrainingSetData.from_ase(emt_dataset(4, seed=31, rattle=0.03)),
        "test_set": TrainingSetData.from_ase(emt_dataset(8, seed=32, rattle=0.08)),
        # Far more strongly rattled than the initial data: learning them pulls the model away from the original data.
        "candidates": TrainingSetData.from_ase(emt_dataset(24, seed=33, rattle=0.25, labelled=False), labelled=False),
        "parameters": orm.Dict(LOOP_PARAMETERS),
        "pacemaker": {"code": pacemaker_code},
        "selection": {"code": python_code},
        "labeling": {
            "workflow": orm.Str("autopipec.label.ase"),
            "workflow_inputs": {"code": python_code, "calculator": orm.Dict(EMT_CALCULATOR)},
        },
    }


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


# -- forgetting guard, step by step -------------------------------------------------------------------------------
def _finished_fit(original_rmse_forces: float) -> orm.WorkflowNode:
    """A finished fit node: potential and metrics of a real recorded fit, with chosen original-data errors."""
    evaluation = json.loads((RECORDED / "success" / "evaluation.json").read_text())
    metrics = {
        "train": evaluation["train"],
        "test": evaluation["test"],
        "rmse_forces": evaluation["test"]["rmse_forces"],
        "is_converged": False,
        "subsets": {"original": {**evaluation["train"], "rmse_forces": original_rmse_forces}},
    }
    node = orm.WorkflowNode()
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(0)
    node.store()
    output = orm.Dict(metrics).store()
    output.base.links.add_incoming(node, LinkType.RETURN, "metrics")
    potential = PotentialData(
        yace=RECORDED / "success" / "output_potential.yace",
        yaml=RECORDED / "success" / "output_potential.yaml",
        reference_energies=json.loads((RECORDED / "success" / "reference_energies.json").read_text()),
    ).store()
    potential.base.links.add_incoming(node, LinkType.RETURN, "potential")
    node.seal()
    return node


@pytest.fixture
def guarded_loop(inputs):
    """A set-up loop (not running) whose ``train`` step records what it would submit."""

    def factory(**convergence):
        loop_inputs = {**inputs, "convergence": orm.Dict({"max_iterations": 8, **convergence})}
        process = instantiate_process(get_manager().get_runner(), ActiveLearningWorkChain, **loop_inputs)
        process.setup()
        process.submitted = []
        process.submit = lambda process_class, **kwargs: process.submitted.append(kwargs) or orm.WorkflowNode().store()
        return process

    return factory


def _iterate(process, original_rmse_forces: float, added: int = 0):
    """One iteration: the fit is 'done' with these errors on the original data, then ``added`` structures merge."""
    process.ctx.iteration += 1
    process.ctx.fits = [*process.ctx.get("fits", []), _finished_fit(original_rmse_forces)]
    assert process.inspect_training() is None
    if added:
        more = TrainingSetData.from_ase(emt_dataset(added, seed=100 + process.ctx.iteration))
        process.ctx.training_set = TrainingSetData.merge([process.ctx.training_set, more])


def test_guard_raises_the_weight_of_the_original_data_when_their_error_rises(guarded_loop):
    process = guarded_loop(forgetting_tolerance=0.1, forgetting_weight_factor=2.0, max_original_weight=4.0)
    _iterate(process, 0.050, added=3)
    _iterate(process, 0.054, added=3)  # +8 %: within the tolerance
    assert process.ctx.original_weight == 1.0
    _iterate(process, 0.080, added=3)  # +48 %: the guard fires
    assert process.ctx.original_weight == 2.0
    process.ctx.iteration -= 1  # `train` counts the iteration itself
    process.train()
    fit = process.submitted[-1]["pacemaker"]
    weights = fit["structure_weights"].get_list()
    assert weights == [2.0] * 4 + [1.0] * 9  # the original structures come first in the merged set
    assert fit["evaluation_subsets"].get_dict() == {"original": [0, 1, 2, 3]}
    _iterate(process, 0.120)
    _iterate(process, 0.200)  # would be 8: capped
    assert process.ctx.original_weight == 4.0
    history = process.ctx.history
    assert [entry["original_weight"] for entry in history] == [1.0, 1.0, 1.0, 2.0, 4.0]
    assert "forgetting_guard" in history[2] and "forgetting_guard" not in history[1]
    report = get_workchain_report(process.node, "REPORT")
    assert "forgetting guard: force RMSE on the 4 original structures rose from 0.0540 to 0.0800 eV/Å" in report
    assert "their weight in the next fit: 1 -> 2" in report
    assert "their weight stays at its cap 4" in report


def test_first_fit_has_uniform_weights_and_watches_the_original_data(guarded_loop):
    process = guarded_loop()
    process.train()
    fit = process.submitted[-1]["pacemaker"]
    assert "structure_weights" not in fit
    assert fit["evaluation_subsets"].get_dict() == {"original": [0, 1, 2, 3]}


# -- the labelling adapter ----------------------------------------------------------------------------------------
def test_reference_adapter_labels_with_emt(python_code):
    structures = emt_dataset(3, seed=61, labelled=False)
    results, node = run_get_node(
        AseLabelWorkChain,
        structures=TrainingSetData.from_ase(structures, labelled=False),
        code=python_code,
        calculator=orm.Dict(EMT_CALCULATOR),
    )
    assert node.is_finished_ok, node.exit_message
    labelled = results["training_set"]
    assert labelled.labelled and labelled.num_structures == 3
    for atoms, reference in zip(labelled.to_ase(), structures, strict=True):
        reference = reference.copy()
        reference.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-8)


@pytest.mark.parametrize(
    ("labeling", "message"),
    [
        ({"workflow": "autopipec.no_such_labeller"}, "labeling.workflow: no aiida.workflows entry point"),
        ({"workflow": "autopipec.pacemaker.base"}, "has no input `structures`"),
        ({"workflow": "autopipec.label.ase", "code": True}, "either labeling.workflow or the ASE labeller"),
        ({"workflow": "autopipec.label.ase", "inputs": {"calculator": True}}, r"needs input\(s\) \['code'\]"),
        ({"workflow": "autopipec.label.ase", "inputs": {"cod": True}}, r"has no input\(s\) \['cod'\]"),
        ({"workflow": "autopipec.label.ase", "inputs": {"structures": True}}, "`structures` is set by the loop"),
        ({}, "labeling.code: needed to label candidates"),
    ],
)
def test_bad_labelling_workflow_rejected_before_anything_is_stored(inputs, python_code, labeling, message):
    stand_ins = {"code": python_code, "calculator": orm.Dict(EMT_CALCULATOR)}
    stand_ins.update(structures=inputs["candidates"], cod=python_code)
    namespace = {}
    if "workflow" in labeling:
        namespace["workflow"] = orm.Str(labeling["workflow"])
        namespace["workflow_inputs"] = {key: stand_ins[key] for key in labeling.get("inputs", {})}
    if labeling.get("code"):
        namespace["code"] = python_code
    before = _node_count()
    with pytest.raises(ValueError, match=message):
        run_get_node(ActiveLearningWorkChain, **{**inputs, "labeling": namespace})
    assert _node_count() == before


def test_contract_check_accepts_the_reference_adapter():
    assert check_labeling_workflow(AseLabelWorkChain, {"code": None, "calculator": None}) is None


@pytest.mark.parametrize(
    ("convergence", "message"),
    [
        ({"selection": "random"}, "selection"),
        ({"forgetting_weight_factor": 1.0}, "forgetting_weight_factor"),
        ({"forgetting_tolerance": -0.1}, "forgetting_tolerance"),
        ({"max_original_weight": 0.5}, "max_original_weight"),
    ],
)
def test_bad_selection_and_guard_settings_rejected(inputs, convergence, message):
    with pytest.raises(ValueError, match=message):
        ConvergenceConfig(**convergence)
    before = _node_count()
    with pytest.raises(ValueError, match=f"convergence: {message}"):
        run_get_node(ActiveLearningWorkChain, **{**inputs, "convergence": orm.Dict(convergence)})
    assert _node_count() == before


# -- one real loop: D-optimal selection, labelling through the adapter, the guard watching -------------------------
@pytest.mark.pacemaker
def test_loop_with_d_optimal_selection_and_adapter_labelling(inputs):
    convergence = {
        "rmse_forces": 1e-4,  # unreachable: three full iterations
        "max_iterations": 3,
        "max_new_structures": 4,
        "gamma_upper": 1000.0,
        "selection": "d_optimal",
        "forgetting_tolerance": 0.0,  # any rise of the original-data error fires the guard
    }
    results, node = run_get_node(ActiveLearningWorkChain, **inputs, convergence=orm.Dict(convergence))
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_NOT_CONVERGED.status, node.exit_message
    history = results["history"].get_list()
    print("history:", json.dumps(history, indent=1, default=str)[:4000])
    assert len(history) == 3
    labellers = sorted((n for n in node.called if n.process_label == "AseLabelWorkChain"), key=lambda n: n.ctime)
    assert len(labellers) == 2 and all(labeller.is_finished_ok for labeller in labellers)
    for entry, labeller in zip(history, labellers, strict=False):  # the last fit selects nothing
        assert entry["selection"]["method"] == "d_optimal" and 1 <= entry["selection"]["num_selected"] <= 4
        assert entry["added"] == labeller.outputs.training_set.num_structures
    assert history[1]["num_structures"] == 4 + history[0]["added"]
    # The delivered model's errors on the 4 original structures, recorded for every fit.
    for entry in history:
        assert entry["original"]["rmse_forces"] > 0 and np.isfinite(entry["original"]["rmse_energy"])
    # The first fit trains on the original data only: its original-data errors are its training errors.
    assert history[0]["original"]["rmse_forces"] == pytest.approx(history[0]["train"]["rmse_forces"], rel=1e-6)
    # Learning the strongly rattled structures raised the error on the original ones (about tenfold when this
    # was written): the guard fired after fit 2, said so, and fit 3 weighed the original structures 2:1.
    original = [entry["original"]["rmse_forces"] for entry in history]
    print("original-data force RMSE per fit (eV/Å):", original)
    assert original[1] > original[0]
    assert history[1]["forgetting_guard"] == {"rmse_forces_before": original[0], "weight_next": 2.0}
    assert history[2]["original_weight"] == 2.0
    fits = sorted((n for n in node.called if n.process_label == "PacemakerBaseWorkChain"), key=lambda n: n.ctime)
    weights = fits[2].inputs.pacemaker.structure_weights.get_list()
    assert weights == [2.0] * 4 + [1.0] * (history[2]["num_structures"] - 4)
    assert "structure_weights" not in fits[1].inputs.pacemaker
    report = get_workchain_report(node, "REPORT")
    assert "original-data F-RMSE" in report
    assert "iter 2: forgetting guard: force RMSE on the 4 original structures rose from" in report
    assert "their weight in the next fit: 1 -> 2" in report


def test_corrected_energies_cannot_be_grown_with_total_energy_labels(inputs):
    """Pacemaker data with energy_corrected only: new labels would be total energies, refused before anything runs."""

    def corrected(training_set):
        arrays = training_set.get_arrays()
        return TrainingSetData(
            arrays=arrays.with_extras(energies_corrected=True, reference_energies=dict.fromkeys(arrays.elements, 0.0))
        )

    before = _node_count()
    corrected_inputs = {**inputs, "training_set": corrected(inputs["training_set"])}
    corrected_inputs["test_set"] = corrected(inputs["test_set"])
    with pytest.raises(ValueError, match="training_set: its energies are already corrected"):
        run_get_node(ActiveLearningWorkChain, **corrected_inputs)
    assert _node_count() == before
