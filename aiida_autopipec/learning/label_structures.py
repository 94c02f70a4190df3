"""Label structures with any ASE calculator, on the compute side: energies (eV) and forces (eV/Å).

``AseLabelCalculation`` copies this file into its working folder and runs it with the Python of its code, which
needs only numpy, ase and the calculator's package (aiida-autopipec need not be installed there)::

    python label_structures.py label_input.json

The input (JSON) names the structures file, the calculator and the output files::

    {"structures": "structures.npz",
     "calculator": {"import_path": "ase.calculators.emt.EMT", "kwargs": {}},
     "output": "labelled.npz", "report": "failures.json"}

``structures.npz`` holds the geometry only, as flat arrays (read with ``allow_pickle=False``): ``numbers`` (n_atoms,),
``positions`` (n_atoms, 3) Å, ``natoms`` (n_structures,), ``cells`` (n_structures, 3, 3) Å, ``pbc`` (n_structures, 3).

One calculator instance labels the structures in turn (models are loaded once); an exception while evaluating one
structure (or a non-finite result) is recorded with its index, the calculator is replaced by a fresh instance in
case it was left in a bad state, and the others go on. Written:

* ``labelled.npz``: ``indices`` (original positions of the structures that succeeded, ascending), ``energies``
  (eV, one per success) and ``forces`` (eV/Å, their atoms concatenated); only if at least one succeeded.
* ``failures.json`` (written last, so its presence means the script finished): ``{"num_structures": n,
  "failures": [{"index": i, "error": "Type: message"}, ...]}``, or ``{"import_error": ...}`` /
  ``{"setup_error": ...}`` when the calculator could not be imported / instantiated.

Exit status: 0 at least one structure labelled, 1 all failed, 2 import error, 3 calculator setup error, 4 bad input.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np

STRUCTURE_ARRAYS = ("numbers", "positions", "natoms", "cells", "pbc")
EXIT_OK, EXIT_ALL_FAILED, EXIT_IMPORT_ERROR, EXIT_SETUP_ERROR, EXIT_BAD_INPUT = 0, 1, 2, 3, 4
#: Longest error message kept per structure (characters).
MAX_MESSAGE = 2000


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def write_structures(path, numbers, positions, natoms, cells, pbc) -> None:
    """Write the geometry file this script reads (used by the CalcJob; plain numpy arrays, no pickle)."""
    np.savez(
        path,
        numbers=np.asarray(numbers, dtype=np.int64),
        positions=np.asarray(positions, dtype=float),
        natoms=np.asarray(natoms, dtype=np.int64),
        cells=np.asarray(cells, dtype=float),
        pbc=np.asarray(pbc, dtype=bool),
    )


def read_structures(path) -> list:
    """The structures of a geometry file as ``ase.Atoms`` without a calculator."""
    from ase import Atoms

    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in STRUCTURE_ARRAYS}
    offsets = np.concatenate([[0], np.cumsum(arrays["natoms"])])
    return [
        Atoms(
            numbers=arrays["numbers"][offsets[i] : offsets[i + 1]],
            positions=arrays["positions"][offsets[i] : offsets[i + 1]],
            cell=arrays["cells"][i],
            pbc=arrays["pbc"][i],
        )
        for i in range(len(arrays["natoms"]))
    ]


def load_calculator_class(import_path: str):
    """The class ``module.sub.ClassName``; ImportError if the module or the name is missing or not a class."""
    module_name, _, class_name = import_path.rpartition(".")
    if not module_name:
        raise ImportError(f"'{import_path}' is not of the form module.ClassName")
    module = importlib.import_module(module_name)
    try:
        calculator_class = getattr(module, class_name)
    except AttributeError as exc:
        raise ImportError(f"module '{module_name}' has no attribute '{class_name}'") from exc
    if not isinstance(calculator_class, type):
        raise ImportError(f"'{import_path}' is a {type(calculator_class).__name__}, not a calculator class")
    return calculator_class


def make_calculator(calculator_class, kwargs: dict):
    calculator = calculator_class(**kwargs)
    missing = [name for name in ("get_potential_energy", "get_forces") if not callable(getattr(calculator, name, None))]
    if missing:
        raise TypeError(f"{calculator_class.__name__} is not an ASE calculator: it has no {', '.join(missing)}")
    return calculator


def label(structures: list, calculator_class, kwargs: dict, calculator=None) -> tuple[list, list, list, list]:
    """Energy (eV) and forces (eV/Å) of every structure; failures as ``{"index", "error"}``."""
    indices, energies, forces, failures = [], [], [], []
    for index, atoms in enumerate(structures):
        try:
            if calculator is None:
                calculator = make_calculator(calculator_class, kwargs)
            atoms.calc = calculator
            energy = float(atoms.get_potential_energy())
            atom_forces = np.array(atoms.get_forces(), dtype=float)
            if atom_forces.shape != (len(atoms), 3):
                raise ValueError(f"forces have shape {atom_forces.shape}, expected ({len(atoms)}, 3)")
            if not np.isfinite(energy) or not np.isfinite(atom_forces).all():
                raise FloatingPointError("the energy or forces are NaN or infinite")
        except Exception as exc:
            failures.append({"index": index, "error": _message(exc)})
            calculator = None  # start the next structure from a fresh instance
            continue
        indices.append(index)
        energies.append(energy)
        forces.append(atom_forces)
    return indices, energies, forces, failures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python label_structures.py label_input.json", file=sys.stderr)
        return EXIT_BAD_INPUT
    input_path = Path(argv[0])
    folder = input_path.parent
    settings = json.loads(input_path.read_text())
    report_path = folder / settings["report"]
    calculator = settings["calculator"]
    import_path, kwargs = calculator["import_path"], calculator.get("kwargs") or {}

    try:
        calculator_class = load_calculator_class(import_path)
    except Exception as exc:  # ImportError, or whatever the module raised while being imported
        report_path.write_text(json.dumps({"import_error": _message(exc)}))
        print(f"cannot import {import_path}: {_message(exc)}", file=sys.stderr)
        return EXIT_IMPORT_ERROR
    try:
        calculator = make_calculator(calculator_class, kwargs)
    except Exception as exc:
        report_path.write_text(json.dumps({"setup_error": _message(exc)}))
        print(f"cannot create {import_path}(**{kwargs!r}): {_message(exc)}", file=sys.stderr)
        return EXIT_SETUP_ERROR

    structures = read_structures(folder / settings["structures"])
    indices, energies, forces, failures = label(structures, calculator_class, kwargs, calculator)
    for failure in failures:
        print(f"structure {failure['index']}: {failure['error']}", file=sys.stderr)
    if indices:
        np.savez(
            folder / settings["output"],
            indices=np.asarray(indices, dtype=np.int64),
            energies=np.asarray(energies, dtype=float),
            forces=np.concatenate(forces).astype(float),
        )
    report_path.write_text(json.dumps({"num_structures": len(structures), "failures": failures}))
    print(f"labelled {len(indices)} of {len(structures)} structures with {import_path}")
    return EXIT_OK if indices else EXIT_ALL_FAILED


if __name__ == "__main__":
    sys.exit(main())
