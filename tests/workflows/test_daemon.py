"""The active-learning workchain on a running AiiDA daemon, also when the daemon is stopped and started mid-run.

Runs against the session profile's storage and broker (tests/storage_fixtures.py): the ``verdi presto`` default
(SQLite + aiida-core's built-in ZeroMQ broker) or PostgreSQL + RabbitMQ (``AUTOPIPEC_TEST_STORAGE=psql
AUTOPIPEC_TEST_BROKER=rabbitmq``). The daemon is a separate process: it reaches the test's computer, codes and
nodes only through the profile's storage, and runs the real pacemaker, pyace selection and EMT labelling.
"""

from __future__ import annotations

import time

import pytest
from aiida import orm
from aiida.common.datastructures import CalcJobState
from aiida.engine import ProcessState, submit
from click.testing import CliRunner

from aiida_autopipec.cli import autopipec
from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain
from tests.storage_fixtures import skip_or_fail

pytestmark = [pytest.mark.daemon, pytest.mark.pacemaker]

#: Reaches its target in two or more iterations (see test_active_learning.py).
CONVERGENCE = {"rmse_forces": 0.07, "max_iterations": 4, "max_new_structures": 8}
#: Generous upper bounds for waiting on the daemon (a guard against hanging, not a timing assertion).
AWAIT_TIMEOUT_S = 1800
#: How long the daemon stays stopped: longer than the 10 s after which RabbitMQ deletes a test profile's queue.
MAINTENANCE_S = 15
DAEMON_CALL_TIMEOUT_S = 600
PACEMAKER_PROCESS_TYPE = "aiida.calculations:autopipec.pacemaker"


@pytest.fixture(scope="module")
def daemon(aiida_profile, daemon_client):
    """The profile's daemon, started; the test needs a broker (skipped without one, an error in CI)."""
    if aiida_profile.process_control_backend is None:
        skip_or_fail("the test profile has no broker (AUTOPIPEC_TEST_BROKER=none): the daemon cannot run")
    if not daemon_client.is_daemon_running:
        daemon_client.start_daemon(timeout=DAEMON_CALL_TIMEOUT_S)
    yield daemon_client
    # Stopped here with a generous time-out: on a loaded machine a graceful stop can take longer than the
    # ``daemon.timeout`` that aiida's session fixture gives it (circus "Timed out" at the end of the session).
    if daemon_client.is_daemon_running:
        daemon_client.stop_daemon(wait=True, timeout=DAEMON_CALL_TIMEOUT_S)


def await_terminated(node: orm.ProcessNode, daemon_client, timeout: float = AWAIT_TIMEOUT_S) -> orm.ProcessNode:
    """Wait until the daemon has finished ``node``; on time-out fail with the daemon log."""
    return await_condition(node, lambda: node.is_terminated, "terminated", daemon_client, timeout)


