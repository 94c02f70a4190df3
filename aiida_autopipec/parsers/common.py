"""What the parsers share: the folder of files to parse, and reading the reports of the compute-side scripts."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiida.engine import ExitCode
from aiida.parsers import Parser

__all__ = ["files_to_parse", "read_script_report", "tail"]


@contextmanager
def files_to_parse(parser: Parser, retrieved_temporary_folder: str | None = None) -> Iterator[Path]:
    """A local folder with the ``retrieved`` files and those fetched only for parsing (``retrieve_temporary_list``:
    files whose content the parser stores as output nodes, so the raw copy is not kept)."""
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        parser.retrieved.base.repository.copy_tree(folder)
        if retrieved_temporary_folder is not None:
            for path in Path(retrieved_temporary_folder).iterdir():
                if path.is_file():
                    shutil.copy2(path, folder / path.name)
        yield folder


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def read_script_report(parser: Parser, folder: Path, filename: str, stderr: str) -> tuple[dict | None, ExitCode | None]:
    """The JSON object a script wrote last, or the exit code saying why there is none (walltime, no file, garbage)."""
    exit_codes = parser.exit_codes
    path = folder / filename
    if not path.is_file():
        if parser.node.exit_status == exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status:
            return None, exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
        text = (folder / stderr).read_text(errors="replace") if (folder / stderr).is_file() else ""
        return None, exit_codes.ERROR_OUTPUT_MISSING.format(
            filename=filename, stderr_tail=tail(text) or "(stderr empty)"
        )
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict):
            raise ValueError(f"expected a JSON object, got {type(report).__name__}")
    except ValueError as exc:
        return None, exit_codes.ERROR_OUTPUT_UNREADABLE.format(filename=filename, error=str(exc))
    return report, None
