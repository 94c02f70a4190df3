"""``SelectionCalculation``: the active-learning step, candidates chosen for labelling by ACE's extrapolation grade γ.

The code is a Python interpreter that has pyace (python-ace), pandas and ASE; it runs the standalone script
``aiida_autopipec/learning/select_structures.py`` (copied into the working folder). The script builds the active
set of the potential from the structures it was fitted on (``pace_activeset``), computes the largest per-atom γ of
every candidate and picks among those inside the trust window ``[gamma_lower, gamma_upper]``: highest γ first
(``max_gamma``) or a D-optimal subset chosen by Pacemaker's ``pace_select`` (``d_optimal``).
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_autopipec.calculations.common import serial_job_defaults
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning import select_structures
from aiida_autopipec.learning.potential import potential_info

__all__ = [
    "DEFAULTS",
    "SelectionCalculation",
    "available_candidates",
    "validate_exclude",
    "validate_parameters",
]

#: Files in the working folder.
SCRIPT = "select_structures.py"
INPUT_JSON = "select_input.json"
POTENTIAL = "potential.yaml"
TRAINING = "training.npz"
CANDIDATES = "candidates.npz"
OUTPUT = "selection.json"
STDOUT = "select.out"
STDERR = "select.err"

DEFAULTS = {"gamma_lower": 1.5, "gamma_upper": 10.0, "method": "max_gamma"}
PARAMETER_KEYS = {"max_new_structures", *DEFAULTS}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_parameters(parameters: dict) -> str | None:
    """``max_new_structures`` (int > 0), ``gamma_lower`` / ``gamma_upper`` (0 < lower < upper), ``method``."""
    unknown = sorted(set(parameters) - PARAMETER_KEYS)
    if unknown:
        return f"parameters: unknown key(s) {unknown}; known: {sorted(PARAMETER_KEYS)}"
    max_new = parameters.get("max_new_structures")
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new <= 0:
        return f"parameters.max_new_structures: required, an integer > 0, got {max_new!r}"
    lower = parameters.get("gamma_lower", DEFAULTS["gamma_lower"])
    upper = parameters.get("gamma_upper", DEFAULTS["gamma_upper"])
    if not _is_number(lower) or not _is_number(upper) or not 0 < lower < upper:
        return f"parameters: need 0 < gamma_lower < gamma_upper (finite numbers), got {lower!r} and {upper!r}"
    method = parameters.get("method", DEFAULTS["method"])
    if method not in select_structures.METHODS:
        return f"parameters.method: {method!r} is not one of {list(select_structures.METHODS)}"
    return None


def validate_inputs(inputs: dict, _: Any) -> str | None:
    """Reject bad parameters, an empty or foreign-element candidate set, or an unlabelled training set."""
    potential = inputs.get("potential")
    elements = set(potential.elements or []) if isinstance(potential, PotentialData) else None
    candidates = inputs.get("candidates")
    if isinstance(candidates, TrainingSetData):
        if not candidates.base.attributes.get("num_structures", 0):
            return "candidates: the set is empty; give at least one structure"
        if elements is not None and not set(candidates.elements) <= elements:
            foreign = sorted(set(candidates.elements) - elements)
            return f"candidates: element(s) {foreign} are not in the potential's elements {sorted(elements)}"
    training_set = inputs.get("training_set")
    if isinstance(training_set, TrainingSetData):
        if not training_set.labelled:
            return "training_set: must be the labelled set the potential was fitted on (it has no forces)"
        if not training_set.base.attributes.get("num_structures", 0):
            return "training_set: the set is empty"
        if elements is not None and not set(training_set.elements) <= elements:
            foreign = sorted(set(training_set.elements) - elements)
            return f"training_set: element(s) {foreign} are not in the potential's elements {sorted(elements)}"
        if isinstance(potential, PotentialData):
            functions = potential_info(potential.get_yaml())["functions_per_element"]
            atoms = training_set.get_arrays().atoms_per_element()
            problem = select_structures.active_set_shortfall(atoms, functions)
            if problem:
                return f"training_set: {problem}"
    exclude = inputs.get("exclude")
    if isinstance(exclude, orm.List) and isinstance(candidates, TrainingSetData):
        problem = validate_exclude(exclude.get_list(), candidates.num_structures)
        if problem:
            return problem
    parameters = inputs.get("parameters")
    if parameters is not None:
        return validate_parameters(parameters.get_dict())
    return None


def validate_exclude(exclude: list, num_candidates: int) -> str | None:
    """Distinct indices of candidates, at least one candidate left over."""
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_candidates for i in exclude):
        last = num_candidates - 1
        return f"exclude: expected indices of the {num_candidates} candidates (0 to {last}), got {exclude!r:.200}"
    if len(set(exclude)) != len(exclude):
        return "exclude: an index appears more than once"
    if len(exclude) == num_candidates:
        return f"exclude: all {num_candidates} candidates are excluded; nothing is left to select from"
    return None


def available_candidates(num_candidates: int, exclude: list[int]) -> list[int]:
    """Indices of the candidates that are not excluded, in order: position ``k`` sent to the script is this[k]."""
    excluded = set(exclude)
    return [index for index in range(num_candidates) if index not in excluded]


class SelectionCalculation(CalcJob):
    """Select candidates to label by the extrapolation grade γ of an ACE potential, within a trust window."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            "potential",
            valid_type=PotentialData,
            help="The fitted potential; its B-basis .yaml gives γ.",
        )
        spec.input(
            "training_set",
            valid_type=TrainingSetData,
            help="The labelled structures the potential was fitted on: the active set is built from them.",
        )
        spec.input(
            "candidates",
            valid_type=TrainingSetData,
            help="Structures to choose from; labels they may carry are ignored.",
        )
        spec.input(
            "exclude",
            valid_type=orm.List,
            required=False,
            help="Indices of `candidates` not to consider (those labelled in earlier iterations). A loop keeps one "
            "stored pool and lists what it used, instead of storing what is left of the pool every iteration.",
        )
        spec.input(
            "parameters",
            valid_type=orm.Dict,
            help="`max_new_structures` (int > 0, required); `gamma_lower` (default 1.5: below it a candidate is not "
            "extrapolative enough to be worth labelling); `gamma_upper` (default 10.0: above it a candidate is "
            "treated as unphysical and skipped); `method`: 'max_gamma' (default, highest γ in the window first) or "
            "'d_optimal' (Pacemaker's pace_select on the candidates in the window: a diverse, D-optimal set; it may "
            "pick fewer than `max_new_structures`).",
        )
        spec.inputs.validator = validate_inputs
        serial_job_defaults(spec, "autopipec.select")

        spec.output(
            "selected",
            valid_type=TrainingSetData,
            required=False,
            help="The chosen candidates (unlabelled), highest γ first.",
        )
        spec.output(
            "selected_indices",
            valid_type=orm.List,
            required=False,
            help="Position in `candidates` of each structure of `selected` (counting excluded candidates too).",
        )
        spec.output(
            "gammas",
            valid_type=orm.ArrayData,
            required=False,
            help="`gammas`: the largest per-atom γ of every candidate, in the order of `candidates` (inf: not finite; "
            "NaN: excluded, not evaluated).",
        )
        spec.output(
            "statistics",
            valid_type=orm.Dict,
            required=False,
            help="`max_gamma`, `mean_gamma`, `median_gamma` (of the finite γ), `num_candidates`, `num_selected`, "
            "`num_above_upper`, `num_below_lower`, `num_in_window`, `gamma_lower`, `gamma_upper`.",
        )

        spec.exit_code(300, "ERROR_OUTPUT_MISSING", message="the selection script wrote no {filename}: {stderr_tail}")
        spec.exit_code(301, "ERROR_OUTPUT_UNREADABLE", message="{filename} cannot be read: {error}")
        spec.exit_code(310, "ERROR_SELECTION_FAILED", message="the selection script failed ({stage}): {error}")
        spec.exit_code(
            320,
            "ERROR_NO_EXTRAPOLATIVE_CANDIDATE",
            message="no candidate is extrapolative: all {num_candidates} have γ < gamma_lower={gamma_lower} "
            "(largest γ {max_gamma:.3g})",
        )
        spec.exit_code(
            321,
            "ERROR_ALL_CANDIDATES_ABOVE_UPPER",
            message="every candidate is beyond the trust window: all {num_candidates} have γ > "
            "gamma_upper={gamma_upper} (smallest γ {min_gamma:.3g})",
        )
        spec.exit_code(
            322,
            "ERROR_NO_CANDIDATE_IN_WINDOW",
            message="no candidate has gamma_lower={gamma_lower} <= γ <= gamma_upper={gamma_upper}: "
            "{num_below_lower} below, {num_above_upper} above",
        )
        spec.exit_code(
            323,
            "ERROR_NOTHING_D_OPTIMAL",
            message="pace_select chose none of the {num_in_window} candidates in the trust window: none extends the "
            "active set",
        )

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        """Write the B-basis, the training structures (with labels), the candidates (geometry), input and script."""
        work = Path(folder.abspath)
        (work / POTENTIAL).write_text(self.inputs.potential.get_yaml())
        training = self.inputs.training_set.get_arrays()
        select_structures.write_structures(
            work / TRAINING,
            training.numbers,
            training.positions,
            training.natoms,
            training.cells,
            training.pbc,
            training.energies,
            training.forces,
        )
        candidates = self.inputs.candidates.get_arrays()
        if "exclude" in self.inputs:
            candidates = candidates.take(
                available_candidates(candidates.num_structures, self.inputs.exclude.get_list())
            )
        select_structures.write_structures(
            work / CANDIDATES,
            candidates.numbers,
            candidates.positions,
            candidates.natoms,
            candidates.cells,
            candidates.pbc,
        )
        parameters = {**DEFAULTS, **self.inputs.parameters.get_dict()}
        settings = {
            "potential": POTENTIAL,
            "training": TRAINING,
            "candidates": CANDIDATES,
            "max_new_structures": parameters["max_new_structures"],
            "gamma_lower": parameters["gamma_lower"],
            "gamma_upper": parameters["gamma_upper"],
            "method": parameters["method"],
            "output": OUTPUT,
        }
        (work / INPUT_JSON).write_text(json.dumps(settings, indent=2))
        (work / SCRIPT).write_text(Path(select_structures.__file__).read_text())

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [SCRIPT, INPUT_JSON]
        codeinfo.stdout_name = STDOUT
        codeinfo.stderr_name = STDERR

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [OUTPUT, STDOUT, STDERR, select_structures.ACTIVESET_LOG, select_structures.SELECT_LOG]
        # These duplicate the stored inputs (potential, training set, candidates).
        calcinfo.provenance_exclude_list = [POTENTIAL, TRAINING, CANDIDATES]
        return calcinfo
