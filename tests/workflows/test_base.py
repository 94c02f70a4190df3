"""PacemakerBaseWorkChain: each handler's decision on recorded real failures, and one real killed-and-continued fit.

The handler tests build the work chain (``instantiate_process``, as aiida-quantumespresso tests its PwBaseWorkChain)
and a finished CalcJobNode whose ``retrieved`` folder is a recorded real Pacemaker run (tests/parsers/recorded) and
whose exit status and outputs are what the real parser makes of it; then ``inspect_process`` runs the handlers.
"""

from __future__ import annotations

import json

import pytest
import yaml
from aiida import orm
from aiida.common import LinkType
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from plumpy import ProcessState

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning import files
from aiida_autopipec.learning.metrics import read_metrics_table
from aiida_autopipec.learning.pacemaker import REFERENCE_ENERGIES_JSON
from aiida_autopipec.parsers.pacemaker import PacemakerParser
from aiida_autopipec.workflows.base import PacemakerBaseWorkChain, is_finite_potential
from tests.conftest import FAST_PARAMETERS, RECORDED

CALC_EXIT_CODES = PacemakerCalculation.exit_codes
EXIT_CODES = PacemakerBaseWorkChain.exit_codes


def recorded_parameters(case: str) -> dict:
    """TrainingConfig fields matching the recorded run's input.yaml (batch size, maxiter, kappa)."""
    config = yaml.safe_load((RECORDED / case / files.INPUT_YAML).read_text())
    return {
        **FAST_PARAMETERS,
        "batch_size": config["backend"]["batch_size"],
        "maxiter": config["fit"]["maxiter"],
        "kappa": config["fit"]["loss"]["kappa"],
    }


def recorded_iterations(case: str) -> int:
    return int(read_metrics_table(RECORDED / case / files.TRAIN_METRICS)["iter_num"].max())


@pytest.fixture(scope="module")
def training_set(emt_structures):
    return TrainingSetData.from_ase(emt_structures).store()


@pytest.fixture
def generate_workchain(pacemaker_code, training_set):
    """A set-up PacemakerBaseWorkChain instance (not running), with ``pacemaker`` inputs from the arguments."""

    def factory(parameters: dict | None = None, **pacemaker_inputs) -> PacemakerBaseWorkChain:
        inputs = {
            "pacemaker": {
                "code": pacemaker_code,
                "training_set": training_set,
                "parameters": orm.Dict(parameters if parameters is not None else dict(FAST_PARAMETERS)),
                **pacemaker_inputs,
            }
        }
        process = instantiate_process(get_manager().get_runner(), PacemakerBaseWorkChain, **inputs)
        process.setup()
        return process

    return factory


@pytest.fixture
def generate_finished_calc(generate_calc_job_node):
    """A finished CalcJobNode of a recorded run, with the exit status and outputs the real parser gives it."""

    def factory(case: str, scheduler_exit_status: int | None = None, drop: tuple[str, ...] = (), **kwargs):
        node = generate_calc_job_node(case, **kwargs)
        if scheduler_exit_status is not None:  # what the scheduler reported before the parser ran
            node.set_exit_status(scheduler_exit_status)
        results, calcfunction = PacemakerParser.parse_from_node(node, store_provenance=False)
        for label, output in results.items():
            if label not in drop:
                output.base.links.add_incoming(node, LinkType.CREATE, label)
                output.store()
        node.set_process_state(ProcessState.FINISHED)
        node.set_exit_status(calcfunction.exit_status)
        node.set_exit_message(calcfunction.exit_message)
        return node

    return factory


def inspect(process: PacemakerBaseWorkChain, node: orm.CalcJobNode):
    """What the work chain decides after ``node`` finished (as the next step of its outline would)."""
    process.ctx.children = [*process.ctx.get("children", []), node]
    process.ctx.iteration = len(process.ctx.children)
    return process.inspect_process()


def calc_inputs(process: PacemakerBaseWorkChain) -> dict:
    """The inputs the work chain would launch the next PacemakerCalculation with."""
    inputs = dict(process.ctx.inputs)
    inputs.pop("metadata", None)
    return process._wrap_bare_dict_inputs(PacemakerCalculation.spec().inputs, inputs)


def test_defaults():
    spec = PacemakerBaseWorkChain.spec()
    assert spec.inputs["max_iterations"].default().value == 3
    assert "restart_potential" in spec.inputs["pacemaker"]
    assert {"potential", "metrics", "learning_curve", "dimer_curves"} <= set(spec.outputs)


def test_success_finishes(generate_workchain, generate_finished_calc):
    process = generate_workchain()
    node = generate_finished_calc("success")
    assert node.is_finished_ok
    assert inspect(process, node) is None
    assert process.ctx.is_finished


