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
