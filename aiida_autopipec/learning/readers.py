"""Readers of labelled data files as other codes write them: extxyz with any keys, and Pacemaker's DataFrames.

Each reader gives :class:`ImportedData`: the structures as :class:`StructureArrays` (with stress, weights and
reference-energy state when the file has them) and notes for the user (what was found, kept or ignored).

Pacemaker (``pyace.preparedata``) fits the column ``energy_corrected`` when the frame has one (``energy`` is then
only used when ``data: reference_energy`` is set), and needs ``energy_corrected`` or ``energy``, ``forces`` and
``ase_atoms``; ``w_energy``/``w_forces`` are used only when both exist. The readers follow that:

* ``energy_corrected`` only: the energies are stored as they are, with reference energies 0 and
  ``energies_corrected``; a fit subtracts nothing (the potential's ``E0`` is 0, it predicts corrected energies).
* ``energy`` and ``energy_corrected``: when ``energy − energy_corrected`` is a per-element reference (residual
  below :data:`REFERENCE_RESIDUAL` eV/atom, as Pacemaker's own ``reference_energy`` makes it), the total energies
  are stored with those references (a fit subtracts exactly them, the potential returns total energies);
  otherwise the corrected energies are stored as above and ``energy`` is ignored, which is what Pacemaker fits.
* ``energy`` only: total energies; a fit determines the references (``reference_energies: fit``).

Units: energies eV, forces eV/Å, stress eV/Å³ (ASE's sign: ``atoms.get_stress()``), virial eV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_autopipec.learning.dataset import DatasetError, StructureArrays
from aiida_autopipec.learning.label_extras import zero_references

__all__ = [
    "ImportedData",
    "pickle_compression",
    "read_extxyz",
    "read_extxyz_data",
    "read_pacemaker_frame",
    "read_pacemaker_pickle",
]

#: Largest |energy − energy_corrected − Σ references| (eV/atom) for which a frame's references count as per-element.
REFERENCE_RESIDUAL = 1e-6
#: Columns of a Pacemaker frame that are read; any other column is ignored (with a note).
PACEMAKER_COLUMNS = ("ase_atoms", "energy", "energy_corrected", "forces", "w_energy", "w_forces")
STRESS_INFO_KEYS = ("stress", "REF_stress", "dft_stress")
VIRIAL_INFO_KEYS = ("virial", "virials", "REF_virial", "REF_virials", "dft_virial")


@dataclass
class ImportedData:
    """Structures read from a file, and what the user should know about the reading (one sentence per note)."""

    arrays: StructureArrays
    notes: list[str] = field(default_factory=list)


# -- extxyz -------------------------------------------------------------------------------------------------------
def read_extxyz(
    path: str | os.PathLike, index: str = ":", energy_key: str | None = None, forces_key: str | None = None
) -> list[Atoms]:
    """Structures from an (ext)xyz file, with clear errors for missing or corrupt files.

    ``energy_key`` / ``forces_key`` (e.g. ``REF_energy`` / ``REF_forces`` as MACE users write them): take the
    energy (eV) from ``atoms.info[energy_key]`` and the forces (eV/Å) from ``atoms.arrays[forces_key]``; every
    structure must have them. Without them the labels come from the calculator or the usual keys.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        structures = read(path, index=index, format="extxyz")
    except Exception as exc:
        raise DatasetError(f"{path}: cannot be read as extxyz: {exc}") from exc
    structures = structures if isinstance(structures, list) else [structures]
    if not structures:
        raise DatasetError(f"{path}: contains no structures")
    if energy_key is not None or forces_key is not None:
        for number, atoms in enumerate(structures):
            _attach_keyed_labels(atoms, number, energy_key, forces_key)
    return structures


def _attach_keyed_labels(atoms: Atoms, number: int, energy_key: str | None, forces_key: str | None) -> None:
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    if energy_key is not None:
        if energy_key in atoms.info:
            results["energy"] = atoms.info[energy_key]
        elif energy_key not in results:  # ASE moves 'energy' itself into the calculator
            keys = sorted(key for key in atoms.info if "energ" in key.lower()) or sorted(atoms.info)
            raise DatasetError(f"structure {number}: no energy under '{energy_key}' (info keys: {keys})")
        else:
            results["energy"] = results[energy_key]
    if forces_key is not None:
        if forces_key in atoms.arrays:
            results["forces"] = atoms.arrays[forces_key]
        elif forces_key not in results:
            keys = sorted(set(atoms.arrays) - {"numbers", "positions"})
            raise DatasetError(f"structure {number}: no forces under '{forces_key}' (per-atom arrays: {keys})")
        else:
            results["forces"] = results[forces_key]
    atoms.calc = SinglePointCalculator(atoms, **{k: v for k, v in results.items() if k in ("energy", "forces")})
    atoms.calc.results.update({k: v for k, v in results.items() if k == "stress"})


