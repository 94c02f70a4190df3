"""User mistakes become one ``Error:`` line; anything else (a bug) keeps its traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from aiida_autopipec.cli.errors import one_line, user_errors_as_one_line
from aiida_autopipec.config import TrainingConfig
from aiida_autopipec.learning.config_gen import ConfigError
from aiida_autopipec.learning.dataset import DatasetError
from aiida_autopipec.protocols import ProtocolError


def command_raising(exception: BaseException) -> click.Command:
    @click.command()
    def failing() -> None:
        with user_errors_as_one_line():
            raise exception

    return failing


@pytest.mark.parametrize(
    "exception",
    [DatasetError("structure 3: no forces"), ConfigError("bad key"), ProtocolError("unknown protocol 'quick'")],
)
def test_library_input_errors_are_one_error_line(exception):
    result = CliRunner().invoke(command_raising(exception))
    assert result.exit_code == 1
    assert result.output == f"Error: {exception}\n"


def test_pydantic_errors_name_every_refused_field():
    with pytest.raises(Exception) as info:
        TrainingConfig(maxiter=-1, kappa=2.0)
    result = CliRunner().invoke(command_raising(info.value))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "maxiter: Input should be greater than 0" in result.output and "kappa:" in result.output


def test_other_exceptions_keep_their_traceback():
    result = CliRunner().invoke(command_raising(KeyError("a bug")))
    assert isinstance(result.exception, KeyError)  # not turned into a user error


def test_one_line_joins_multi_line_messages():
    assert one_line(DatasetError("first\n  second")) == "first second"
