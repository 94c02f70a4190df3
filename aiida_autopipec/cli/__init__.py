"""The ``autopipec`` command line: one module per command group, registered on import."""

from aiida_autopipec.cli import data, fields, launch, plot, repair, results  # noqa: F401 (registers the commands)
from aiida_autopipec.cli.main import autopipec

__all__ = ["autopipec"]
