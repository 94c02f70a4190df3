"""`autopipec train` and `learn` for real (tiny fits, fast protocol), then `show`, `export` and `plot` on the result."""

from __future__ import annotations

import re

import numpy as np
import pytest
from aiida import orm
from click.testing import CliRunner
from PIL import Image

from aiida_autopipec.cli import autopipec
from aiida_autopipec.learning.dataset import write_extxyz

pytestmark = pytest.mark.pacemaker

TINY = ["-p", "maxiter=15", "-p", "device=cpu", "-p", "display_step=5"]


def invoke(*arguments: str):
    result = CliRunner().invoke(autopipec, [str(argument) for argument in arguments])
    return result


def next_pk(output: str) -> int:
    return int(re.search(r"Next: autopipec show (\d+)", output).group(1))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, emt_structures, emt_test_structures):
    folder = tmp_path_factory.mktemp("cli_data")
    return write_extxyz(folder / "train.xyz", emt_structures), write_extxyz(folder / "test.xyz", emt_test_structures)


@pytest.fixture(scope="module")
def trained(pacemaker_code, data_files):
    """One real `autopipec train` in the foreground: (CLI result, PacemakerBaseWorkChain node)."""
    train, test = data_files
    code = pacemaker_code.full_label
    result = invoke("train", train, "--test-set", test, "--protocol", "fast", "--code", code, *TINY)
    assert result.exit_code == 0, result.output
    return result, orm.load_node(next_pk(result.output))


def test_train_runs_the_base_workchain_and_shows_progress(trained, emt_structures):
    result, node = trained
    assert node.process_label == "PacemakerBaseWorkChain" and node.is_finished_ok
    parameters = node.inputs.pacemaker.parameters.get_dict()
    # fast protocol: basis from the data size (24 structures of 8 atoms, two elements), our -p values on top.
    assert parameters["maxiter"] == 15 and parameters["device"] == "cpu" and parameters["cutoff"] == 5.0
    assert parameters["batch_size"] == len(emt_structures)
    assert f"Protocol fast: {parameters['number_of_functions_per_element']} functions per element" in result.output
    calculation = node.called[0]
    assert f"PacemakerBaseWorkChain<{node.pk}>: finished" in result.output
    assert f"PacemakerCalculation<{calculation.pk}>: finished" in result.output
    assert "pacemaker: Iteration" in result.output and "Loss:" in result.output  # Pacemaker's own lines
    assert "train" in result.output and "test" in result.output and "15 iterations" in result.output
    assert node.inputs.pacemaker.test_set.num_structures == 8


def test_show(trained):
    _, node = trained
    result = invoke("show", node.pk)
    assert result.exit_code == 0, result.output
    metrics = node.outputs.metrics.get_dict()
    assert f"PacemakerBaseWorkChain<{node.pk}>: finished [0]" in result.output
    assert f"{metrics['test']['rmse_forces']:.4f}" in result.output
    assert f"PotentialData<{node.outputs.potential.pk}>" in result.output
    curve = node.outputs.learning_curve
    assert "Learning curve" in result.output
    assert f"{int(curve.get_array('iteration')[-1]):>6} {curve.get_array('loss')[-1]:>11.4e}" in result.output
    # A PotentialData shows the metrics of the fit that made it.
    by_potential = invoke("show", node.outputs.potential.uuid)
    assert by_potential.exit_code == 0, by_potential.output
    assert f"{metrics['test']['rmse_forces']:.4f}" in by_potential.output and "Learning curve" in by_potential.output


def test_export_writes_a_usable_potential(trained, tmp_path, emt_test_structures):
    from pyace import PyACECalculator

    _, node = trained
    result = invoke("export", node.uuid, tmp_path / "export")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "export"
    expected = {
        "potential.yace",
        "potential.yaml",
        "lammps.in",
        "README.md",
        "potential.asi",
        "lammps_extrapolation.in",
    }
    assert {path.name for path in folder.iterdir()} == expected
    potential = node.outputs.potential
    readme = (folder / "README.md").read_text()
    for uuid in (potential.uuid, node.uuid, potential.creator.uuid, node.inputs.pacemaker.training_set.uuid):
        assert uuid in readme
    assert "pair_style pace" in (folder / "lammps.in").read_text()
    atoms = emt_test_structures[0].copy()
    atoms.calc = PyACECalculator(str(folder / "potential.yace"))
    exported = atoms.get_potential_energy()
    atoms.calc = potential.get_calculator()
    assert exported == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    assert np.isfinite(exported)
    # The active set gives per-atom extrapolation grades: near 1 inside the training domain, large outside it.
    calculator = PyACECalculator(str(folder / "potential.yaml"))
    calculator.set_active_set(str(folder / "potential.asi"))
    inside, outside = emt_test_structures[0].copy(), emt_test_structures[0].copy()
    outside.set_cell(outside.cell * 0.8, scale_atoms=True)
    grades = []
    for atoms in (inside, outside):
        atoms.calc = calculator
        atoms.get_potential_energy()
        grades.append(calculator.results["gamma"].max())
    assert grades[0] < 2.0 < grades[1]
    assert "pair_coeff * * potential.yaml potential.asi Al Cu" in (folder / "lammps_extrapolation.in").read_text()


