"""Find the local ``pacemaker`` and register it as an AiiDA code (idempotent)."""

from __future__ import annotations

import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from aiida import orm
from aiida.common.exceptions import NotExistent

__all__ = [
    "configure_localhost",
    "find_executable",
    "get_or_create_local_code",
    "get_or_create_localhost",
    "get_or_create_python_code",
]

#: Seconds between two checks of the local scheduler for finished jobs. Each check starts a shell and ``ps``: polled
#: without delay, the engine kept a core busy and slowed a 2-core fit by 20 %; every 0.5 s it takes a few per cent of
#: one core and a finished job waits 0.25 s on average to be noticed (measured, docs/benchmarks.md).
LOCALHOST_POLL_INTERVAL = 0.5


def find_executable(name: str) -> Path | None:
    """``name`` from this Python environment's scripts folder, else from ``PATH``."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def get_or_create_localhost(label: str = "localhost") -> orm.Computer:
    """The computer ``label`` (``verdi presto`` creates ``localhost``), or a new local one with the direct scheduler."""
    try:
        return orm.load_computer(label)
    except NotExistent:
        pass
    computer = orm.Computer(
        label=label,
        hostname="localhost",
        description="This machine (created by aiida-autopipec)",
        transport_type="core.local",
        scheduler_type="core.direct",
        workdir=str(Path(tempfile.gettempdir()) / "aiida_run"),
    ).store()
    return configure_localhost(computer)


def configure_localhost(computer: orm.Computer) -> orm.Computer:
    """Cheap polling for a local computer: every ``LOCALHOST_POLL_INTERVAL`` s, in a plain (non-login) shell.

    A login shell runs the user's start-up files at every command (``pyenv init`` alone took 0.11 s of CPU), and the
    engine polls once a second: a fit on 2 cores ran 5 % slower. The jobs need no login environment: the codes are
    absolute paths, and a plain shell inherits the environment of the process that runs AiiDA.
    """
    computer.set_minimum_job_poll_interval(LOCALHOST_POLL_INTERVAL)
    computer.configure(safe_interval=0.0, use_login_shell=False)
    return computer


def get_or_create_local_code(label: str = "pacemaker", computer: orm.Computer | None = None) -> orm.InstalledCode:
    """The code ``label@computer`` running this environment's ``pacemaker``; created on first use."""
    computer = computer or get_or_create_localhost()
    try:
        return orm.load_code(f"{label}@{computer.label}")
    except NotExistent:
        pass
    executable = find_executable("pacemaker")
    if executable is None:
        raise FileNotFoundError("no `pacemaker` executable found: pip install 'aiida-autopipec[pacemaker]'")
    return orm.InstalledCode(
        label=label,
        description="Pacemaker (python-ace) ACE fitting code",
        default_calc_job_plugin="autopipec.pacemaker",
        computer=computer,
        filepath_executable=str(executable),
    ).store()


#: Python codes the active-learning loop needs, by default label: (entry point, what it does).
PYTHON_CODES = {
    "ase-label": ("autopipec.ase_label", "Python with ASE: labels structures with an ASE calculator"),
    "pace-select": ("autopipec.select", "Python with pyace: extrapolation grades and selection"),
}


def get_or_create_python_code(label: str, computer: orm.Computer | None = None) -> orm.InstalledCode:
    """The code ``label@computer`` running the Python next to ``pacemaker`` (it has pyace and ASE); created once.

    ``label`` is a key of :data:`PYTHON_CODES` (its entry point becomes the code's default plugin) or any other
    label for a plain Python code.
    """
    computer = computer or get_or_create_localhost()
    try:
        return orm.load_code(f"{label}@{computer.label}")
    except NotExistent:
        pass
    pacemaker = find_executable("pacemaker")
    python = pacemaker.parent / "python" if pacemaker is not None else None
    if python is None or not python.exists():
        python = Path(sys.executable)
    plugin, description = PYTHON_CODES.get(label, (None, "Python of this environment"))
    return orm.InstalledCode(
        label=label,
        description=description,
        default_calc_job_plugin=plugin,
        computer=computer,
        filepath_executable=str(python),
    ).store()
