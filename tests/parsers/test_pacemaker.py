"""PacemakerParser on outputs recorded from real Pacemaker runs (tests/parsers/recorded, see its README)."""

from __future__ import annotations

import pytest
import yaml

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.parsers.pacemaker import PacemakerParser

REFERENCES = {"Al": -3.25, "Cu": -3.5}


def parse(generate_calc_job_node, case, parameters=None):
    node = generate_calc_job_node(case, parameters=parameters, reference_energies=REFERENCES)
    results, calcfunction = PacemakerParser.parse_from_node(node, store_provenance=False)
    return results, calcfunction


def test_success(generate_calc_job_node):
    results, calcfunction = parse(generate_calc_job_node, "success")
    assert calcfunction.is_finished_ok
    potential = results["potential"]
    assert potential.elements == ["Al", "Cu"]
    assert potential.cutoff == pytest.approx(4.5)
    assert potential.reference_energies == REFERENCES
    # The reference energies are written into the .yace, in its element order.
    assert yaml.safe_load(potential.get_yace().split("\n", 2)[1])["E0"] == [-3.25, -3.5]
    metrics = results["metrics"].get_dict()
    assert metrics["judged_on"] == "test"
    for split in ("train", "test"):
        assert set(metrics[split]) >= {"rmse_energy", "rmse_forces", "mae_energy", "mae_forces"}
        assert all(v > 0 for k, v in metrics[split].items() if k.startswith(("rmse", "mae")))
    assert metrics["iterations"] == 20
    assert metrics["units"]["energy"] == "eV/atom"
    curve = results["learning_curve"]
    assert curve.get_array("iteration")[-1] == 20
    assert len(curve.get_array("loss")) == len(curve.get_array("iteration"))


def test_convergence_threshold_comes_from_parameters(generate_calc_job_node):
    strict, _ = parse(generate_calc_job_node, "success", parameters={"rmse_forces_threshold": 1e-6})
    lenient, _ = parse(generate_calc_job_node, "success", parameters={"rmse_forces_threshold": 100.0})
    assert strict["metrics"]["is_converged"] is False
    assert lenient["metrics"]["is_converged"] is True


def test_success_without_test_set_is_judged_on_train(generate_calc_job_node):
    results, calcfunction = parse(generate_calc_job_node, "success_no_test")
    assert calcfunction.is_finished_ok
    metrics = results["metrics"].get_dict()
    assert metrics["test"] is None
    assert metrics["judged_on"] == "train"
    assert metrics["rmse_forces"] == metrics["train"]["rmse_forces"]


@pytest.mark.parametrize(
    ("case", "label", "in_message"),
    [
        ("error_exit", "ERROR_PACEMAKER_FAILED", "Unknown optimizer"),
        ("exit_after_potential", "ERROR_PACEMAKER_FAILED", "status 1"),
        ("nan_loss", "ERROR_LOSS_DIVERGED", "NaN or infinite"),
        ("inf_loss", "ERROR_LOSS_DIVERGED", "NaN or infinite"),
        ("out_of_memory", "ERROR_OUT_OF_MEMORY", "batch_size"),
        ("out_of_memory_ulimit", "ERROR_OUT_OF_MEMORY", "memory"),
        ("killed", "ERROR_PACEMAKER_KILLED", "SIGTERM"),
        ("killed_sigkill", "ERROR_PACEMAKER_KILLED", "SIGKILL"),
        ("killed_job", "ERROR_PACEMAKER_KILLED", "no exit status"),
    ],
)
def test_failures_get_distinct_exit_codes(generate_calc_job_node, case, label, in_message):
    results, calcfunction = parse(generate_calc_job_node, case)
    expected = PacemakerCalculation.exit_codes[label]
    assert calcfunction.exit_status == expected.status
    assert in_message in calcfunction.exit_message
    assert "potential" not in results  # a failed fit never delivers a potential


def test_recovered_out_of_memory_is_a_success(generate_calc_job_node):
    # Pacemaker shrank the batch after ResourceExhaustedError and finished with exit status 0.
    results, calcfunction = parse(generate_calc_job_node, "out_of_memory_reduced")
    assert calcfunction.is_finished_ok
    assert "potential" in results


def test_killed_run_keeps_its_learning_curve(generate_calc_job_node):
    results, _ = parse(generate_calc_job_node, "killed")
    assert len(results["learning_curve"].get_array("iteration")) >= 2


