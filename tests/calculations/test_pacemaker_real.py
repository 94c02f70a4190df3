"""End to end: the real ``pacemaker`` through AiiDA (``run_get_node``) on EMT data made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning import files
from tests.conftest import FAST_PARAMETERS

pytestmark = pytest.mark.pacemaker


@pytest.fixture(scope="module")
def trained(pacemaker_code, emt_structures, emt_test_structures):
    """One real fit with an explicit held-out test set."""
    training_set = TrainingSetData.from_ase(emt_structures)
    test_set = TrainingSetData.from_ase(emt_test_structures)
    results, node = run_get_node(
        PacemakerCalculation,
        code=pacemaker_code,
        training_set=training_set,
        test_set=test_set,
        parameters=orm.Dict(FAST_PARAMETERS),
    )
    return results, node, test_set


def _rmse(calculator, structures):
    energy_errors, force_errors = [], []
    for reference in structures:
        atoms = reference.copy()
        atoms.calc = calculator
        energy_errors.append((atoms.get_potential_energy() - reference.get_potential_energy()) / len(atoms))
        force_errors.append((atoms.get_forces() - reference.get_forces()).ravel())
    return np.sqrt(np.mean(np.square(energy_errors))), np.sqrt(np.mean(np.square(np.concatenate(force_errors))))


def test_fit_through_aiida_predicts_what_it_reports(trained):
    results, node, test_set = trained
    assert node.is_finished_ok, node.exit_message
    potential = results["potential"]
    assert isinstance(potential, PotentialData)
    assert potential.elements == ["Al", "Cu"]
    assert potential.cutoff == pytest.approx(4.5)
    metrics = results["metrics"].get_dict()
    assert set(metrics["train"]) >= {"rmse_energy", "rmse_forces", "mae_energy", "mae_forces"}
    assert metrics["iterations"] == 15

    # The delivered .yace (with reference energies in E0) reproduces the reported test errors on absolute energies.
    rmse_energy, rmse_forces = _rmse(potential.get_calculator(), test_set.to_ase())
    assert rmse_energy == pytest.approx(metrics["test"]["rmse_energy"], rel=0.02)
    assert rmse_forces == pytest.approx(metrics["test"]["rmse_forces"], rel=0.02)


def test_provenance_links(trained):
    results, node, test_set = trained
    incoming = {link.link_label for link in node.base.links.get_incoming().all()}
    assert {"code", "training_set", "test_set", "parameters"} <= incoming
    outgoing = {link.link_label for link in node.base.links.get_outgoing().all()}
    assert {"potential", "metrics", "learning_curve", "retrieved", "remote_folder"} <= outgoing
    # input.yaml is kept in the node's repository; the Pacemaker pickle is not (TrainingSetData holds the data).
    stored = node.base.repository.list_object_names()
    assert "input.yaml" in stored and files.TRAINING_DATA not in stored
    # Logs and metrics tables are kept; files stored as output nodes (potential, evaluation) are not kept twice, nor
    # is log.txt: every line of it is in pacemaker.err (which adds TensorFlow's messages and any traceback).
    retrieved = results["retrieved"].base.repository
    kept = set(retrieved.list_object_names())
    assert {"pacemaker.err", "metrics.txt", "pacemaker.exit_status"} <= kept
    assert not kept & {"log.txt", "evaluation.json", "output_potential.yace", "output_potential.yaml"}
    log = (Path(node.outputs.remote_folder.get_remote_path()) / files.LOG).read_text().splitlines()
    assert len(log) > 20
    stderr = retrieved.get_object_content(files.STDERR)
    assert [line for line in log if line.split(" - ", 1)[-1] not in stderr] == []
    assert "dimer_curves" in outgoing
    # What `verdi node graph generate` draws: inputs and outputs around the calculation.
    from aiida.tools.visualization import Graph

    graph = Graph()
    graph.add_incoming(node)
    graph.add_outgoing(node)
    drawn = set(graph.nodes)
    for linked in (
        test_set,
        node.inputs.training_set,
        node.inputs.parameters,
        results["potential"],
        results["metrics"],
    ):
        assert linked.pk in drawn
    curve = results["learning_curve"]
    assert curve.get_array("iteration")[-1] == 15
    assert np.isfinite(curve.get_array("loss")).all()


def test_provenance_queries_walk_from_potential_to_data_and_back(trained):
    from aiida_autopipec.workflows.queries import potentials_trained_on, training_set_of

    results, node, _ = trained
    training_set = node.inputs.training_set
    assert training_set_of(results["potential"]).uuid == training_set.uuid
    found = potentials_trained_on(training_set)
    assert [row["potential"].uuid for row in found] == [results["potential"].uuid]
    rmse = results["metrics"]["test"]["rmse_forces"]
    assert found[0]["test_rmse_forces"] == pytest.approx(rmse)
    # The error filter runs in the database: just below the potential's error excludes it.
    assert potentials_trained_on(training_set, max_test_rmse_forces=rmse * 0.999) == []
    assert len(potentials_trained_on(training_set, max_test_rmse_forces=rmse * 1.001)) == 1
