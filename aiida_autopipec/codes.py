"""Find the local ``pacemaker`` and register it as an AiiDA code (idempotent)."""

from __future__ import annotations

import shutil
import sysconfig
import tempfile
from pathlib import Path

from aiida import orm
from aiida.common.exceptions import NotExistent

__all__ = ["find_executable", "get_or_create_local_code", "get_or_create_localhost"]


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
    computer.set_minimum_job_poll_interval(0.0)
    computer.configure(safe_interval=0.0)
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
