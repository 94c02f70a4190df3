"""Evaluate the delivered model where it was fitted: honest errors and dimer curves.

Pacemaker reports errors of the model *before* its core repulsion is applied. This script evaluates the ``.yace``
as delivered (ACE + repulsion, plus the ZBL baseline in delta mode) on Pacemaker's own train/test split, and
computes the energy of every element pair as a dimer from 0.3 Å to the cutoff.

It runs on the compute side, next to ``pacemaker``, and needs only numpy, pandas, ase, pyace and a copy of
``zbl.py`` in the same folder (the CalcJob puts both there), so aiida-autopipec need not be installed there::

    python evaluate_model.py evaluation_input.json

If the ``.yace`` does not exist yet, it is first made from Pacemaker's ``.yaml`` (``convert`` in the input), so the
job needs no separate ``pace_yaml2yace`` interpreter start.

The input names the potential, Pacemaker's split datasets, the elements, the cutoff, the ZBL baseline (delta mode)
and the output file, and optionally ``subsets``: named rows of a written dataset (``{"dataset": file, "indices":
[...]}``) whose errors are reported separately under ``subsets`` (e.g. the original data of active learning).

Units: energies eV (errors eV/atom), forces eV/Å (errors per component), distances Å.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

try:
    from aiida_autopipec.learning.zbl import zbl_switched_derivative, zbl_switched_energy
except ImportError:  # run as a standalone script next to a copy of zbl.py
    from zbl import zbl_switched_derivative, zbl_switched_energy  # type: ignore[no-redef]

DIMER_MIN_DISTANCE = 0.3  # Å
DIMER_STEP = 0.01  # Å


def _pair_key(first: str, second: str) -> str:
    return "-".join(sorted((first, second)))


def baseline_pair_energy(baseline: dict | None, first: str, second: str, r: np.ndarray) -> tuple[np.ndarray, ...]:
    """ZBL baseline energy (eV) and dE/dr (eV/Å) of one pair at distances ``r``; zero without a baseline."""
    if not baseline:
        return np.zeros_like(r), np.zeros_like(r)
    from ase.data import atomic_numbers

    inner, outer = baseline["pair_cutoffs"][_pair_key(first, second)]
    z1, z2 = atomic_numbers[first], atomic_numbers[second]
    return zbl_switched_energy(r, z1, z2, inner, outer), zbl_switched_derivative(r, z1, z2, inner, outer)


def errors(calculator, frame) -> dict[str, float] | None:
    """RMSE/MAE/max of energy per atom (eV/atom) and force components (eV/Å) of ``calculator`` on ``frame``.

    ``frame`` holds what was fitted: ``energy_corrected`` and ``forces`` (residuals of the baseline in delta mode),
    and the ``.yace`` has ``E0 = 0`` here, so these are the errors of the total model.
    """
    if frame is None or len(frame) == 0:
        return None
    energy_errors, force_errors = [], []
    for atoms, energy, forces in zip(frame["ase_atoms"], frame["energy_corrected"], frame["forces"], strict=True):
        atoms = atoms.copy()
        atoms.calc = calculator
        energy_errors.append((atoms.get_potential_energy() - energy) / len(atoms))
        force_errors.append((atoms.get_forces() - np.asarray(forces)).ravel())
    energy_errors = np.abs(np.asarray(energy_errors))
    force_errors = np.abs(np.concatenate(force_errors))
    return {
        "rmse_energy": float(np.sqrt(np.mean(energy_errors**2))),
        "mae_energy": float(np.mean(energy_errors)),
        "max_energy": float(np.max(energy_errors)),
        "rmse_forces": float(np.sqrt(np.mean(force_errors**2))),
        "mae_forces": float(np.mean(force_errors)),
        "max_forces": float(np.max(force_errors)),
    }


def dimer_curves(calculator, elements: list[str], cutoff: float, baseline: dict | None) -> dict[str, dict[str, Any]]:
    """Energy (relative to separated atoms, eV) and force on the second atom along the bond (eV/Å, > 0 repulsive).

    All distances of a pair are evaluated in one call: the dimers sit side by side, farther apart than the cutoff,
    and each one's energy is the sum of its two atomic energies (~20x faster than one call per distance).
    """
    from ase import Atoms

    distances = np.arange(DIMER_MIN_DISTANCE, cutoff + 1e-9, DIMER_STEP)
    count, spacing = len(distances), float(distances.max()) + cutoff + 1.0  # neighbouring dimers never interact
    positions = np.zeros((2 * count + 2, 3))
    positions[0 : 2 * count : 2, 0] = np.arange(count) * spacing
    positions[1 : 2 * count : 2, 0] = np.arange(count) * spacing + distances
    positions[2 * count :, 0] = [count * spacing, count * spacing + cutoff + 5.0]  # the separated pair
    curves = {}
    for i, first in enumerate(elements):
        for second in elements[i:]:
            dimers = Atoms([first, second] * (count + 1), positions=positions, pbc=False)
            dimers.calc = calculator
            atomic = dimers.get_potential_energies()
            forces = dimers.get_forces()
            separated = atomic[2 * count] + atomic[2 * count + 1]
            energies = atomic[0 : 2 * count : 2] + atomic[1 : 2 * count : 2] - separated
            baseline_energy, baseline_derivative = baseline_pair_energy(baseline, first, second, distances)
            curves[_pair_key(first, second)] = {
                "r": distances.tolist(),
                "energy": (energies + baseline_energy).tolist(),
                "force": (forces[1 : 2 * count : 2, 0] - baseline_derivative).tolist(),
            }
    return curves


def evaluate(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Errors on Pacemaker's train/test split and dimer curves of the delivered model."""
    from pyace import PyACECalculator

    calculator = PyACECalculator(str(folder / settings["potential"]))
    frames = {}
    for split in ("train", "test"):
        path = folder / settings["datasets"][split]
        frames[split] = read_frame(path) if path.is_file() else None
    results = {
        "evaluator": "pyace.PyACECalculator on the delivered .yace"
        + (" + ZBL baseline" if settings["baseline"] else ""),
        "train": errors(calculator, frames["train"]),
        "test": errors(calculator, frames["test"]),
        "dimers": dimer_curves(calculator, settings["elements"], settings["cutoff"], settings["baseline"]),
    }
    if settings.get("subsets"):
        results["subsets"] = subset_errors(calculator, folder, settings["subsets"])
    return results