def test_parity_predictions_reproduce_the_stored_test_errors(trained):
    """What `plot` evaluates (the delivered model on the test set) gives the errors the parser stored."""
    from aiida_autopipec.learning import plots

    _, node = trained
    structures = node.inputs.pacemaker.test_set.to_ase()
    (energy, forces), (predicted_energy, predicted_forces) = (
        plots.reference_values(structures),
        plots.predict(structures, node.outputs.potential.get_calculator()),
    )
    test = node.outputs.metrics["test"]
    assert np.sqrt(np.mean((predicted_energy - energy) ** 2)) == pytest.approx(test["rmse_energy"], rel=1e-3)
    assert np.sqrt(np.mean((predicted_forces - forces) ** 2)) == pytest.approx(test["rmse_forces"], rel=1e-3)


def assert_real_image(path, min_colours: int = 20) -> None:
    """A PNG with a plot in it: a sensible size, many colours, not one flat colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert width >= 300 and height >= 250
    assert pixels.std() > 10.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= min_colours


def test_plot_writes_real_figures(trained, tmp_path):
    _, node = trained
    result = invoke("plot", node.pk, "--output", tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("learning_curve.png", "parity.png", "dimer_curves.png"):
        assert f"wrote {tmp_path / name}" in result.output
        assert_real_image(tmp_path / name)
    assert not (tmp_path / "convergence.png").exists()  # only for active learning


def test_learn_one_iteration_then_show_and_plot(pacemaker_code, data_files, tmp_path):
    train, test = data_files
    result = invoke(
        "learn", train, "--test-set", test, "--protocol", "fast", "--code", pacemaker_code.full_label, *TINY,
        "-c", "max_iterations=1", "-c", "rmse_forces=10.0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Protocol fast: up to 1 fits" in result.output
    node = orm.load_node(next_pk(result.output))
    assert node.process_label == "ActiveLearningWorkChain" and node.is_finished_ok
    assert "iter 1:" in result.output and "converged" in result.output  # the loop's own report, as it ran
    shown = invoke("show", node.pk)
    assert shown.exit_code == 0, shown.output
    assert "Active-learning history" in shown.output
    history = node.outputs.history.get_list()
    assert f"{history[0]['test']['rmse_forces']:.4f}" in shown.output
    plotted = invoke("plot", node.pk, "--output", tmp_path)
    assert plotted.exit_code == 0, plotted.output
    assert_real_image(tmp_path / "convergence.png", min_colours=10)


@pytest.fixture
def daemon_double(monkeypatch):
    """`--daemon` as if a daemon ran: a fast double for plumbing (the real daemon path: tests/user, tests/workflows)."""
    from aiida_autopipec.cli import launch

    monkeypatch.setattr(launch, "check_daemon_running", lambda: None)


def test_daemon_submission_prints_how_to_follow(pacemaker_code, data_files, monkeypatch, daemon_double):
    """`--daemon` hands the builder to `submit` (here a double: the daemon path is tested in tests/workflows)."""
    import aiida.engine

    submitted = []

    def fake_submit(builder):
        submitted.append(builder)
        node = orm.WorkflowNode()
        node.set_process_label("PacemakerBaseWorkChain")
        return node.store()

    monkeypatch.setattr(aiida.engine, "submit", fake_submit)
    train, _ = data_files
    result = invoke("train", train, "--protocol", "precise", "--code", pacemaker_code.full_label, "--daemon", "--gpu")
    assert result.exit_code == 0, result.output
    pk = re.search(r"PacemakerBaseWorkChain<(\d+)> to the daemon", result.output).group(1)
    assert f"verdi process status {pk}" in result.output and f"autopipec show {pk}" in result.output
    assert submitted[0].pacemaker.parameters["device"] == "gpu"
    assert submitted[0].pacemaker.parameters["maxiter"] == 2000
    assert "gpus" not in submitted[0].pacemaker.metadata.options  # the direct scheduler cannot reserve GPUs
    # On SLURM, --gpu also reserves one GPU through the calculation's option (-> #SBATCH --gres=gpu:1).
    cluster = orm.Computer(
        label="cli-slurm", hostname="localhost", transport_type="core.local", scheduler_type="core.slurm"
    ).store()
    code = orm.InstalledCode(label="pacemaker", computer=cluster, filepath_executable="/opt/pace/bin/pacemaker").store()
    result = invoke("train", train, "--protocol", "fast", "--code", code.full_label, "--daemon", "--gpu")
    assert result.exit_code == 0, result.output
    assert submitted[1].pacemaker.metadata.options.gpus == 1


def test_overrides_file_is_merged_and_checked(pacemaker_code, data_files, monkeypatch, tmp_path, daemon_double):
    import aiida.engine

    submitted = []
    monkeypatch.setattr(aiida.engine, "submit", lambda builder: submitted.append(builder) or orm.WorkflowNode().store())
    train, _ = data_files
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("pacemaker:\n  parameters: {kappa: 0.4}\n  settings: {retrieve_predictions: true}\n")
    arguments = ["train", train, "--code", pacemaker_code.full_label, "--daemon", "--overrides", overrides]
    result = invoke(*arguments, "-p", "maxiter=30")
    assert result.exit_code == 0, result.output
    pacemaker = submitted[0].pacemaker
    assert pacemaker.parameters["kappa"] == 0.4 and pacemaker.parameters["maxiter"] == 30
    assert pacemaker.settings.get_dict() == {"retrieve_predictions": True}
    overrides.write_text("pacemaker:\n  setings: {}\n")
    result = invoke(*arguments)
    assert result.exit_code == 1 and "unknown input 'pacemaker.setings'" in result.output


def test_learn_wires_candidates_codes_and_labeller(pacemaker_code, data_files, monkeypatch, tmp_path, daemon_double):
    import aiida.engine

    submitted = []

    def fake_submit(builder):
        submitted.append(builder)
        return orm.WorkflowNode().store()

    monkeypatch.setattr(aiida.engine, "submit", fake_submit)
    train, test = data_files
    arguments = ["learn", train, "--candidates", test, "--code", pacemaker_code.full_label, "--daemon"]
    result = invoke(*arguments, "--calculator-kwargs", "{asap_cutoff: true}", "-c", "max_new_structures=3")
    assert result.exit_code == 0, result.output
    builder = submitted[0]
    assert builder.candidates.labelled is False and builder.candidates.num_structures == 8
    assert builder.convergence["max_new_structures"] == 3
    assert builder.labeling.calculator.get_dict() == {
        "import_path": "ase.calculators.emt.EMT",
        "kwargs": {"asap_cutoff": True},
    }
    assert builder.selection.code.label == "pace-select" and builder.labeling.code.label == "ase-label"
    assert builder.selection.code.computer.uuid == pacemaker_code.computer.uuid
    bad = invoke(*arguments, "-c", "max_new_structure=3")
    assert bad.exit_code == 1 and "convergence: max_new_structure: Extra inputs are not permitted" in bad.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["show", "987654"], "no process or PotentialData with PK or UUID '987654'"),
        (["export", "987654", "out"], "no process, PotentialData or TrainingSetData"),
        (["plot", "987654"], "no process or PotentialData"),
        (["train", "987654"], "no TrainingSetData (training set) with PK or UUID '987654'"),
        (["train", "x.xyz", "--protocol", "quick"], "'quick' is not one of 'fast', 'moderate', 'precise'"),
    ],
)
def test_unknown_identifiers_and_protocols(arguments, message):
    result = invoke(*arguments)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_bad_parameter_is_refused_before_anything_runs(pacemaker_code, data_files):
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    train, _ = data_files
    result = invoke("train", train, "--code", pacemaker_code.full_label, "-p", "maxiters=5")
    assert result.exit_code == 1
    assert "pacemaker.parameters: maxiters: Extra inputs are not permitted" in result.output
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before
    result = invoke("train", train, "--code", "no-such-code@nowhere")
    assert result.exit_code == 2 and "no code 'no-such-code@nowhere'" in result.output


def test_export_of_a_training_set_and_of_a_node_without_potential(emt_structures, tmp_path):
    from ase.io import read

    from aiida_autopipec.data import TrainingSetData

    training_set = TrainingSetData.from_ase(emt_structures[:3]).store()
    result = invoke("export", training_set.pk, tmp_path)
    assert result.exit_code == 0, result.output
    written = read(tmp_path / "training_set.extxyz", ":")
    assert [atoms.get_potential_energy() for atoms in written] == pytest.approx(
        [atoms.get_potential_energy() for atoms in emt_structures[:3]]
    )
    parameters = orm.Dict({"maxiter": 5}).store()
    result = invoke("export", parameters.pk, tmp_path / "other")
    assert result.exit_code == 2 and "is a Dict, not a process, PotentialData or TrainingSetData" in result.output
