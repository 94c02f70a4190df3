"""User mistakes as one ``Error:`` line, never a traceback.

The library raises its own exception types for bad input (a dataset it cannot use, settings Pacemaker would reject,
an unknown protocol or override, a refused pydantic field); the commands turn exactly these into a
``click.ClickException``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the input is wrong" (imported when needed: the CLI starts without AiiDA)."""
    from pydantic import ValidationError

    from aiida_autopipec.learning.config_gen import ConfigError
    from aiida_autopipec.learning.dataset import DatasetError
    from aiida_autopipec.protocols import ProtocolError

    return DatasetError, ConfigError, ProtocolError, ValidationError


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (pydantic errors: every refused field and why)."""
    from pydantic import ValidationError

    from aiida_autopipec.config import describe_validation_error

    text = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
    return " ".join(text.split())


@contextmanager
def user_errors_as_one_line() -> Iterator[None]:
    """Re-raise the library's bad-input exceptions as ``click.ClickException`` (one ``Error:`` line, exit 1)."""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        if isinstance(exc, user_error_types()):
            raise click.ClickException(one_line(exc)) from exc
        raise
