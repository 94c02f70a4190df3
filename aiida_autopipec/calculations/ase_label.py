"""``AseLabelCalculation``: energies (eV) and forces (eV/Å) of structures from any ASE calculator, on any computer.

The code is a Python interpreter that has ASE and the calculator's package; it runs the standalone script
``aiida_autopipec/learning/label_structures.py`` (copied into the working folder) on the structures (written as
plain numpy arrays, no pickle). Structures that fail are reported and left out; the others become a labelled
``TrainingSetData``.
"""

from __future__ import annotations

import json
import keyword
import re
from pathlib import Path
from typing import Any

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_autopipec.calculations.common import serial_job_defaults
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning import label_structures

__all__ = ["AseLabelCalculation", "check_importable_here", "validate_calculator"]

#: Files in the working folder.
SCRIPT = "label_structures.py"
INPUT_JSON = "label_input.json"
STRUCTURES = "structures.npz"
OUTPUT = "labelled.npz"
REPORT = "failures.json"
STDOUT = "label.out"
STDERR = "label.err"

CALCULATOR_KEYS = {"import_path", "kwargs"}
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_PATH_PATTERN = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})+")


def validate_calculator(calculator: dict) -> str | None:
    """``{"import_path": "module.sub.ClassName", "kwargs": {...}}``: a dotted path of identifiers, JSON kwargs."""
    unknown = sorted(set(calculator) - CALCULATOR_KEYS)
    if unknown:
        return f"calculator: unknown key(s) {unknown}; known: {sorted(CALCULATOR_KEYS)}"
    import_path = calculator.get("import_path")
    if not isinstance(import_path, str):
        return "calculator.import_path: required, a string like 'ase.calculators.emt.EMT'"
    parts = import_path.split(".")
    if not IMPORT_PATH_PATTERN.fullmatch(import_path) or any(keyword.iskeyword(part) for part in parts):
        return (
            f"calculator.import_path: {import_path!r} is not of the form 'module.sub.ClassName' "
            "(dotted Python identifiers only)"
        )
    kwargs = calculator.get("kwargs", {})
    if not isinstance(kwargs, dict):
        return f"calculator.kwargs: expected a dict of keyword arguments, got {type(kwargs).__name__}"
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"calculator.kwargs: not JSON-serialisable: {exc}"
    return None


def check_importable_here(import_path: str, code: Any) -> str | None:
    """If ``code`` runs this very Python on this machine and the package is importable here, the calculator class
    must be importable too: a typo is then reported before anything runs. Elsewhere (another Python, a remote
    computer, a package only the job's environment provides) it can only be checked by the job (exit code 310)."""
    import importlib
    import importlib.util
    import sys

    computer = getattr(code, "computer", None)
    executable = getattr(code, "filepath_executable", None)
    if computer is None or computer.transport_type != "core.local" or str(executable) != sys.executable:
        return None
    if importlib.util.find_spec(import_path.split(".")[0]) is None:
        return None
    try:
        label_structures.load_calculator_class(import_path)
    except ImportError as exc:
        return f"calculator.import_path: {import_path!r} cannot be imported by the code's Python: {exc}"
    return None


def validate_inputs(inputs: dict, _: Any) -> str | None:
    """Reject a bad calculator description or an empty structure set before anything is submitted."""
    structures = inputs.get("structures")
    if isinstance(structures, TrainingSetData) and not structures.base.attributes.get("num_structures", 0):
        return "structures: the set is empty; give at least one structure"
    calculator = inputs.get("calculator")
    if calculator is not None:
        return validate_calculator(calculator.get_dict())
    return None


class AseLabelCalculation(CalcJob):
    """Label structures with an ASE calculator (energies in eV, forces in eV/Å) on the compute resource."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            "structures",
            valid_type=TrainingSetData,
            help="Structures to label; labels they may carry are ignored.",
        )
        spec.input(
            "calculator",
            valid_type=orm.Dict,
            help="`import_path` of an ASE calculator class ('ase.calculators.emt.EMT'), importable by the code's "
            "Python, and `kwargs` (JSON) to create it with.",
        )
        spec.inputs.validator = validate_inputs
        serial_job_defaults(spec, "autopipec.ase_label")

        spec.output(
            "labelled",
            valid_type=TrainingSetData,
            required=False,
            help="The structures that were labelled, in their original order, with energies (eV) and forces (eV/Å).",
        )
        spec.output(
            "indices",
            valid_type=orm.List,
            required=False,
            help="Position in `structures` of each structure of `labelled`.",
        )
        spec.output(
            "failures",
            valid_type=orm.Dict,
            required=False,
            help="`failures`: list of {`index`, `error`} for the structures that could not be labelled (left out).",
        )

        spec.exit_code(300, "ERROR_OUTPUT_MISSING", message="the labelling script wrote no {filename}: {stderr_tail}")
        spec.exit_code(301, "ERROR_OUTPUT_UNREADABLE", message="{filename} cannot be read: {error}")
        spec.exit_code(
            310,
            "ERROR_CALCULATOR_IMPORT",
            message="the calculator {import_path} cannot be imported by the code's Python: {error}",
        )
        spec.exit_code(311, "ERROR_CALCULATOR_SETUP", message="the calculator {import_path} cannot be created: {error}")
        spec.exit_code(
            320,
            "ERROR_ALL_STRUCTURES_FAILED",
            message="none of the {num_structures} structures could be labelled; first error: {first_error}",
        )

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        """Write the geometry (numpy arrays, no labels), label_input.json and the standalone script."""
        arrays = self.inputs.structures.get_arrays()
        work = Path(folder.abspath)
        label_structures.write_structures(
            work / STRUCTURES, arrays.numbers, arrays.positions, arrays.natoms, arrays.cells, arrays.pbc
        )
        calculator = self.inputs.calculator.get_dict()
        settings = {
            "structures": STRUCTURES,
            "calculator": {"import_path": calculator["import_path"], "kwargs": calculator.get("kwargs", {})},
            "output": OUTPUT,
            "report": REPORT,
        }
        (work / INPUT_JSON).write_text(json.dumps(settings, indent=2))
        (work / SCRIPT).write_text(Path(label_structures.__file__).read_text())

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [SCRIPT, INPUT_JSON]
        codeinfo.stdout_name = STDOUT
        codeinfo.stderr_name = STDERR

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [REPORT, STDOUT, STDERR]
        # The labels become the output TrainingSetData: fetched for parsing only, so they are not stored twice.
        calcinfo.retrieve_temporary_list = [OUTPUT]
        # The geometry duplicates the stored input TrainingSetData.
        calcinfo.provenance_exclude_list = [STRUCTURES]
        return calcinfo