def extxyz_stress(structures: list[Atoms], energy_key: str | None = None) -> tuple[np.ndarray | None, list[str]]:
    """Stress (n_structures, 3, 3) in eV/Å³ (NaN rows where none) from calculators, ``stress`` keys, or ``virial``
    keys (virial W in eV, converted: stress = −W / volume, as ASE and MACE do); None when no structure has one."""
    prefix = energy_key[: -len("energy")] if energy_key and energy_key.endswith("energy") else ""
    stress_keys = tuple(dict.fromkeys((f"{prefix}stress", *STRESS_INFO_KEYS)))
    virial_keys = tuple(dict.fromkeys((f"{prefix}virial", f"{prefix}virials", *VIRIAL_INFO_KEYS)))
    stress = np.full((len(structures), 3, 3), np.nan)
    sources, dropped = set(), 0
    for number, atoms in enumerate(structures):
        value, source = _structure_stress(atoms, stress_keys, virial_keys)
        if value is None and source is not None:
            dropped += 1
        elif value is not None:
            stress[number] = value
            sources.add(source)
    notes = []
    if sources:
        notes.append(f"stress kept ({', '.join(sorted(sources))}; eV/Å³, ASE's sign convention)")
    if dropped:
        notes.append(f"virial of {dropped} non-periodic structure(s) ignored: no volume to convert it to stress")
    return (stress if sources else None), notes


def _structure_stress(atoms: Atoms, stress_keys: tuple, virial_keys: tuple) -> tuple[np.ndarray | None, str | None]:
    value = atoms.calc.results.get("stress") if atoms.calc is not None else None
    if value is not None:
        return _full_stress(value), "stress"
    for key in stress_keys:
        if key in atoms.info:
            return _full_stress(atoms.info[key], key), key
    for key in virial_keys:
        if key in atoms.info:
            if not atoms.pbc.all() or atoms.cell.volume <= 0:
                return None, key
            return -_full_stress(atoms.info[key], key) / atoms.cell.volume, f"{key} → stress = −virial/volume"
    return None, None


def _full_stress(value: Any, key: str = "stress") -> np.ndarray:
    value = np.asarray(value, dtype=float)
    if value.shape == (6,):  # Voigt: xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if value.shape in ((3, 3), (9,)):
        return value.reshape(3, 3)
    raise DatasetError(f"{key}: expected 6 (Voigt) or 9 values, got shape {value.shape}")


def read_extxyz_data(
    path: str | os.PathLike,
    index: str = ":",
    energy_key: str | None = None,
    forces_key: str | None = None,
    elements: Any = None,
    labelled: bool = True,
) -> ImportedData:
    """An extxyz file as :class:`ImportedData`: labels (optionally from ``energy_key``/``forces_key``) and stress."""
    structures = read_extxyz(path, index, energy_key if labelled else None, forces_key if labelled else None)
    arrays = StructureArrays.from_atoms(structures, elements, labelled=labelled)
    if not labelled:
        return ImportedData(arrays)
    notes = []
    if energy_key or forces_key:
        notes.append(f"labels from '{energy_key or 'energy'}' (eV) and '{forces_key or 'forces'}' (eV/Å)")
    stress, stress_notes = extxyz_stress(structures, energy_key)
    if stress is not None:
        arrays = arrays.with_extras(stress=stress)
    return ImportedData(arrays, notes + stress_notes)


# -- Pacemaker's DataFrame pickles --------------------------------------------------------------------------------
def pickle_compression(path: str | os.PathLike) -> str | None:
    """``"gzip"`` for a gzip file (Pacemaker's ``.pckl.gzip``, which pandas does not recognise by name), else None."""
    with Path(path).open("rb") as handle:
        return "gzip" if handle.read(2) == b"\x1f\x8b" else None


def _load_frame(path: Path, labelled: bool):
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        frame = pd.read_pickle(path, compression=pickle_compression(path))
    except Exception as exc:
        raise DatasetError(f"{path}: cannot be read as a pickled DataFrame: {exc}") from exc
    columns = set(getattr(frame, "columns", ()))
    missing = [name for name in ("ase_atoms", "forces") if name not in columns and (labelled or name == "ase_atoms")]
    if labelled and not columns & {"energy", "energy_corrected"}:
        missing.append("energy or energy_corrected")
    if missing:
        raise DatasetError(f"{path}: not a Pacemaker dataset, column(s) {missing} are missing")
    if len(frame) == 0:
        raise DatasetError(f"{path}: contains no structures")
    for number, atoms in enumerate(frame["ase_atoms"]):
        if not isinstance(atoms, Atoms):
            raise DatasetError(f"{path}: row {number}: ase_atoms is a {type(atoms).__name__}, not ase.Atoms")
    return frame


def _column(frame, name: str, path: Path) -> np.ndarray | None:
    if name not in frame.columns:
        return None
    try:
        return np.asarray(frame[name].to_numpy(), dtype=float)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: column {name} must hold one number per structure: {exc}") from exc


