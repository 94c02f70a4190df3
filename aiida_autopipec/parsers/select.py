"""``SelectionParser``: the candidates a ``SelectionCalculation`` chose, their γ and the selection statistics.

``selection.json``, written last by ``select_structures.py``, decides: a failed step (active set or γ), or the γ
of every candidate and the chosen indices. The chosen structures are taken from the stored input candidates by
index, so what is stored is exactly what was sent; candidates listed in the ``exclude`` input were not sent, and
indices and γ are mapped back to positions in the whole candidate set. γ and the statistics are outputs also when
nothing could be chosen (every candidate below ``gamma_lower``, above ``gamma_upper``, or some of each).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_autopipec.calculations.select import DEFAULTS, OUTPUT, STDERR, available_candidates
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.parsers.common import read_script_report, tail

__all__ = ["SelectionParser"]


def _check(report: dict, num_candidates: int, max_new: int, lower: float, upper: float) -> np.ndarray:
    """The γ array (non-finite as inf) after checking the report against the inputs; ValueError if inconsistent."""
    raw = report["gammas"]
    if not isinstance(raw, list) or len(raw) != num_candidates:
        raise ValueError(f"expected {num_candidates} γ values, got {raw!r:.200}")
    if not all(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)) for value in raw):
        raise ValueError("γ values must be numbers or null")
    gammas = np.array([math.inf if value is None else float(value) for value in raw], dtype=float)
    gammas[~np.isfinite(gammas)] = math.inf
    selected, above, below = report["selected"], report["skipped_above_upper"], report["below_lower"]
    for name, indices in (("selected", selected), ("skipped_above_upper", above)):
        if not isinstance(indices, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_candidates for i in indices
        ):
            raise ValueError(f"{name}: expected indices of the {num_candidates} candidates, got {indices!r:.200}")
        if len(set(indices)) != len(indices):
            raise ValueError(f"{name}: an index appears more than once")
    if len(selected) > max_new:
        raise ValueError(f"{len(selected)} structures selected, at most {max_new} were asked for")
    if any(not lower <= gammas[i] <= upper for i in selected):
        raise ValueError("a selected candidate has γ outside [gamma_lower, gamma_upper]")
    if sorted(above) != [i for i in range(num_candidates) if gammas[i] > upper]:
        raise ValueError("skipped_above_upper does not match the γ values")
    if below != int(np.sum(gammas < lower)):
        raise ValueError("below_lower does not match the γ values")
    return gammas


class SelectionParser(Parser):
    """Turn the retrieved files of a :class:`SelectionCalculation` into outputs."""

    def parse(self, **kwargs) -> ExitCode | None:
        with self.retrieved.base.repository.as_path() as folder:
            return self._parse_folder(Path(folder))

    def _parse_folder(self, folder: Path) -> ExitCode | None:
        exit_codes = self.exit_codes
        candidates = self.node.inputs.candidates
        parameters = {**DEFAULTS, **self.node.inputs.parameters.get_dict()}
        lower, upper = float(parameters["gamma_lower"]), float(parameters["gamma_upper"])
        exclude = self.node.inputs.exclude.get_list() if "exclude" in self.node.inputs else []
        available = available_candidates(candidates.num_structures, exclude)  # the script saw only these
        num_candidates = len(available)

        report, failure = read_script_report(self, folder, OUTPUT, STDERR)
        if failure is not None:
            return failure
        if "error" in report:
            return exit_codes.ERROR_SELECTION_FAILED.format(
                stage=report.get("stage", "unknown"), error=tail(str(report["error"]))
            )
        try:
            gammas = _check(report, num_candidates, int(parameters["max_new_structures"]), lower, upper)
        except (KeyError, TypeError, ValueError) as exc:
            return exit_codes.ERROR_OUTPUT_UNREADABLE.format(filename=OUTPUT, error=str(exc))

        selected = report["selected"]
        order = sorted(selected, key=lambda i: (-gammas[i], i))
        if selected != order:
            self.logger.warning(f"the selection {selected} was not ordered by γ; stored as {order}")
        finite = gammas[np.isfinite(gammas)]
        counts = {
            "num_candidates": num_candidates,
            "num_selected": len(order),
            "num_above_upper": len(report["skipped_above_upper"]),
            "num_below_lower": int(report["below_lower"]),
            "num_in_window": int(np.sum((gammas >= lower) & (gammas <= upper))),
        }
        statistics = {
            "max_gamma": float(finite.max()) if finite.size else None,
            "mean_gamma": float(finite.mean()) if finite.size else None,
            "median_gamma": float(np.median(finite)) if finite.size else None,
            **counts,
            "gamma_lower": lower,
            "gamma_upper": upper,
            "method": parameters["method"],
        }
        all_gammas = np.full(candidates.num_structures, np.nan)
        all_gammas[available] = gammas
        gamma_array = orm.ArrayData()
        gamma_array.set_array("gammas", all_gammas)
        self.out("gammas", gamma_array)
        self.out("statistics", orm.Dict(statistics))

        if not order:
            if counts["num_in_window"] and parameters["method"] == "d_optimal":
                return exit_codes.ERROR_NOTHING_D_OPTIMAL.format(num_in_window=counts["num_in_window"])
            if counts["num_below_lower"] == num_candidates:
                return exit_codes.ERROR_NO_EXTRAPOLATIVE_CANDIDATE.format(
                    num_candidates=num_candidates, gamma_lower=lower, max_gamma=float(gammas.max())
                )
            if counts["num_above_upper"] == num_candidates:
                return exit_codes.ERROR_ALL_CANDIDATES_ABOVE_UPPER.format(
                    num_candidates=num_candidates, gamma_upper=upper, min_gamma=float(gammas.min())
                )
            return exit_codes.ERROR_NO_CANDIDATE_IN_WINDOW.format(
                gamma_lower=lower,
                gamma_upper=upper,
                num_below_lower=counts["num_below_lower"],
                num_above_upper=counts["num_above_upper"],
            )
        indices = [available[i] for i in order]  # positions in the whole candidate set
        chosen = candidates.get_arrays().take(indices)
        self.out("selected", TrainingSetData(arrays=chosen.without_labels() if chosen.labelled else chosen))
        self.out("selected_indices", orm.List(indices))
        return None