@pytest.mark.parametrize("case", ["success_core_repulsion", "success_zbl_delta"])
def test_delivered_model_metrics_and_safe_dimers(generate_calc_job_node, case):
    """Runs prepared by the plugin itself: errors of the delivered model, Pacemaker's own kept, dimers checked."""
    results, calcfunction = parse(generate_calc_job_node, case)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    metrics = results["metrics"].get_dict()
    assert metrics["evaluated_by"].startswith("pyace.PyACECalculator on the delivered .yace")
    reported = metrics["pacemaker_reported"]
    # Nothing in the data is inside the repulsive core, so the delivered model reproduces Pacemaker's numbers.
    assert metrics["test"]["rmse_forces"] == pytest.approx(reported["test"]["rmse_forces"], rel=1e-3)
    assert metrics["short_range"]["safe"] is True and metrics["short_range"]["violations"] == {}
    curves = results["dimer_curves"]
    assert curves.base.attributes.get("pairs") == ["Al-Al", "Al-Cu", "Cu-Cu"]
    energy, r = curves.get_array("Cu_Cu_energy"), curves.get_array("Cu_Cu_r")
    assert r[0] == pytest.approx(0.3) and energy[0] > 100  # eV: strongly repulsive at 0.3 Å
    potential = results["potential"]
    assert potential.short_range["mode"] == case.removeprefix("success_")
    if case == "success_zbl_delta":
        assert potential.baseline == {"type": "zbl", "pair_cutoffs": potential.short_range["pair_cutoffs"]}
    else:
        assert potential.baseline is None


def test_model_without_baseline_is_flagged(generate_calc_job_node):
    """Plain Pacemaker input, no repulsion ('none'): the dimer check flags it, in the metrics and the report."""
    import logging

    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("aiida.parser.PacemakerParser")
    logger.addHandler(handler)
    try:
        results, calcfunction = parse(generate_calc_job_node, "success")
    finally:
        logger.removeHandler(handler)
    short_range = results["metrics"]["short_range"]
    assert short_range["mode"] == "none"
    assert short_range["safe"] is False
    assert short_range["violations"]  # at least one pair is attractive or non-monotonic below its inner cutoff
    assert calcfunction.is_finished_ok  # 'none' was chosen explicitly: flagged, not failed
    assert any("baseline 'none': the model is not repulsive at short range" in message for message in warnings)


def test_unsafe_model_fails_when_a_baseline_was_asked_for(generate_calc_job_node):
    """The same real model without repulsion, but the run claimed a repulsive baseline: distinct exit code 340."""
    node = generate_calc_job_node("success", evaluation_overrides={"mode": "core_repulsion"})
    results, calcfunction = PacemakerParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == PacemakerCalculation.exit_codes.ERROR_UNSAFE_SHORT_RANGE.status
    assert "Al-Cu" in calcfunction.exit_message
    assert results["metrics"]["short_range"]["safe"] is False  # the outputs stay attached for inspection
    assert "dimer_curves" in results and "potential" in results


@pytest.mark.parametrize("case", ["killed", "killed_sigkill", "killed_job", "exit_after_potential"])
def test_failed_run_hands_on_its_interim_potential(generate_calc_job_node, case):
    """A failed run that got to fitting outputs Pacemaker's interim potential, to continue from (restart_potential)."""
    from tests.conftest import RECORDED

    results, calcfunction = parse(generate_calc_job_node, case)
    assert calcfunction.is_failed
    interim = results["interim_potential"]
    assert interim.filename == "interim_potential_0.yaml"
    assert interim.get_content() == (RECORDED / case / "interim_potential_0.yaml").read_text()


@pytest.mark.parametrize("case", ["success", "nan_loss", "error_exit"])
def test_no_interim_potential_without_one_or_on_success(generate_calc_job_node, case):
    results, _ = parse(generate_calc_job_node, case)
    assert "interim_potential" not in results