def read_frame(path: Path):
    """A DataFrame pickle written in this job, gzip-compressed (Pacemaker's ``*.pckl.gzip``) or not."""
    import pandas as pd

    with path.open("rb") as handle:
        compression = "gzip" if handle.read(2) == b"\x1f\x8b" else None
    return pd.read_pickle(path, compression=compression)


def subset_errors(calculator, folder: Path, subsets: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Errors on named rows of a dataset written for the fit (e.g. the original data of an active-learning run).

    Read from the dataset as written (order kept), not from Pacemaker's processed copy, which may reorder rows.
    """

    loaded: dict[str, Any] = {}
    results = {}
    for name, subset in subsets.items():
        if subset["dataset"] not in loaded:
            loaded[subset["dataset"]] = read_frame(folder / subset["dataset"])
        results[name] = errors(calculator, loaded[subset["dataset"]].iloc[list(subset["indices"])])
    return results


def convert(folder: Path, settings: dict[str, Any]) -> bool:
    """Make the ``.yace`` from Pacemaker's B-basis ``.yaml`` with pyace, as ``pace_yaml2yace`` does, in this process.

    Messages (and a failure's traceback) go to ``settings["convert"]["log"]``, where the parser looks for them.
    """
    yaml_path, yace_path = folder / settings["convert"]["yaml"], folder / settings["potential"]
    log = folder / settings["convert"]["log"]
    try:
        from pyace import ACEBBasisSet

        ACEBBasisSet(str(yaml_path)).to_ACECTildeBasisSet().save_yaml(str(yace_path))
    except Exception:  # anything pyace raises ends the job's evaluation; the parser reports the log
        log.write_text(f"converting {yaml_path.name} to {yace_path.name} failed:\n{traceback.format_exc()}")
        yace_path.unlink(missing_ok=True)  # no half-written potential
        return False
    log.write_text(f"converted {yaml_path.name} to {yace_path.name} (pyace ACEBBasisSet.to_ACECTildeBasisSet)\n")
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python evaluate_model.py evaluation_input.json", file=sys.stderr)
        return 2
    input_path = Path(argv[0])
    settings = json.loads(input_path.read_text())
    needs_yace = settings.get("convert") and not (input_path.parent / settings["potential"]).is_file()
    if needs_yace and not convert(input_path.parent, settings):
        return 1
    results = evaluate(input_path.parent, settings)
    (input_path.parent / settings["output"]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
