"""What every CalcJob (and work chain) of this plugin shares."""

from __future__ import annotations

from typing import Any

#: Longest label PostgreSQL storage accepts (``db_dbnode.label`` is ``varchar(255)``; SQLite has no limit).
MAX_LABEL_LENGTH = 255


def _validate_label(value: Any, _: Any) -> str | None:
    if isinstance(value, str) and len(value) > MAX_LABEL_LENGTH:
        return f"metadata.label: {len(value)} characters, at most {MAX_LABEL_LENGTH} are stored (use the description)"
    return None


def limit_label_length(spec) -> None:
    """Refuse over-long labels when validating, rather than with a database error once the process has started."""
    spec.inputs["metadata"]["label"].validator = _validate_label


def serial_job_defaults(spec, parser_name: str) -> None:
    """One process on one machine, no MPI (Pacemaker, pyace and ASE scripts parallelise themselves), our parser."""
    options = spec.inputs["metadata"]["options"]
    options["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    options["parser_name"].default = parser_name
    options["withmpi"].default = False
    limit_label_length(spec)