def read_pacemaker_frame(path: str | os.PathLike, elements: Any = None, labelled: bool = True) -> ImportedData:
    """Pacemaker's gzip-pickled DataFrame as Pacemaker accepts it (see the module docstring).

    Unpickling runs arbitrary code from the file: call this only for files you trust.
    """
    path = Path(path)
    frame = _load_frame(path, labelled)
    structures = [atoms.copy() for atoms in frame["ase_atoms"]]
    ignored = sorted(str(name) for name in frame.columns if name not in PACEMAKER_COLUMNS)
    notes = [f"column(s) {', '.join(ignored)} ignored"] if ignored else []
    if not labelled:
        return ImportedData(StructureArrays.from_atoms(structures, elements, labelled=False), notes)
    energy, corrected = _column(frame, "energy", path), _column(frame, "energy_corrected", path)
    labels = zip(structures, energy if energy is not None else corrected, frame["forces"], strict=True)
    for atoms, value, forces in labels:
        atoms.calc = SinglePointCalculator(atoms, energy=float(value), forces=np.asarray(forces, dtype=float))
    arrays = StructureArrays.from_atoms(structures, elements)
    arrays, reference_notes = _reference_state(arrays, energy, corrected)
    arrays, weight_notes = _weights(arrays, frame, path)
    return ImportedData(arrays, reference_notes + weight_notes + notes)


def _reference_state(arrays: StructureArrays, energy, corrected) -> tuple[StructureArrays, list[str]]:
    """Choose the energies as Pacemaker would fit them and record the references that belong to them."""
    zeros = zero_references(arrays.elements)
    as_corrected = (
        "energies are already corrected (energy_corrected{}): stored with reference energies 0 eV/atom; "
        "a fit subtracts nothing, the potential predicts corrected energies"
    )
    if energy is None:
        return arrays.with_extras(reference_energies=zeros, energies_corrected=True), [as_corrected.format("")]
    if corrected is None:
        return arrays, []
    if np.isfinite(corrected).all() and not np.isfinite(energy).all():
        arrays = arrays.with_labels(corrected, arrays.forces)
        note = as_corrected.format(", energy has NaN and is ignored")
        return arrays.with_extras(reference_energies=zeros, energies_corrected=True), [note]
    counts = arrays.composition_matrix(arrays.elements)
    references, *_ = np.linalg.lstsq(counts, energy - corrected, rcond=None)
    residual = np.abs(energy - corrected - counts @ references) / arrays.natoms
    if residual.max() < REFERENCE_RESIDUAL:
        found = {element: float(value) for element, value in zip(arrays.elements, references, strict=True)}
        text = ", ".join(f"{element} {value:.6g}" for element, value in found.items())
        note = (
            f"reference energies from energy − energy_corrected: {text} eV/atom; total energies stored, a fit "
            "subtracts these references (as Pacemaker fits energy_corrected)"
        )
        return arrays.with_extras(reference_energies=found, energies_corrected=False), [note]
    arrays = arrays.with_labels(corrected, arrays.forces)
    note = as_corrected.format(
        f"; energy ignored, energy − energy_corrected is not a per-element reference: off by up to "
        f"{residual.max():.3g} eV/atom"
    )
    return arrays.with_extras(reference_energies=zeros, energies_corrected=True), [note]


def _weights(arrays: StructureArrays, frame, path: Path) -> tuple[StructureArrays, list[str]]:
    present = [name for name in ("w_energy", "w_forces") if name in frame.columns]
    if not present:
        return arrays, []
    if len(present) == 1:
        note = f"only {present[0]} found: ignored (Pacemaker uses weights only when w_energy and w_forces both exist)"
        return arrays, [note]
    energy_weights = _column(frame, "w_energy", path)
    force_weights = []
    for number, (value, count) in enumerate(zip(frame["w_forces"], arrays.natoms.tolist(), strict=True)):
        try:
            value = np.asarray(value, dtype=float)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: row {number}: w_forces must be numbers, one per atom: {exc}") from exc
        if value.size != count or value.ndim == 0:
            raise DatasetError(
                f"{path}: row {number}: w_forces has {value.size} value(s) for {count} atoms; give one weight per atom"
            )
        force_weights.append(value.reshape(-1))
    try:
        arrays = arrays.with_extras(energy_weights=energy_weights, force_weights=np.concatenate(force_weights))
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    return arrays, [
        "weights found: w_energy (per structure) and w_forces (per atom) are kept; fits use them unless "
        "structure_weights is given"
    ]


def read_pacemaker_pickle(path: str | os.PathLike) -> list[Atoms]:
    """Structures with energies (eV) and forces (eV/Å) from Pacemaker's gzip-pickled DataFrame (see
    :func:`read_pacemaker_frame`, which also keeps weights and the reference-energy state). Trusted files only."""
    return read_pacemaker_frame(path).arrays.to_atoms()