def await_condition(node, condition, what: str, daemon_client, timeout: float = AWAIT_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        if node.is_excepted:
            pytest.fail(f"process {node.pk} excepted: {node.exception}")
        if time.monotonic() > deadline:
            log = daemon_client.daemon_log_file
            pytest.fail(f"process {node.pk} not {what} after {timeout} s ({node.process_state}); daemon log: {log}")
        time.sleep(0.5)
    return node


def describe(node: orm.ProcessNode) -> str:
    """State, exit status, exception and process report of ``node``, for failure messages."""
    from aiida.cmdline.utils.common import get_workchain_report

    lines = [f"{node.process_label}<{node.pk}> {node.process_state} exit {node.exit_status}: {node.exit_message}"]
    if node.exception:
        lines.append(node.exception)
    lines.append(get_workchain_report(node, "REPORT"))
    lines += [f"  {child.process_label}<{child.pk}> {child.process_state} {child.exit_status}" for child in node.called]
    return "\n".join(lines)


def finished_trainings(node: orm.WorkflowNode) -> list[orm.CalcJobNode]:
    return [
        child
        for child in node.called_descendants
        if child.process_type == PACEMAKER_PROCESS_TYPE and child.is_finished_ok
    ]


def iterations(node: orm.WorkflowNode) -> list[tuple[int, float]]:
    """Per iteration: number of training structures and the held-out force RMSE (eV/Å)."""
    return [(entry["num_structures"], entry["test"]["rmse_forces"]) for entry in node.outputs.history.get_list()]


@pytest.fixture(scope="module")
def uninterrupted_run(daemon, loop_inputs):
    """The loop submitted to the running daemon and left alone until it terminates."""
    node = submit(ActiveLearningWorkChain, **loop_inputs, convergence=orm.Dict(CONVERGENCE))
    return await_terminated(node, daemon)


def test_active_learning_finishes_on_the_daemon(uninterrupted_run):
    node = uninterrupted_run
    assert node.is_finished_ok, describe(node)
    assert len(iterations(node)) >= 2
    assert node.outputs.metrics["is_converged"] is True
    assert set(node.outputs) >= {"potential", "metrics", "training_set", "history"}
    assert len(finished_trainings(node)) == len(iterations(node))


def repair() -> list[int]:
    """Run ``autopipec repair`` as a user would (the daemon running); the PKs of the processes it revived."""
    result = CliRunner().invoke(autopipec, ["repair"])
    assert result.exit_code == 0, result.output
    return [int(line.split("<")[1].split(">")[0]) for line in result.output.splitlines() if "revived:" in line]


def fit_with_scheduler(node: orm.WorkflowNode) -> bool:
    """Whether a pacemaker job of ``node`` is running in the scheduler (the workchain waits on it)."""
    return any(
        child.process_type == PACEMAKER_PROCESS_TYPE and child.get_state() == CalcJobState.WITHSCHEDULER
        for child in node.called_descendants
    )


def test_active_learning_survives_a_daemon_restart(aiida_profile, daemon, loop_inputs, uninterrupted_run):
    """Stop the daemon during the second fit for a while, start it, run ``autopipec repair``: same result.

    The daemon is stopped while the workchain waits on a running pacemaker job, the state a long run spends nearly
    all its time in, and stays stopped for MAINTENANCE_S. ZeroMQ keeps the process tasks on disk: nothing is lost and
    ``repair`` finds nothing to do. An aiida test profile declares its RabbitMQ process queue to expire 10 s after its
    last consumer left (kiwipy's testing mode), so there the stop loses the tasks of the workchain and its running
    fit, as a task older than RabbitMQ's time-to-live is lost in production: ``repair`` must give them back.
    """
    node = submit(ActiveLearningWorkChain, **loop_inputs, convergence=orm.Dict(CONVERGENCE))
    await_condition(
        node,
        lambda: (finished_trainings(node) and fit_with_scheduler(node)) or node.is_terminated,
        "in its second fit",
        daemon,
    )
    # A graceful stop waits for the worker to put its processes down, which can take longer than daemon.timeout.
    daemon.stop_daemon(wait=True, timeout=DAEMON_CALL_TIMEOUT_S)
    await_condition(node, lambda: not daemon.is_daemon_running, "with its daemon stopped", daemon, 60)
    # Stopping the daemon pauses nothing and kills nothing: the process waits, unfinished, in the storage.
    assert not node.is_terminated, f"the run ended before the daemon was stopped ({node.process_state})"
    assert node.process_state in (ProcessState.CREATED, ProcessState.WAITING, ProcessState.RUNNING)
    stopped_at = len(finished_trainings(node))
    time.sleep(MAINTENANCE_S)

    daemon.start_daemon(timeout=DAEMON_CALL_TIMEOUT_S)
    revived = repair()
    if aiida_profile.process_control_backend == "core.rabbitmq":
        assert node.pk in revived, f"the test profile's RabbitMQ queue expired, yet {node.pk} was not revived"
    else:
        assert revived == [], "the ZeroMQ broker keeps its tasks on disk: repair sends nothing"
    await_terminated(node, daemon)

    assert node.is_finished_ok, describe(node)
    assert set(node.outputs) >= {"potential", "metrics", "training_set", "history"}
    assert len(iterations(node)) > stopped_at, "nothing was left to do after the restart"
    # Pacemaker is bit-reproducible on CPU with a fixed seed; selection and EMT labelling are deterministic.
    assert [count for count, _ in iterations(node)] == [count for count, _ in iterations(uninterrupted_run)]
    assert [rmse for _, rmse in iterations(node)] == pytest.approx([rmse for _, rmse in iterations(uninterrupted_run)])
    assert node.outputs.training_set.num_structures == uninterrupted_run.outputs.training_set.num_structures
    assert node.outputs.metrics["test"]["rmse_forces"] == pytest.approx(
        uninterrupted_run.outputs.metrics["test"]["rmse_forces"]
    )


def test_repair_rejects_what_is_not_a_process_and_leaves_finished_ones_alone(daemon, loop_inputs, uninterrupted_run):
    not_a_process = CliRunner().invoke(autopipec, ["repair", str(loop_inputs["training_set"].pk)])
    assert not_a_process.exit_code != 0
    assert f"Error: Invalid value: node {loop_inputs['training_set'].pk} is a TrainingSetData" in not_a_process.output
    missing = CliRunner().invoke(autopipec, ["repair", "987654321"])
    assert missing.exit_code != 0 and "Error: Invalid value: no process with PK or UUID '987654321'" in missing.output
    assert "Traceback" not in not_a_process.output + missing.output
    finished = CliRunner().invoke(autopipec, ["repair", "--dry-run", str(uninterrupted_run.pk)])
    assert finished.exit_code == 0, finished.output
    assert "No unfinished processes: nothing to repair." in finished.output