@pytest.mark.parametrize("keep", [0.5, -2])
def test_truncated_interim_potential_is_not_attached(generate_calc_job_node, keep):
    """Pacemaker's writes are not atomic: a kill mid-write can leave a cut-off file, which is not handed on.

    Cut in half it is not a B-basis any more; without its last two lines it is still valid YAML with every species
    block, only with fewer functions than the fit had (metrics.txt ``nfuncs``).
    """
    from aiida import orm
    from aiida.common import LinkType

    node = generate_calc_job_node("killed")
    recorded = node.outputs.retrieved
    truncated = orm.FolderData()
    for name in recorded.base.repository.list_object_names():
        content = recorded.base.repository.get_object_content(name, mode="rb")
        if name == "interim_potential_0.yaml":
            lines = content.decode().splitlines(keepends=True)
            content = "".join(lines[: int(len(lines) * keep) if keep > 0 else keep]).encode()
        truncated.base.repository.put_object_from_bytes(content, name)
    # The same calculation, with the cut-off file retrieved instead.
    clone = orm.CalcJobNode(computer=node.computer, process_type=node.process_type)
    clone.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
    clone.base.links.add_incoming(node.inputs.parameters, LinkType.INPUT_CALC, "parameters")
    clone.store()
    truncated.base.links.add_incoming(clone, LinkType.CREATE, "retrieved")
    truncated.store()
    results, calcfunction = PacemakerParser.parse_from_node(clone, store_provenance=False)
    assert calcfunction.exit_status == PacemakerCalculation.exit_codes.ERROR_PACEMAKER_KILLED.status
    assert "interim_potential" not in results
    assert "learning_curve" in results


def _split_like_a_real_retrieval(node, tmp_path):
    """A clone of ``node`` whose ``retrieved`` holds only files.RETRIEVE_LIST; the rest goes to a temporary folder
    (what AiiDA does with ``retrieve_temporary_list``)."""
    from aiida import orm
    from aiida.common import LinkType

    from aiida_autopipec.learning import files

    kept = orm.FolderData()
    for name in node.outputs.retrieved.base.repository.list_object_names():
        content = node.outputs.retrieved.base.repository.get_object_content(name, mode="rb")
        if name in files.RETRIEVE_TEMPORARY_LIST:
            (tmp_path / name).write_bytes(content)
        elif name in files.RETRIEVE_LIST:
            kept.base.repository.put_object_from_bytes(content, name)
    clone = orm.CalcJobNode(computer=node.computer, process_type=node.process_type)
    clone.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
    clone.base.links.add_incoming(node.inputs.parameters, LinkType.INPUT_CALC, "parameters")
    for name in node.base.repository.list_object_names():
        clone.base.repository.put_object_from_bytes(node.base.repository.get_object_content(name, mode="rb"), name)
    clone.store()
    kept.base.links.add_incoming(clone, LinkType.CREATE, "retrieved")
    kept.store()
    return clone


@pytest.mark.parametrize(("case", "status"), [("success", 0), ("killed", "ERROR_PACEMAKER_KILLED")])
def test_files_fetched_only_for_parsing_give_the_same_outputs(generate_calc_job_node, tmp_path, case, status):
    """Potential, evaluation and interim potential come from the temporary folder; the outputs are unchanged."""
    status = PacemakerCalculation.exit_codes[status].status if isinstance(status, str) else status
    node = generate_calc_job_node(case, reference_energies=REFERENCES)
    expected, _ = PacemakerParser.parse_from_node(node, store_provenance=False)
    clone = _split_like_a_real_retrieval(node, tmp_path)
    assert "evaluation.json" not in clone.outputs.retrieved.base.repository.list_object_names()
    results, calcfunction = PacemakerParser.parse_from_node(
        clone, store_provenance=False, retrieved_temporary_folder=str(tmp_path)
    )
    assert calcfunction.exit_status == status
    assert set(results) == set(expected)
    if case == "success":
        assert results["potential"].get_yace() == expected["potential"].get_yace()
        assert results["metrics"].get_dict() == expected["metrics"].get_dict()
        assert results["dimer_curves"].get_arraynames() == expected["dimer_curves"].get_arraynames()
    else:
        assert results["interim_potential"].get_content() == expected["interim_potential"].get_content()


def test_without_the_files_fetched_for_parsing_the_potential_is_missing(generate_calc_job_node, tmp_path):
    clone = _split_like_a_real_retrieval(generate_calc_job_node("success", reference_energies=REFERENCES), tmp_path)
    results, calcfunction = PacemakerParser.parse_from_node(clone, store_provenance=False)
    assert calcfunction.exit_status == PacemakerCalculation.exit_codes.ERROR_NO_POTENTIAL.status
    assert "potential" not in results
