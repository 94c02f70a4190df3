"""Foreground runs that show what happens: state changes, process reports and Pacemaker's iteration lines.

The monitor is a periodic callback on the runner's own event loop, so it reads the database from the thread that
runs the process (no second connection, no threads) and stops when the process terminates.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from aiida.common.log import LOG_LEVEL_REPORT

from aiida_autopipec.learning import files

#: Pacemaker's per-iteration log line, e.g. ``... I - Iteration   #6 (9 evals): Loss: 4.19e-03 | RMSE ...``.
ITERATION_LINE = re.compile(r"(Iteration\s+#\d+.*?Loss:.*?)(?:\|\s*Time/eval.*)?$")
#: The ``[pk|ProcessLabel|step]: `` prefix of stored reports (the monitor names the process itself).
REPORT_PREFIX = re.compile(r"^\[\d+\|[^\]]*\]:\s*")


class ProgressMonitor:
    """Print new states, reports and the latest Pacemaker iteration of a process tree, each time it is polled."""

    def __init__(self, root, echo: Callable[[str], None] = click.echo):
        self.root = root
        self.echo = echo
        self.states: dict[int, str] = {}
        self.log_ids: set[int] = set()
        self.iteration_lines: dict[int, str] = {}
        self.finished: set[int] = set()

    def _tree(self) -> list:
        nodes, pending = [], [self.root]
        while pending:
            node = pending.pop(0)
            nodes.append(node)
            pending.extend(sorted(node.called, key=lambda child: child.pk))
        return nodes

    def poll(self) -> None:
        """Report what changed since the last poll."""
        from aiida import orm

        for node in self._tree():
            state = node.process_state.value if node.process_state else "created"
            job_state = node.get_state() if isinstance(node, orm.CalcJobNode) and not node.is_terminated else None
            if job_state is not None:  # e.g. "waiting (withscheduler)": where a calculation's job is
                state += f" ({job_state.value})"
            if self.states.get(node.pk) != state:
                self.states[node.pk] = state
                suffix = f" [{node.exit_status}]" if node.is_terminated and node.exit_status else ""
                self.echo(f"{node.process_label}<{node.pk}>: {state}{suffix}")
            for log in orm.Log.collection.get_logs_for(node):
                if log.pk not in self.log_ids:
                    self.log_ids.add(log.pk)
                    self.echo(f"  {node.process_label}<{node.pk}>: {REPORT_PREFIX.sub('', log.message)}")
            if isinstance(node, orm.CalcJobNode) and node.pk not in self.finished:
                self._follow_pacemaker_log(node)
                if node.is_terminated:  # its last iteration line is printed once, then it is left alone
                    self.finished.add(node.pk)

    def _follow_pacemaker_log(self, node) -> None:
        """The newest iteration line of a fit whose working directory is on this machine (any other calculation has
        no Pacemaker log)."""
        remote = node.outputs.remote_folder if "remote_folder" in node.outputs else None
        if remote is None or node.computer.transport_type != "core.local":
            return
        path = Path(remote.get_remote_path()) / files.LOG
        if not path.is_file():
            return
        with path.open(errors="replace") as handle:
            lines = [match.group(1).strip() for line in handle if (match := ITERATION_LINE.search(line))]
        if lines and self.iteration_lines.get(node.pk) != lines[-1]:
            self.iteration_lines[node.pk] = lines[-1]
            self.echo(f"  pacemaker: {lines[-1]}")


class _ProcessReports(logging.Filter):
    """Drops the REPORT records of process nodes (the monitor prints them, once, with the process they belong to)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("aiida.orm.nodes.process") and record.levelno == LOG_LEVEL_REPORT)


@contextmanager
def _reports_printed_once() -> Iterator[None]:
    """Keep AiiDA's console handler from printing process reports a second time while the monitor runs."""
    consoles = [handler for handler in logging.getLogger("aiida").handlers if type(handler) is logging.StreamHandler]
    report_filter = _ProcessReports()
    for handler in consoles:
        handler.addFilter(report_filter)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(report_filter)


def run_with_progress(builder, interval: float = 2.0, echo: Callable[[str], None] = click.echo):
    """Run ``builder`` in the foreground, printing progress every ``interval`` seconds; returns the process node.

    The runner has no communicator, like the one of ``aiida.engine.run_get_node``: on a ``verdi presto`` profile the
    broker is started by the daemon, so a foreground run must not need it (the manager's default runner waits for it
    and fails when no daemon runs).
    """
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    runner = get_manager().create_runner(communicator=None)
    process = instantiate_process(runner, builder)
    monitor = ProgressMonitor(process.node, echo)
    handle = None

    def tick() -> None:
        nonlocal handle
        monitor.poll()
        if not process.node.is_terminated:
            handle = runner.loop.call_later(interval, tick)

    handle = runner.loop.call_later(0.0, tick)
    try:
        with _reports_printed_once():
            _, node = runner.run_get_node(process)
    finally:
        handle.cancel()
    monitor.poll()
    return node
