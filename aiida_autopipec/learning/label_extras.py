"""Optional data that travel with :class:`~aiida_autopipec.learning.dataset.StructureArrays`.

* ``stress`` (n_structures, 3, 3), eV/Å³, ASE's sign convention (``atoms.get_stress()``: positive = tensile);
  rows of NaN for structures without one. Kept and given back; not fitted (Pacemaker fits energies and forces).
* ``energy_weights`` (n_structures,) and ``force_weights`` (n_atoms,): Pacemaker's ``w_energy`` / ``w_forces``
  columns, kept as given (Pacemaker normalises each to sum 1, so only relative values matter).
* ``reference_energies`` {element: eV/atom} and ``energies_corrected``: the per-element reference energies that
  belong to the stored energies. ``energies_corrected=True``: the energies are already corrected (Pacemaker's
  ``energy_corrected`` without ``energy``), the references are 0 and a fit subtracts nothing. Without
  ``energies_corrected`` they are the references to subtract from total energies (e.g. derived from a frame
  with both ``energy`` and ``energy_corrected``).

Every function here takes or returns plain values so that :mod:`~aiida_autopipec.learning.dataset` stays small;
this module sits below it (it imports nothing of the dataset module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aiida_autopipec.learning.errors import DatasetError

__all__ = ["OPTIONAL_ARRAYS", "join_extras", "validate_extras"]

#: Optional arrays: per structure (``stress``, ``energy_weights``) or per atom (``force_weights``).
OPTIONAL_ARRAYS = ("stress", "energy_weights", "force_weights")
#: Two reference energies (eV/atom) closer than this are the same.
REFERENCE_TOLERANCE = 1e-9


def _error(message: str) -> DatasetError:
    return DatasetError(message)


def validate_extras(arrays: Any) -> None:
    """Shapes and values of the optional data of ``arrays`` (a StructureArrays); raises DatasetError."""
    n_structures, n_atoms = arrays.num_structures, int(arrays.natoms.sum())
    shapes = {"stress": (n_structures, 3, 3), "energy_weights": (n_structures,), "force_weights": (n_atoms,)}
    present = {name: getattr(arrays, name) for name in OPTIONAL_ARRAYS if getattr(arrays, name) is not None}
    if not arrays.labelled and (present or arrays.reference_energies is not None or arrays.energies_corrected):
        raise _error("an unlabelled set cannot carry stress, weights or reference energies")
    for name, value in present.items():
        if not isinstance(value, np.ndarray) or value.shape != shapes[name]:
            raise _error(f"{name}: shape {getattr(value, 'shape', None)}, expected {shapes[name]}")
    if (arrays.energy_weights is None) != (arrays.force_weights is None):
        raise _error("weights: give energy_weights (one per structure) and force_weights (one per atom), or neither")
    for name in ("energy_weights", "force_weights"):
        value = present.get(name)
        if value is not None and (not np.isfinite(value).all() or (value < 0).any() or value.sum() <= 0):
            raise _error(f"{name}: weights must be finite and >= 0, with a positive sum")
    stress = present.get("stress")
    if stress is not None:
        rows = stress.reshape(n_structures, 9)
        partial = np.isnan(rows).any(axis=1) & ~np.isnan(rows).all(axis=1)
        if partial.any() or np.isinf(rows).any():
            raise _error(f"structure {int(np.argmax(partial | np.isinf(rows).any(axis=1)))}: stress contains inf/NaN")
    references = arrays.reference_energies
    if references is not None:
        if not isinstance(references, Mapping) or not all(np.isfinite(float(v)) for v in references.values()):
            raise _error(f"reference_energies: expected {{element: finite eV/atom}}, got {references!r}")
        if arrays.energies_corrected and any(float(v) != 0.0 for v in references.values()):
            raise _error("reference_energies: energies that are already corrected have references 0")
    elif arrays.energies_corrected:
        raise _error("energies_corrected: needs reference_energies (0 for each element)")


def take_extras(arrays: Any, indices: np.ndarray, atoms: np.ndarray) -> dict[str, Any]:
    """The optional data of the structures ``indices`` (their atoms: ``atoms``)."""
    extras = {
        name: _take(getattr(arrays, name), atoms if name == "force_weights" else indices) for name in OPTIONAL_ARRAYS
    }
    return {**extras, "reference_energies": arrays.reference_energies, "energies_corrected": arrays.energies_corrected}


def _take(value: np.ndarray | None, indices: np.ndarray) -> np.ndarray | None:
    return None if value is None else value[indices]


def join_extras(parts: Sequence[Any]) -> dict[str, Any]:
    """Optional data of several sets joined in order.

    * stress: parts without get NaN rows;
    * weights: kept when any part has them; structures of parts without get the mean weights of those with them
      (mean ``w_energy`` per structure, mean ``w_forces`` per atom), i.e. they weigh like an average structure;
    * already-corrected energies cannot be joined with total energies (DatasetError); references that all parts
      share (or that do not overlap) are kept, otherwise dropped (the fit then fits them to the total energies).
    """
    corrected = [index for index, part in enumerate(parts) if part.energies_corrected]
    if corrected and len(corrected) != len(parts):
        total = [index for index in range(len(parts)) if index not in corrected]
        raise _error(
            f"cannot join energies that are already corrected (Pacemaker's energy_corrected, reference energies 0: "
            f"parts {corrected}) with total energies (parts {total}): they are on different scales; import total "
            "energies for all, or correct the others with the same reference energies and import them as "
            "energy_corrected"
        )
    extras: dict[str, Any] = {"energies_corrected": bool(corrected), "reference_energies": _join_references(parts)}
    if any(part.stress is not None for part in parts):
        extras["stress"] = np.concatenate(
            [part.stress if part.stress is not None else np.full((part.num_structures, 3, 3), np.nan) for part in parts]
        )
    weighted = [part for part in parts if part.energy_weights is not None]
    if weighted:
        mean_energy = float(np.mean(np.concatenate([part.energy_weights for part in weighted])))
        mean_force = float(np.mean(np.concatenate([part.force_weights for part in weighted])))
        extras["energy_weights"] = np.concatenate(
            [p.energy_weights if p.energy_weights is not None else np.full(len(p.natoms), mean_energy) for p in parts]
        )
        extras["force_weights"] = np.concatenate(
            [p.force_weights if p.force_weights is not None else np.full(p.num_atoms, mean_force) for p in parts]
        )
    return extras


def _join_references(parts: Sequence[Any]) -> dict[str, float] | None:
    if any(part.reference_energies is None for part in parts):
        return None
    joined: dict[str, float] = {}
    for part in parts:
        for element, value in part.reference_energies.items():
            if element in joined and abs(joined[element] - float(value)) > REFERENCE_TOLERANCE:
                return None
            joined[element] = float(value)
    return dict(sorted(joined.items()))


def extras_to_npz(arrays: Any) -> dict[str, np.ndarray]:
    """The optional data as plain arrays for ``np.savez`` (no object arrays: loads with ``allow_pickle=False``)."""
    stored = {name: getattr(arrays, name) for name in OPTIONAL_ARRAYS if getattr(arrays, name) is not None}
    if arrays.reference_energies is not None:
        stored["reference_elements"] = np.array(list(arrays.reference_energies), dtype="U3")
        stored["reference_values"] = np.array(list(arrays.reference_energies.values()), dtype=float)
    if arrays.energies_corrected:
        stored["energies_corrected"] = np.array(True)
    return stored


def extras_from_npz(data: Any) -> dict[str, Any]:
    """Inverse of :func:`extras_to_npz` for an open ``np.load`` archive (absent keys: defaults)."""
    extras: dict[str, Any] = {name: data[name].astype(float) for name in OPTIONAL_ARRAYS if name in data.files}
    if "reference_elements" in data.files:
        elements, values = data["reference_elements"], data["reference_values"]
        if elements.dtype.kind != "U" or elements.shape != values.shape:
            raise _error("reference_elements/reference_values: malformed")
        extras["reference_energies"] = {str(e): float(v) for e, v in zip(elements, values, strict=True)}
    if "energies_corrected" in data.files:
        extras["energies_corrected"] = bool(data["energies_corrected"])
    return extras


def hash_extras(arrays: Any, digest: Any) -> None:
    """Add the optional data to a content hash; nothing for sets without any (their hash stays as before)."""
    for name, value in extras_to_npz(arrays).items():
        value = np.ascontiguousarray(value)
        digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())


def stress_of(arrays: Any, index: int) -> np.ndarray | None:
    """Voigt stress (6,) of structure ``index`` in eV/Å³ (ASE's order xx yy zz yz xz xy), or None."""
    if arrays.stress is None or np.isnan(arrays.stress[index]).any():
        return None
    full = arrays.stress[index]
    return np.array([full[0, 0], full[1, 1], full[2, 2], full[1, 2], full[0, 2], full[0, 1]])


def zero_references(elements: Sequence[str]) -> dict[str, float]:
    return {element: 0.0 for element in sorted(elements)}