@pytest.mark.parametrize(("case", "given", "expected"), [("out_of_memory", 1000, 500), ("out_of_memory_ulimit", 7, 3)])
def test_out_of_memory_halves_the_batch(generate_workchain, generate_finished_calc, case, given, expected):
    process = generate_workchain({**recorded_parameters(case), "batch_size": given})
    node = generate_finished_calc(case)
    assert node.exit_status == CALC_EXIT_CODES.ERROR_OUT_OF_MEMORY.status
    result = inspect(process, node)
    assert result.status == 0
    assert process.ctx.inputs.parameters["batch_size"] == expected
    assert "restart_potential" not in process.ctx.inputs


def test_out_of_memory_default_batch_then_floor(generate_workchain, generate_finished_calc):
    parameters = recorded_parameters("out_of_memory")
    del parameters["batch_size"]  # TrainingConfig's default: 100
    process = generate_workchain(parameters)
    assert inspect(process, generate_finished_calc("out_of_memory")).status == 0
    assert process.ctx.inputs.parameters["batch_size"] == 50

    process = generate_workchain({**parameters, "batch_size": 1})
    result = inspect(process, generate_finished_calc("out_of_memory"))
    assert result.status == EXIT_CODES.ERROR_OUT_OF_MEMORY_AT_BATCH_SIZE_ONE.status


@pytest.mark.parametrize(
    ("case", "scheduler_exit_status"),
    [("killed", None), ("killed_sigkill", None), ("killed_job", None), ("killed_job", 120)],
)
def test_killed_continues_from_the_interim_potential(
    generate_workchain, generate_finished_calc, generate_calc_job, case, scheduler_exit_status
):
    parameters = recorded_parameters(case)
    process = generate_workchain(parameters)
    node = generate_finished_calc(case, scheduler_exit_status=scheduler_exit_status)
    expected_status = scheduler_exit_status or CALC_EXIT_CODES.ERROR_PACEMAKER_KILLED.status
    assert node.exit_status == expected_status

    assert inspect(process, node).status == 0
    restart = process.ctx.inputs.restart_potential
    assert restart.uuid == node.outputs.interim_potential.uuid  # linked in provenance, not a copy
    assert restart.get_content() == (RECORDED / case / files.INTERIM_POTENTIAL).read_text()
    # The total number of iterations stays what was asked for.
    done = recorded_iterations(case)
    assert 0 < done < parameters["maxiter"]
    assert process.ctx.inputs.parameters["maxiter"] == parameters["maxiter"] - done

    # The next calculation starts Pacemaker from the interim potential.
    folder, _ = generate_calc_job("autopipec.pacemaker", calc_inputs(process))
    assert yaml.safe_load((folder / files.INPUT_YAML).read_text())["potential"] == files.INITIAL_POTENTIAL
    assert (folder / files.INITIAL_POTENTIAL).read_text() == restart.get_content()


def test_restart_recomputes_the_same_references_and_cutoffs(
    generate_workchain, generate_finished_calc, generate_calc_job
):
    """A bare B-basis restart recomputes reference energies and repulsion cutoffs from the data: the same values."""
    process = generate_workchain(recorded_parameters("killed"))
    first, _ = generate_calc_job("autopipec.pacemaker", calc_inputs(process))
    first_files = {name: (first / name).read_text() for name in (REFERENCE_ENERGIES_JSON, files.EVALUATION_INPUT)}
    assert inspect(process, generate_finished_calc("killed")).status == 0
    second, _ = generate_calc_job("autopipec.pacemaker", calc_inputs(process))
    for name, content in first_files.items():
        assert json.loads((second / name).read_text()) == json.loads(content)


def test_killed_warm_start_pins_what_the_initial_potential_gave(generate_workchain, generate_finished_calc):
    case = "success_core_repulsion"
    pair_cutoffs = json.loads((RECORDED / case / files.EVALUATION_INPUT).read_text())["pair_cutoffs"]
    initial = PotentialData(
        yace=(RECORDED / case / files.OUTPUT_POTENTIAL_YACE).read_text(),
        yaml=(RECORDED / case / files.OUTPUT_POTENTIAL_YAML).read_text(),
        reference_energies={"Al": -3.1, "Cu": -3.6},
        short_range={"mode": "core_repulsion", "pair_cutoffs": pair_cutoffs},
    ).store()
    process = generate_workchain(recorded_parameters("killed"), initial_potential=initial)
    assert inspect(process, generate_finished_calc("killed")).status == 0
    inputs = process.ctx.inputs
    assert "initial_potential" not in inputs  # mutually exclusive with restart_potential
    assert inputs.restart_potential.get_content() == (RECORDED / "killed" / files.INTERIM_POTENTIAL).read_text()
    assert inputs.parameters["reference_energies"] == {"Al": -3.1, "Cu": -3.6}
    assert inputs.parameters["zbl_cutoffs"] == pair_cutoffs


