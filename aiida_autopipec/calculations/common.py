"""What every CalcJob of this plugin shares."""

from __future__ import annotations


def serial_job_defaults(spec, parser_name: str) -> None:
    """One process on one machine, no MPI (Pacemaker, pyace and ASE scripts parallelise themselves), our parser."""
    options = spec.inputs["metadata"]["options"]
    options["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    options["parser_name"].default = parser_name
    options["withmpi"].default = False
