"""``autopipec repair``: give processes whose broker task was lost back to the running daemon.

A process that is not terminated must either be loaded by a daemon worker (it then answers a status request) or
have a task waiting in the broker's process queue. One with neither is "lost": nothing will ever run it again and it
stays ``Waiting`` forever. RabbitMQ drops a task that waited in the queue longer than its time-to-live (7 days in
kiwipy 0.9, counted from the submission, also for a task a stopped worker hands back), and the queue of an aiida test
profile is deleted 10 s after its last consumer left. ``repair`` finds the lost processes while the daemon runs and
sends each one a new continue task, as ``submit`` does: the task stays with the worker until the process ends, so the
process survives the next restart too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from aiida_autopipec.cli.main import autopipec, load_or_create_profile
from aiida_autopipec.cli.utils import load_node_of_type

#: Seconds a process loaded by a worker has to answer a status request.
ANSWER_TIMEOUT_S = 10.0
#: An apparently lost process is checked this many more times, this far apart: a worker may be loading it right now
#: (on a busy machine a restarted worker took tens of seconds to load a work chain: 30 s in all).
CONFIRM_ROUNDS = 6
CONFIRM_PAUSE_S = 5.0

LOADED, UNREACHABLE, SILENT = "loaded by a worker", "lost", "no answer"


def is_unroutable(exception: BaseException) -> bool:
    """Whether a status request failed because no worker holds the process (RabbitMQ or aiida's ZeroMQ broker)."""
    import kiwipy

    return isinstance(exception, kiwipy.UnroutableError) or str(exception).startswith("Recipient not found")


def probe(controller, pk: int) -> str:
    """LOADED if a worker answers for process ``pk``, UNREACHABLE if none holds it, SILENT if the answer is late."""
    from concurrent.futures import Future
    from concurrent.futures import TimeoutError as FutureTimeout

    try:
        answer = controller.get_status(pk)
        while isinstance(answer, Future):
            answer = answer.result(timeout=ANSWER_TIMEOUT_S)
    except FutureTimeout:
        return SILENT
    except Exception as exception:  # the broker reports a missing recipient as an exception
        return UNREACHABLE if is_unroutable(exception) else SILENT
    return LOADED


def queued(broker) -> set[int]:
    """PKs of the processes that have a task with the broker that no worker is running yet."""
    from aiida.brokers.zeromq.broker import ZeromqBroker
    from aiida.engine.processes.control import get_process_tasks

    if isinstance(broker, ZeromqBroker):
        return zeromq_tasks(broker._storage_path / "tasks")  # the folder `verdi process repair` writes to
    return set(get_process_tasks(broker))  # RabbitMQ: the ready messages, fetched and handed back


def zeromq_tasks(folder: Path) -> set[int]:
    """PKs with a task file in the ZeroMQ broker's queue, waiting or handed to a worker, read without touching them.

    aiida's ``get_process_tasks`` opens the queue as the broker does at start-up, which moves the files of the tasks
    in flight back to ``pending``: behind a running broker's back, the tasks a worker is taking.
    """
    pks = set()
    for path in [*folder.glob("pending/*.json"), *folder.glob("processing/*.json")]:
        try:
            pks.add(int(json.loads(path.read_text())["body"]["args"]["pid"]))
        except (OSError, ValueError, KeyError, TypeError):  # taken or acknowledged meanwhile, or not a process task
            continue
    return pks


def find_lost(pks: Iterable[int], controller, broker) -> tuple[list[int], list[int]]:
    """(lost, silent) among the active processes ``pks``: lost ones in every round; silent ones answered too late."""
    states = {pk: probe(controller, pk) for pk in pks}
    suspects = {pk for pk, state in states.items() if state == UNREACHABLE}
    for round_ in range(CONFIRM_ROUNDS + 1):
        suspects -= queued(broker)
        if not suspects or round_ == CONFIRM_ROUNDS:
            break
        time.sleep(CONFIRM_PAUSE_S)
        for pk in list(suspects):
            states[pk] = probe(controller, pk)
            if states[pk] != UNREACHABLE:
                suspects.discard(pk)
    silent = sorted(pk for pk, state in states.items() if state == SILENT)
    return sorted(suspects), silent


def active_processes(identifiers: Sequence[str]) -> list:
    """The active processes among ``identifiers`` and their descendants; all active processes without identifiers."""
    from aiida import orm
    from aiida.engine.processes.control import get_active_processes

    if not identifiers:
        return sorted(get_active_processes(), key=lambda node: node.pk)
    selected = {}
    for identifier in identifiers:
        node = load_node_of_type(identifier, (orm.ProcessNode,), "process")
        family = [node, *(node.called_descendants if isinstance(node, orm.WorkflowNode) else [])]
        selected.update({member.pk: member for member in family if not member.is_sealed})
    return [selected[pk] for pk in sorted(selected)]


def connect():
    """(process controller, broker) of the loaded profile, whose daemon must be running; a clear error otherwise."""
    from aiida.common.exceptions import ConfigurationError
    from aiida.engine.daemon.client import get_daemon_client
    from aiida.manage import get_manager

    try:
        profile = load_or_create_profile(create=False)
    except ConfigurationError as exc:
        raise click.ClickException(f"no AiiDA profile to repair: {exc}") from exc
    broker = get_manager().get_broker()
    if broker is None:
        raise click.ClickException(f"profile '{profile}' has no broker: its processes run without a daemon")
    if not get_daemon_client().is_daemon_running:
        raise click.ClickException(
            f"the daemon of profile '{profile}' is not running: start it (`verdi daemon start`), then run "
            "`autopipec repair` again"
        )
    return get_manager().get_process_controller(), broker


def describe(node) -> str:
    status = f" ({node.process_status})" if node.process_status else ""
    return f"{node.process_label}<{node.pk}> {node.process_state.value}{status}"


@autopipec.command()
@click.argument("processes", nargs=-1, metavar="[PROCESS]...")
@click.option("--dry-run", is_flag=True, help="Only list the lost processes; send nothing.")
def repair(processes: tuple[str, ...], dry_run: bool) -> None:
    """Give processes that the daemon lost (e.g. after a restart) back to it. Run it with the daemon running.

    Checks every unfinished process (or PROCESS, by PK or UUID, and the processes it called): one that no daemon
    worker holds and that has no task in the broker's queue gets a new task, and the daemon continues it from its
    last checkpoint. Processes that are running or queued are left alone, so running it is always safe.
    """
    controller, broker = connect()
    nodes = active_processes(processes)
    if not nodes:
        click.echo("No unfinished processes: nothing to repair.")
        return
    from aiida.brokers.zeromq.broker import ZeromqBroker

    if isinstance(broker, ZeromqBroker):
        # Its tasks stay on disk until their process ends, so a restart loses none; and a worker that is still
        # loading a process after a restart does not answer yet, which looked like a lost process in CI rehearsals.
        click.echo("The profile's ZeroMQ broker keeps every task on disk until its process ends: nothing to repair.")
        return
    lost, silent = find_lost([node.pk for node in nodes], controller, broker)
    by_pk = {node.pk: node for node in nodes}
    click.echo(f"Checked {len(nodes)} unfinished process(es): {len(lost)} lost.")
    for pk in silent:
        click.echo(f"  not answering in {ANSWER_TIMEOUT_S:.0f} s (busy worker?), left alone: {describe(by_pk[pk])}")
    for pk in lost:
        if not dry_run:
            controller.continue_process(pk, nowait=False, no_reply=True)  # as `submit` does
        click.echo(f"  {'lost' if dry_run else 'revived'}: {describe(by_pk[pk])}")
    if lost and dry_run:
        click.echo("Dry run: nothing sent. Run `autopipec repair` without --dry-run to revive them.")