def test_killed_without_interim_potential_is_retried_once(generate_workchain, generate_finished_calc):
    process = generate_workchain(recorded_parameters("killed"))
    assert inspect(process, generate_finished_calc("killed", drop=("interim_potential",))).status == 0
    assert "restart_potential" not in process.ctx.inputs
    result = inspect(process, generate_finished_calc("killed", drop=("interim_potential",)))
    assert result.status == EXIT_CODES.ERROR_UNRECOVERABLE_FAILURE.status


@pytest.mark.parametrize("case", ["nan_loss", "inf_loss"])
def test_diverged_without_interim_starts_over_with_safer_settings(generate_workchain, generate_finished_calc, case):
    parameters = recorded_parameters(case)
    process = generate_workchain(parameters)
    process.ctx.inputs.restart_potential = orm.SinglefileData.from_string("species: []\n")  # left by a kill before
    process.ctx.inputs.parameters["maxiter"] = 5
    node = generate_finished_calc(case)
    assert node.exit_status == CALC_EXIT_CODES.ERROR_LOSS_DIVERGED.status
    assert "interim_potential" not in node.outputs  # these runs diverged before Pacemaker wrote one

    assert inspect(process, node).status == 0
    new = process.ctx.inputs.parameters
    assert new["optimizer"] == "L-BFGS-B"
    assert new["l2_regularization"] == pytest.approx(1e-8 * 100)
    assert new["maxiter"] == parameters["maxiter"]  # from the beginning, with the whole budget
    assert "restart_potential" not in process.ctx.inputs

    # It is tried once: a second divergence stops the work chain.
    result = inspect(process, generate_finished_calc(case))
    assert result.status == EXIT_CODES.ERROR_LOSS_DIVERGED_AGAIN.status


def test_diverged_with_finite_interim_continues_from_it(generate_workchain, generate_finished_calc):
    # A real interim potential (of the killed run) on a run that ended as diverged.
    parameters = {**recorded_parameters("killed"), "l2_regularization": 1e-5, "optimizer": "BFGS"}
    process = generate_workchain(parameters)
    node = generate_finished_calc("killed")
    node.set_exit_status(CALC_EXIT_CODES.ERROR_LOSS_DIVERGED.status)
    assert is_finite_potential(node.outputs.interim_potential.get_content())

    assert inspect(process, node).status == 0
    new = process.ctx.inputs.parameters
    assert (new["optimizer"], new["l2_regularization"]) == ("L-BFGS-B", pytest.approx(1e-3))
    assert process.ctx.inputs.restart_potential.uuid == node.outputs.interim_potential.uuid
    assert new["maxiter"] == parameters["maxiter"] - recorded_iterations("killed")


def test_diverged_with_non_finite_interim_starts_over(generate_workchain, generate_finished_calc):
    process = generate_workchain(recorded_parameters("killed"))
    node = generate_finished_calc("killed", drop=("interim_potential",))
    text = (RECORDED / "killed" / files.INTERIM_POTENTIAL).read_text()
    coefficient = yaml.safe_load(text)["species"][0]["nbody"][0]["c"][0]
    broken = orm.SinglefileData.from_string(text.replace(repr(coefficient), ".nan", 1), files.INTERIM_POTENTIAL)
    assert broken.get_content() != text
    broken.base.links.add_incoming(node, LinkType.CREATE, "interim_potential")
    broken.store()
    node.set_exit_status(CALC_EXIT_CODES.ERROR_LOSS_DIVERGED.status)

    assert inspect(process, node).status == 0
    assert "restart_potential" not in process.ctx.inputs
    assert process.ctx.inputs.parameters["optimizer"] == "L-BFGS-B"


@pytest.mark.parametrize("case", ["killed", "killed_sigkill", "killed_job", "success", "exit_after_potential"])
def test_recorded_potentials_are_finite(case):
    for name in (files.INTERIM_POTENTIAL, files.OUTPUT_POTENTIAL_YAML):
        if (RECORDED / case / name).is_file():
            assert is_finite_potential((RECORDED / case / name).read_text())


