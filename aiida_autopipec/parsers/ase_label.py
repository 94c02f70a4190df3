"""``AseLabelParser``: the labelled structures of an ``AseLabelCalculation``, and those that could not be labelled.

The report written last by ``label_structures.py`` decides: an import or setup error of the calculator, a list of
per-structure failures (exit 0 while at least one structure succeeded; the failures are an output and a warning),
or nothing at all (the script did not finish). The labels are attached to the geometry of the input structures, so
what is stored is exactly what was sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_autopipec.calculations.ase_label import OUTPUT, REPORT, STDERR
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.dataset import DatasetError
from aiida_autopipec.parsers.common import files_to_parse, read_script_report

__all__ = ["AseLabelParser"]


class AseLabelParser(Parser):
    """Turn the retrieved files of an :class:`AseLabelCalculation` into outputs."""

    def parse(self, **kwargs) -> ExitCode | None:
        with files_to_parse(self, kwargs.get("retrieved_temporary_folder")) as folder:
            return self._parse_folder(folder)

    def _parse_folder(self, folder: Path) -> ExitCode | None:
        exit_codes = self.exit_codes
        import_path = self.node.inputs.calculator.get_dict().get("import_path")
        structures = self.node.inputs.structures
        num_structures = structures.num_structures

        report, failure = read_script_report(self, folder, REPORT, STDERR)
        if failure is not None:
            return failure
        if "import_error" in report:
            return exit_codes.ERROR_CALCULATOR_IMPORT.format(import_path=import_path, error=report["import_error"])
        if "setup_error" in report:
            return exit_codes.ERROR_CALCULATOR_SETUP.format(import_path=import_path, error=report["setup_error"])

        try:
            failures = self._failures(report, num_structures)
        except (KeyError, TypeError, ValueError) as exc:
            return exit_codes.ERROR_OUTPUT_UNREADABLE.format(filename=REPORT, error=str(exc))
        self.out("failures", orm.Dict({"failures": failures}))
        if len(failures) == num_structures:
            return exit_codes.ERROR_ALL_STRUCTURES_FAILED.format(
                num_structures=num_structures, first_error=failures[0]["error"]
            )

        failed = {failure["index"] for failure in failures}
        expected = [index for index in range(num_structures) if index not in failed]
        try:
            labelled = self._labelled(folder / OUTPUT, structures, expected)
        except (OSError, KeyError, ValueError) as exc:  # DatasetError is a ValueError
            return exit_codes.ERROR_OUTPUT_UNREADABLE.format(filename=OUTPUT, error=str(exc))
        self.out("labelled", labelled)
        self.out("indices", orm.List(expected))
        if failures:
            shown = "; ".join(f"{f['index']}: {f['error']}" for f in failures[:3])
            more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
            self.logger.warning(
                f"{len(failures)} of {num_structures} structures could not be labelled and are left out "
                f"(indices {sorted(failed)}): {shown}{more}"
            )
        return None

    @staticmethod
    def _failures(report: dict, num_structures: int) -> list[dict]:
        if report["num_structures"] != num_structures:
            raise ValueError(f"reports {report['num_structures']} structures, {num_structures} were sent")
        failures = []
        for failure in report["failures"]:
            index, error = failure["index"], failure["error"]
            if not isinstance(index, int) or not 0 <= index < num_structures or not isinstance(error, str):
                raise ValueError(f"invalid failure entry {failure!r}")
            failures.append({"index": index, "error": error})
        if len({failure["index"] for failure in failures}) != len(failures):
            raise ValueError("a structure is reported as failed more than once")
        return sorted(failures, key=lambda failure: failure["index"])

    @staticmethod
    def _labelled(path: Path, structures: TrainingSetData, expected: list[int]) -> TrainingSetData:
        """The input structures at ``expected`` with the energies and forces of ``path``."""
        if not path.is_file():
            raise ValueError("the file is missing although some structures were labelled")
        with np.load(path, allow_pickle=False) as data:
            indices, energies, forces = data["indices"], data["energies"], data["forces"]
        if indices.tolist() != expected:
            raise ValueError(f"labels for structures {indices.tolist()}, expected {expected}")
        arrays = structures.get_arrays().take(expected)
        if energies.shape != (len(expected),) or forces.shape != (arrays.num_atoms, 3):
            raise DatasetError(
                f"energies {energies.shape} and forces {forces.shape}, expected ({len(expected)},) and "
                f"({arrays.num_atoms}, 3)"
            )
        return TrainingSetData(arrays=arrays.with_labels(energies, forces))
