"""The ``autopipec`` command line."""

from aiida_autopipec.cli.main import autopipec

__all__ = ["autopipec"]