def test_non_finite_potentials_are_detected():
    text = (RECORDED / "killed" / files.INTERIM_POTENTIAL).read_text()
    for bad in (".nan", "nan", "-.inf", "inf", "NaN"):
        assert not is_finite_potential(text.replace("0.052561752143431166", bad, 1))
    assert not is_finite_potential("not: [valid")
    # The diverged recorded runs wrote their NaN into the metadata only (`_loss: nan`), not the coefficients.
    assert is_finite_potential((RECORDED / "nan_loss" / files.OUTPUT_POTENTIAL_YAML).read_text())


@pytest.mark.parametrize("case", ["error_exit", "exit_after_potential"])
def test_other_failure_is_retried_once(generate_workchain, generate_finished_calc, case):
    process = generate_workchain()
    node = generate_finished_calc(case)
    assert node.exit_status == CALC_EXIT_CODES.ERROR_PACEMAKER_FAILED.status
    before = dict(process.ctx.inputs.parameters)
    assert inspect(process, node).status == 0
    assert process.ctx.inputs.parameters == before  # unchanged
    assert process.ctx.plain_retries == 1
    result = inspect(process, generate_finished_calc(case))
    assert result.status == EXIT_CODES.ERROR_UNRECOVERABLE_FAILURE.status


def test_unsafe_short_range_is_not_repeated(generate_workchain, generate_finished_calc):
    process = generate_workchain()
    node = generate_finished_calc("success", evaluation_overrides={"mode": "core_repulsion"})
    assert node.exit_status == CALC_EXIT_CODES.ERROR_UNSAFE_SHORT_RANGE.status
    result = inspect(process, node)
    assert result.status == EXIT_CODES.ERROR_UNSAFE_SHORT_RANGE.status
    assert "Al-Cu" in result.message


def test_max_iterations(generate_workchain, generate_finished_calc):
    process = generate_workchain(recorded_parameters("killed"))
    for _ in range(2):
        assert inspect(process, generate_finished_calc("killed")).status == 0
    assert process.ctx.iterations_done == 2 * recorded_iterations("killed")
    result = inspect(process, generate_finished_calc("killed"))
    assert result.status == EXIT_CODES.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status


@pytest.mark.pacemaker
def test_killed_fit_is_continued_for_real(pacemaker_code, training_set):
    """The first real fit is killed mid-way (SIGKILL); the second continues from its interim potential.

    A watcher started by the job script kills pacemaker once its metrics table reaches iteration 150, only while
    there is no initial_potential.yaml in the working directory, i.e. in the first attempt (the restart writes the
    interim potential there). It goes by iterations, not by time: a CPU-time limit killed the fit on a slow machine
    and missed it on a fast one.
    """
    maxiter = 600
    parameters = {**FAST_PARAMETERS, "maxiter": maxiter, "number_of_functions_per_element": 16}
    kill_at_iteration_150 = f"""
if [ ! -f {files.INITIAL_POTENTIAL} ]; then
  (
    for _ in $(seq 2400); do
      [ "$(tail -n 1 {files.TRAIN_METRICS} 2>/dev/null | awk '{{print $3}}')" -ge 150 ] 2>/dev/null && break
      sleep 0.25
    done
    for pid in $(pgrep -f {files.INPUT_YAML}); do
      [ "$(readlink /proc/$pid/cwd)" = "$PWD" ] && kill -9 "$pid"
    done
  ) &
fi"""
    results, node = run_get_node(
        PacemakerBaseWorkChain,
        pacemaker={
            "code": pacemaker_code,
            "training_set": training_set,
            "parameters": orm.Dict(parameters),
            "metadata": {"options": {"prepend_text": kill_at_iteration_150}},
        },
    )
    assert node.is_finished_ok, node.exit_message
    first, second = sorted(node.called, key=lambda called: called.ctime)
    assert first.exit_status == CALC_EXIT_CODES.ERROR_PACEMAKER_KILLED.status, first.exit_message
    assert "SIGKILL" in first.exit_message
    assert second.is_finished_ok, second.exit_message
    assert second.inputs.restart_potential.uuid == first.outputs.interim_potential.uuid

    first_curve, second_curve = first.outputs.learning_curve, second.outputs.learning_curve
    done = int(first_curve.get_array("iteration")[-1])
    assert 150 <= done < maxiter
    assert second.inputs.parameters["maxiter"] == maxiter - done
    # It continued rather than started over: it begins at the loss where the first one was killed.
    first_loss, second_loss = first_curve.get_array("loss"), second_curve.get_array("loss")
    assert second_loss[0] == pytest.approx(first_loss[-1], rel=0.05)
    assert second_loss[0] < 0.5 * first_loss[0]
    assert isinstance(results["potential"], PotentialData)
    assert results["metrics"]["iterations"] <= maxiter - done
