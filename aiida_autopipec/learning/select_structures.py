"""Select candidates for labelling by ACE's extrapolation grade γ, on the compute side next to pacemaker.

``SelectionCalculation`` copies this file into its working folder and runs it with the Python of its code, which
needs numpy, pandas, ase and pyace (python-ace; aiida-autopipec need not be installed there)::

    python select_structures.py select_input.json

The input (JSON) names the files and the selection settings::

    {"potential": "potential.yaml", "training": "training.npz", "candidates": "candidates.npz",
     "max_new_structures": 5, "gamma_lower": 1.5, "gamma_upper": 10.0, "method": "max_gamma",
     "output": "selection.json"}

``training.npz`` holds the structures the potential was fitted on, as flat arrays (read with ``allow_pickle=False``):
``numbers`` (n_atoms,), ``positions`` (n_atoms, 3) Å, ``natoms`` (n_structures,), ``cells`` (n_structures, 3, 3) Å,
``pbc`` (n_structures, 3), ``energies`` (eV) and ``forces`` (eV/Å, n_atoms × 3); ``candidates.npz`` the geometry only.

Steps:

1. The training structures are written as Pacemaker's gzip-pickled DataFrame (``ase_atoms``, ``energy``,
   ``forces``) into this folder only, and ``pace_activeset -a`` (run as ``python -m pyace.cli.pace_activeset``
   with this interpreter; all atoms, no force-error filter) builds the active set ``potential.asi`` from the
   B-basis ``potential.yaml``. Its log goes to ``activeset.log``.
2. ``PyACECalculator(potential.yaml)`` with that active set gives the per-atom γ of every candidate; the grade of a
   candidate is its largest per-atom γ.
3. The trust window: only candidates with ``gamma_lower <= γ <= gamma_upper`` are eligible (below it a structure
   is not extrapolative enough to be worth labelling, above it treated as unphysical). Then, by ``method``:

   * ``max_gamma``: highest γ first, at most ``max_new_structures`` of them (ties by index);
   * ``d_optimal``: Pacemaker's ``pace_select`` (MaxVol, D-optimality with the active set as extra projections)
     on the eligible candidates, ``-m max_new_structures``: a diverse set rather than the most extreme ones. It
     may return fewer than asked (when fewer structures add to the active set); its log goes to ``select.log``.

Written last (its presence means the script finished): ``selection.json``, ``{"gammas": [...per candidate...],
"selected": [indices, γ descending], "skipped_above_upper": [indices], "below_lower": count, "method": ...}`` or,
when a step failed, ``{"error": "Type: message", "stage": "active_set" | "gamma" | "d_optimal"}``. A non-finite γ
is written as ``null`` and counts as above ``gamma_upper``.

Exit status: 0 finished (whether or not anything was selected), 1 a step failed, 4 bad input.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

STRUCTURE_ARRAYS = ("numbers", "positions", "natoms", "cells", "pbc")
LABEL_ARRAYS = ("energies", "forces")
METHODS = ("max_gamma", "d_optimal")
#: Written by this script in its folder; never retrieved.
DATAFRAME = "training_data.pckl.gzip"
ELIGIBLE_DATAFRAME = "eligible.pckl.gzip"
SELECTED_DATAFRAME = "selected.pkl.gz"
ACTIVESET_LOG = "activeset.log"
SELECT_LOG = "select.log"
#: Column of the eligible-candidate DataFrame that carries each structure's position in the candidate file.
INDEX_COLUMN = "candidate_index"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 4
#: Longest error message kept (characters).
MAX_MESSAGE = 4000


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def active_set_shortfall(atoms_per_element: dict, functions_per_element: dict) -> str | None:
    """Why no active set can be built, or None: ``pace_activeset`` needs, per element, at least as many atoms in
    the training structures as the potential has basis functions for that element (else the system is
    under-determined and it fails)."""
    short = {
        element: (int(atoms_per_element.get(element, 0)), int(functions))
        for element, functions in functions_per_element.items()
        if int(atoms_per_element.get(element, 0)) < int(functions)
    }
    if not short:
        return None
    details = ", ".join(
        f"{element}: {atoms} atoms < {functions} functions" for element, (atoms, functions) in short.items()
    )
    fewest = min(int(atoms_per_element.get(element, 0)) for element in functions_per_element)
    return (
        f"the active set for γ needs at least as many atoms of each element in the training structures as the "
        f"potential has basis functions for it ({details}); start from more structures, or fit with "
        f"number_of_functions_per_element <= {fewest}"
    )


def write_structures(path, numbers, positions, natoms, cells, pbc, energies=None, forces=None) -> None:
    """Write a structures file this script reads (used by the CalcJob; plain numpy arrays, no pickle)."""
    arrays = {
        "numbers": np.asarray(numbers, dtype=np.int64),
        "positions": np.asarray(positions, dtype=float),
        "natoms": np.asarray(natoms, dtype=np.int64),
        "cells": np.asarray(cells, dtype=float),
        "pbc": np.asarray(pbc, dtype=bool),
    }
    if energies is not None:
        arrays["energies"] = np.asarray(energies, dtype=float)
        arrays["forces"] = np.asarray(forces, dtype=float)
    np.savez(path, **arrays)


def read_structures(path) -> tuple[list, np.ndarray | None, list | None]:
    """The structures of a file as ``ase.Atoms``, with the energies and per-structure forces when present."""
    from ase import Atoms

    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    offsets = np.concatenate([[0], np.cumsum(arrays["natoms"])]).astype(int)
    slices = [slice(offsets[i], offsets[i + 1]) for i in range(len(arrays["natoms"]))]
    structures = [
        Atoms(
            numbers=arrays["numbers"][part],
            positions=arrays["positions"][part],
            cell=arrays["cells"][i],
            pbc=arrays["pbc"][i],
        )
        for i, part in enumerate(slices)
    ]
    if "energies" not in arrays:
        return structures, None, None
    return structures, arrays["energies"], [arrays["forces"][part] for part in slices]


def build_active_set(folder: Path, potential: str, structures: list, energies, forces) -> Path:
    """Write the training DataFrame here and run ``pace_activeset -a`` on it; the path of the ``.asi`` file."""
    import pandas as pd

    frame = pd.DataFrame({"ase_atoms": structures, "energy": list(energies), "forces": forces})
    frame.to_pickle(folder / DATAFRAME, compression="gzip")
    command = [sys.executable, "-m", "pyace.cli.pace_activeset", "-a", "-d", DATAFRAME, potential]
    with open(folder / ACTIVESET_LOG, "w") as log:
        result = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=False)
    asi = folder / (potential[: -len(".yaml")] + ".asi" if potential.endswith(".yaml") else potential + ".asi")
    if result.returncode != 0 or not asi.is_file():
        tail = "\n".join((folder / ACTIVESET_LOG).read_text(errors="replace").strip().splitlines()[-15:])
        raise RuntimeError(f"pace_activeset exited with {result.returncode} and wrote no {asi.name}:\n{tail}")
    return asi


def max_gammas(potential_path: Path, asi_path: Path, structures: list) -> list[float]:
    """Largest per-atom extrapolation grade γ of each structure."""
    from pyace import PyACECalculator

    calculator = PyACECalculator(str(potential_path))
    calculator.set_active_set(str(asi_path))
    gammas = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_potential_energy()
        per_atom = np.asarray(calculator.results["gamma"], dtype=float)
        if per_atom.shape != (len(atoms),):
            raise ValueError(f"γ has shape {per_atom.shape}, expected ({len(atoms)},)")
        gammas.append(float(per_atom.max()))
    return gammas


def select(gammas: list[float], max_new_structures: int, gamma_lower: float, gamma_upper: float) -> dict:
    """The ``max_gamma`` choice: within [gamma_lower, gamma_upper], highest γ first (ties by index)."""
    finite = [math.isfinite(gamma) for gamma in gammas]
    above = [i for i, gamma in enumerate(gammas) if not finite[i] or gamma > gamma_upper]
    below = [i for i, gamma in enumerate(gammas) if finite[i] and gamma < gamma_lower]
    window = [i for i, gamma in enumerate(gammas) if finite[i] and gamma_lower <= gamma <= gamma_upper]
    window.sort(key=lambda i: (-gammas[i], i))
    return {
        "gammas": [gamma if finite[i] else None for i, gamma in enumerate(gammas)],
        "selected": window[:max_new_structures],
        "skipped_above_upper": above,
        "below_lower": len(below),
    }


def d_optimal(folder: Path, potential: str, asi: Path, structures: list, eligible: list[int], count: int) -> list:
    """Indices (into ``structures``) that ``pace_select`` picks from the ``eligible`` ones, at most ``count``."""
    import pandas as pd

    frame = pd.DataFrame({"ase_atoms": [structures[i] for i in eligible], INDEX_COLUMN: eligible})
    frame.to_pickle(folder / ELIGIBLE_DATAFRAME, compression="gzip")
    command = [sys.executable, "-m", "pyace.cli.pace_select", "-p", potential, "-a", asi.name]
    command += ["-m", str(count), "-o", SELECTED_DATAFRAME, ELIGIBLE_DATAFRAME]
    with open(folder / SELECT_LOG, "w") as log:
        result = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0 or not (folder / SELECTED_DATAFRAME).is_file():
        tail = "\n".join((folder / SELECT_LOG).read_text(errors="replace").strip().splitlines()[-15:])
        raise RuntimeError(f"pace_select exited with {result.returncode} and wrote no {SELECTED_DATAFRAME}:\n{tail}")
    chosen = [int(index) for index in pd.read_pickle(folder / SELECTED_DATAFRAME)[INDEX_COLUMN]]
    return chosen[:count]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python select_structures.py select_input.json", file=sys.stderr)
        return EXIT_BAD_INPUT
    input_path = Path(argv[0])
    folder = input_path.parent
    settings = json.loads(input_path.read_text())
    output_path = folder / settings["output"]
    if settings.get("method", "max_gamma") not in METHODS:
        print(f"unknown method {settings['method']!r}; known: {list(METHODS)}", file=sys.stderr)
        return EXIT_BAD_INPUT

    stage = "active_set"
    try:
        training, energies, forces = read_structures(folder / settings["training"])
        if energies is None:
            raise ValueError("the training structures carry no energies and forces")
        asi = build_active_set(folder, settings["potential"], training, energies, forces)
        stage = "gamma"
        candidates, _, _ = read_structures(folder / settings["candidates"])
        gammas = max_gammas(folder / settings["potential"], asi, candidates)
    except Exception as exc:
        output_path.write_text(json.dumps({"error": _message(exc), "stage": stage}))
        print(f"selection failed ({stage}): {_message(exc)}", file=sys.stderr)
        return EXIT_FAILED

    method = settings.get("method", "max_gamma")
    selection = select(
        gammas, int(settings["max_new_structures"]), float(settings["gamma_lower"]), float(settings["gamma_upper"])
    )
    if method == "d_optimal" and selection["selected"]:
        eligible = select(gammas, len(gammas), float(settings["gamma_lower"]), float(settings["gamma_upper"]))
        try:
            count = int(settings["max_new_structures"])
            chosen = d_optimal(folder, settings["potential"], asi, candidates, eligible["selected"], count)
        except Exception as exc:
            output_path.write_text(json.dumps({"error": _message(exc), "stage": "d_optimal"}))
            print(f"selection failed (d_optimal): {_message(exc)}", file=sys.stderr)
            return EXIT_FAILED
        selection["selected"] = sorted(chosen, key=lambda i: (-gammas[i], i))
    selection["method"] = method
    output_path.write_text(json.dumps(selection))
    print(
        f"selected {len(selection['selected'])} of {len(candidates)} candidates; "
        f"{len(selection['skipped_above_upper'])} above gamma_upper, {selection['below_lower']} below gamma_lower"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
