"""The one place that converts between ASE structures, safe array storage and Pacemaker's dataset.

* :class:`StructureArrays`: structures as flat numpy arrays, labelled (energies and forces) or not (candidates
  still to be labelled: NaN in place of labels); saved as ``.npz`` without pickle, which is what ``TrainingSetData``
  stores.
* :func:`to_pacemaker_dataframe` / :func:`write_pacemaker_dataset`: Pacemaker's gzip-pickled DataFrame
  (``ase_atoms``, ``energy``, ``forces``, ``energy_corrected``, optional ``w_energy``/``w_forces``); written only
  into working directories, never stored.
* Readers for extxyz files and ASE databases, and the validation every entry point shares.

Units: energies in eV, forces in eV/Å, positions and cells in Å.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_autopipec.learning.errors import DatasetError
from aiida_autopipec.learning.label_extras import (
    extras_from_npz,
    extras_to_npz,
    join_extras,
    stress_of,
    take_extras,
    validate_extras,
)

__all__ = [
    "DATABASE_COLUMNS",
    "DatasetError",
    "StructureArrays",
    "UnitsWarning",
    "fit_reference_energies",
    "read_ase_db",
    "select_database_rows",
    "structure_weight_columns",
    "to_pacemaker_dataframe",
    "write_extxyz",
    "write_pacemaker_dataset",
]

#: Keys under which extxyz files commonly carry labels when no calculator is attached.
ENERGY_INFO_KEYS = ("energy", "Energy", "total_energy", "REF_energy", "dft_energy")
FORCES_ARRAY_KEYS = ("forces", "REF_forces", "dft_forces")
#: Two atoms closer than this (Å) are treated as overlapping: such a structure is almost surely corrupt.
MIN_INTERATOMIC_DISTANCE = 0.1
#: Hints of labels in other units (meV, kJ/mol, kcal/mol): a force component above this (eV/Å) ...
MAX_PLAUSIBLE_FORCE = 100.0
#: ... or energies per atom that, after removing per-element references, spread over more than this (eV/atom).
MAX_PLAUSIBLE_ENERGY_SPREAD = 20.0


@contextlib.contextmanager
def cyclic_garbage_collection_paused() -> Iterator[None]:
    """Pause Python's cycle collector while many short-lived objects (``ase.Atoms``, database rows) are made.

    Each full collection walks every object in the process, ~0.1 s once AiiDA is imported, and making and pickling
    10,000 structures set off several (measured: 0.33 s of 1.5 s). These objects hold no reference cycles, so
    reference counting frees them anyway; the collector resumes as it was.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class UnitsWarning(UserWarning):
    """Labels that look like they are not in eV and eV/Å (or mix units); they are kept, since they may be real."""


def _labels(atoms: Atoms, index: int) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) of one structure, from its calculator or its extxyz info/arrays."""
    energy = forces = None
    if isinstance(atoms.calc, SinglePointCalculator) and _same_geometry(atoms.calc.atoms, atoms):
        # Labels of exactly this geometry: ASE's tolerance-based state check (slow for large sets) is not needed.
        energy, forces = atoms.calc.results.get("energy"), atoms.calc.results.get("forces")
    elif atoms.calc is not None:
        try:
            energy = atoms.calc.get_potential_energy(atoms)
        except (PropertyNotImplementedError, RuntimeError, AttributeError):
            energy = None
        try:
            forces = atoms.calc.get_forces(atoms)
        except (PropertyNotImplementedError, RuntimeError, AttributeError):
            forces = None
    if energy is None:
        energy = next((atoms.info[k] for k in ENERGY_INFO_KEYS if k in atoms.info), None)
    if forces is None:
        forces = next((atoms.arrays[k] for k in FORCES_ARRAY_KEYS if k in atoms.arrays), None)
    if energy is None:
        raise DatasetError(f"structure {index} ({atoms.get_chemical_formula()}): no energy")
    if forces is None:
        raise DatasetError(f"structure {index} ({atoms.get_chemical_formula()}): no forces")
    try:
        energy = float(energy)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"structure {index}: energy {energy!r} is not a number") from exc
    return energy, np.asarray(forces, dtype=float)


def _same_geometry(reference: Atoms | None, atoms: Atoms) -> bool:
    """Exactly the same atoms, positions, cell and periodicity (a calculator's results belong to ``atoms``)."""
    return (
        reference is not None
        and np.array_equal(reference.numbers, atoms.numbers)
        and np.array_equal(reference.positions, atoms.positions)
        and np.array_equal(reference.cell.array, atoms.cell.array)
        and np.array_equal(reference.pbc, atoms.pbc)
    )


#: Up to this many atoms the overlap check compares all pairs at once; larger structures use ASE's neighbour list.
ALL_PAIRS_MAX_ATOMS = 500


def _overlap_by_neighbour_list(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
    """Whether two atoms, periodic images included, are closer than ``MIN_INTERATOMIC_DISTANCE`` (ASE's neighbour
    list: any cell shape and size, but much slower per structure than the batched all-pairs check)."""
    from ase.neighborlist import neighbor_list

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    return len(neighbor_list("d", atoms, MIN_INTERATOMIC_DISTANCE)) > 0


#: Atom pairs handled at once by the batched overlap check: small enough for the temporaries to stay in the CPU
#: cache (60,000 pairs measured 2.7x faster than 400,000 for 10,000 structures of 64 atoms).
PAIRS_PER_CHUNK = 60_000


def _shortest_squared_separations(
    fractional: np.ndarray, metric: np.ndarray, first: np.ndarray, second: np.ndarray, periodicity: Sequence[bool]
) -> np.ndarray:
    """Per structure, the shortest squared distance (Å²) over the atom pairs (``first``, ``second``).

    ``fractional``: (3, structures, atoms) coordinates; ``metric``: (structures, 3, 3) cell times its transpose.
    The minimum image is taken along periodic axes. One coordinate at a time and in place: the pair arrays are
    the whole cost.
    """
    separations = []
    for axis in range(3):
        separation = fractional[axis][:, second] - fractional[axis][:, first]
        if periodicity[axis]:
            separation -= np.round(separation)
        separations.append(separation)
    squared = np.square(separations[0])
    squared *= metric[:, 0, 0, None]
    term = np.empty_like(squared)
    for i, j in ((1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        np.multiply(separations[i], separations[j], out=term)
        term *= metric[:, i, j, None] * (1.0 if i == j else 2.0)
        squared += term
    return squared.min(axis=1)


@functools.lru_cache(maxsize=64)
def _pairs(num_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i < j, of all atom pairs; cached, since datasets repeat the same sizes."""
    return np.triu_indices(num_atoms, k=1)


@dataclass(frozen=True)
class StructureArrays:
    """Structures as flat arrays: the safe, exact storage format (``.npz``, no pickle).

    Per-atom arrays are concatenated over structures; ``natoms`` gives the split. With ``labelled=False`` the set
    holds structures without reference data (e.g. candidates of active learning): ``energies`` and ``forces``
    keep their shapes but are all NaN, and nothing may fit them.
    """

    numbers: np.ndarray  # (n_atoms_total,) atomic numbers
    positions: np.ndarray  # (n_atoms_total, 3) Å
    forces: np.ndarray  # (n_atoms_total, 3) eV/Å
    natoms: np.ndarray  # (n_structures,)
    cells: np.ndarray  # (n_structures, 3, 3) Å
    pbc: np.ndarray  # (n_structures, 3) bool
    energies: np.ndarray  # (n_structures,) eV
    labelled: bool = True  # False: energies and forces are all NaN
    # Optional, see :mod:`aiida_autopipec.learning.label_extras`: kept by take/concatenate/npz, dropped by new labels.
    stress: np.ndarray | None = None  # (n_structures, 3, 3) eV/Å³ (ASE sign), NaN rows where none
    energy_weights: np.ndarray | None = None  # (n_structures,) Pacemaker's w_energy
    force_weights: np.ndarray | None = None  # (n_atoms,) Pacemaker's w_forces
    reference_energies: Mapping[str, float] | None = None  # eV/atom belonging to the energies (0: corrected)
    energies_corrected: bool = False  # energies are already corrected (Pacemaker's energy_corrected only)

    FIELDS = ("numbers", "positions", "forces", "natoms", "cells", "pbc", "energies")
    #: Fields that hold labels: not written for unlabelled sets.
    LABEL_FIELDS = ("forces", "energies")
    #: Array written to ``.npz`` only for unlabelled sets (a file without it is labelled, as older files are).
    LABELLED_KEY = "labelled"

    def __post_init__(self) -> None:
        self.validate()

        validate_extras(self)

    def with_extras(self, **extras: Any) -> StructureArrays:
        """The same structures with optional data replaced (``stress``, weights, ``reference_energies``, ...)."""
        return dataclasses.replace(self, **extras)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_atoms(
        cls, structures: Iterable[Atoms], elements: Sequence[str] | None = None, labelled: bool = True
    ) -> StructureArrays:
        """Collect labels from ASE structures (calculator results or extxyz info/arrays) and validate them.

        With ``labelled=False`` only the geometry is kept: labels that are present are ignored, none are required.
        """

        def parts():
            for index, atoms in enumerate(structures):
                if not isinstance(atoms, Atoms):
                    raise DatasetError(f"structure {index}: expected ase.Atoms, got {type(atoms).__name__}")
                if len(atoms) == 0:
                    raise DatasetError(f"structure {index}: has no atoms")
                labels = _labels(atoms, index) if labelled else (None, None)
                yield atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, *labels, atoms.get_chemical_formula

        return cls._from_parts(parts(), elements, labelled)

    @classmethod
    def from_ase_db(
        cls,
        path: str | os.PathLike,
        selection: Any = None,
        progress: Callable | None = None,
        *,
        elements: Sequence[str] | None = None,
        labelled: bool = True,
        **key_value_pairs: Any,
    ) -> StructureArrays:
        """The rows of an ASE database that ``selection`` and the keyword filters match (``ase.db`` syntax), read
        column by column (:data:`DATABASE_COLUMNS`) straight into arrays and validated."""
        with cyclic_garbage_collection_paused():  # 10,000 rows would otherwise set off full collections
            rows = select_database_rows(path, selection, progress, columns=DATABASE_COLUMNS, **key_value_pairs)
            return cls.from_database_rows(rows, elements, labelled)

    @classmethod
    def from_database_rows(
        cls, rows: Iterable[Any], elements: Sequence[str] | None = None, labelled: bool = True
    ) -> StructureArrays:
        """Like :meth:`from_atoms` for rows of an ASE database, read without building ``ase.Atoms`` first: the
        labels are the calculator results stored in the row (``energy``, ``forces``), as ``row.toatoms()`` gives."""

        def parts():
            for index, row in enumerate(rows):
                if row.natoms == 0:
                    raise DatasetError(f"structure {index}: has no atoms")
                energy, forces = (row.get("energy"), row.get("forces")) if labelled else (None, None)
                if labelled and energy is None:
                    raise DatasetError(f"structure {index} ({row.formula}): no energy")
                if labelled and forces is None:
                    raise DatasetError(f"structure {index} ({row.formula}): no forces")
                yield row.numbers, row.positions, row.cell, row.pbc, energy, forces, lambda row=row: row.formula

        return cls._from_parts(parts(), elements, labelled)

    @classmethod
    def _from_parts(cls, parts: Iterable[tuple], elements: Sequence[str] | None, labelled: bool) -> StructureArrays:
        """Join per-structure (numbers, positions, cell, pbc, energy, forces, formula getter), then validate."""
        numbers, positions, forces, natoms, cells, pbc, energies = [], [], [], [], [], [], []
        for index, (atom_numbers, atom_positions, cell, periodic, energy, atom_forces, formula) in enumerate(parts):
            count = len(atom_numbers)
            if labelled:
                atom_forces = np.asarray(atom_forces, dtype=float)
                if atom_forces.shape != (count, 3):
                    raise DatasetError(
                        f"structure {index} ({formula()}): forces have shape {atom_forces.shape}, expected ({count}, 3)"
                    )
            else:
                energy, atom_forces = np.nan, np.full((count, 3), np.nan)
            numbers.append(atom_numbers)
            positions.append(atom_positions)
            forces.append(atom_forces)
            natoms.append(count)
            cells.append(cell)
            pbc.append(periodic)
            energies.append(energy)
        if not natoms:
            raise DatasetError("the dataset is empty: at least one structure is required")
        arrays = cls(
            numbers=np.concatenate(numbers).astype(np.int64),
            positions=np.concatenate(positions).astype(float),
            forces=np.concatenate(forces).astype(float),
            natoms=np.asarray(natoms, dtype=np.int64),
            cells=np.asarray(cells, dtype=float),
            pbc=np.asarray(pbc, dtype=bool),
            energies=np.asarray(energies, dtype=float),
            labelled=labelled,
        )
        if elements is not None:
            arrays.check_elements(elements)
        arrays.check_geometry()
        if labelled:
            for message in arrays.units_hints():
                warnings.warn(message, UnitsWarning, stacklevel=3)
        return arrays

    @classmethod
    def concatenate(cls, parts: Sequence[StructureArrays]) -> StructureArrays:
        """Join several sets in order (e.g. the shards of a training set); all labelled, or all unlabelled."""
        if not parts:
            raise DatasetError("the dataset is empty: at least one structure is required")
        flags = [part.labelled for part in parts]
        if len(set(flags)) > 1:
            unlabelled = [index for index, flag in enumerate(flags) if not flag]
            raise DatasetError(
                f"cannot join labelled and unlabelled structures (parts {unlabelled} are unlabelled): "
                "label the candidates first, or drop the labels of the others"
            )

        return cls(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.FIELDS},
            labelled=flags[0],
            **(join_extras(parts) if flags[0] else {}),
        )

    def take(self, indices: Sequence[int]) -> StructureArrays:
        """The structures at ``indices`` (in that order), with their labels if any."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            raise DatasetError("the dataset is empty: at least one structure is required")
        if (indices < 0).any() or (indices >= self.num_structures).any():
            raise DatasetError(f"structure indices {indices.tolist()} outside 0..{self.num_structures - 1}")

        offsets = self.offsets
        atoms = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in indices])
        return StructureArrays(
            numbers=self.numbers[atoms],
            positions=self.positions[atoms],
            forces=self.forces[atoms],
            natoms=self.natoms[indices],
            cells=self.cells[indices],
            pbc=self.pbc[indices],
            energies=self.energies[indices],
            labelled=self.labelled,
            **take_extras(self, indices, atoms),
        )

    def with_labels(self, energies: np.ndarray, forces: np.ndarray) -> StructureArrays:
        """The same structures labelled with ``energies`` (eV, one per structure) and ``forces`` (eV/Å, per atom)."""
        return StructureArrays(
            numbers=self.numbers,
            positions=self.positions,
            forces=np.asarray(forces, dtype=float),
            natoms=self.natoms,
            cells=self.cells,
            pbc=self.pbc,
            energies=np.asarray(energies, dtype=float),
            labelled=True,
        )

    def without_labels(self) -> StructureArrays:
        """The same structures, unlabelled (energies and forces NaN)."""
        return StructureArrays(
            numbers=self.numbers,
            positions=self.positions,
            forces=np.full_like(self.forces, np.nan, dtype=float),
            natoms=self.natoms,
            cells=self.cells,
            pbc=self.pbc,
            energies=np.full_like(self.energies, np.nan, dtype=float),
            labelled=False,
        )

    def require_labels(self, purpose: str = "it cannot be fitted") -> None:
        """Raise :class:`DatasetError` for an unlabelled set: ``purpose`` says what needed the labels."""
        if not self.labelled:
            raise DatasetError(
                f"the dataset is unlabelled (no reference energies or forces): {purpose}; "
                "label its structures first (e.g. with AseLabelCalculation)"
            )

    # -- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Shapes agree and every number is finite (labels all NaN when unlabelled); raises :class:`DatasetError`
        naming the first problem."""
        n_structures = len(self.natoms)
        n_atoms = int(self.natoms.sum()) if n_structures else 0
        if n_structures == 0:
            raise DatasetError("the dataset is empty: at least one structure is required")
        if (self.natoms <= 0).any():
            raise DatasetError(f"structure {int(np.argmax(self.natoms <= 0))}: has no atoms")
        expected = {
            "numbers": (n_atoms,),
            "positions": (n_atoms, 3),
            "forces": (n_atoms, 3),
            "cells": (n_structures, 3, 3),
            "pbc": (n_structures, 3),
            "energies": (n_structures,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise DatasetError(f"{name}: shape {getattr(self, name).shape}, expected {shape}")
        if not isinstance(self.labelled, (bool, np.bool_)):
            raise DatasetError(f"labelled: expected True or False, got {self.labelled!r}")
        checked = (("energies", "energy"), ("forces", "forces"), ("positions", "positions"))
        if not self.labelled:
            for name, what in checked[:2]:
                values = getattr(self, name)
                if not np.isnan(values).all():
                    bad = np.argwhere(~np.isnan(values))[0][0]
                    structure = bad if name == "energies" else int(np.searchsorted(self.offsets[1:], bad, "right"))
                    raise DatasetError(f"structure {structure}: unlabelled, but has a value for its {what}")
            checked = checked[2:]
        for name, what in checked:
            finite = np.isfinite(getattr(self, name))
            if not finite.all():
                bad = np.argwhere(~finite)[0][0]
                structure = bad if name == "energies" else int(np.searchsorted(self.offsets[1:], bad, "right"))
                raise DatasetError(f"structure {structure}: {what} contain NaN or inf")
        if not np.isfinite(self.cells).all():
            raise DatasetError("cells contain NaN or inf")
        if (self.numbers < 1).any() or (self.numbers > 118).any():
            raise DatasetError(f"atomic numbers outside 1..118: {sorted(set(self.numbers.tolist()))}")

    def check_elements(self, elements: Sequence[str]) -> None:
        """Every element in the data must be one of ``elements`` (the elements of the potential)."""
        missing = sorted(set(self.elements) - set(elements))
        if missing:
            raise DatasetError(f"the data contain element(s) {missing} that are not in elements {list(elements)}")

    def check_geometry(self) -> None:
        """Periodic cells must have volume and atoms must not overlap (distance < 0.1 Å).

        Vectorised over structures (structures of equal size and periodicity are checked together); the first
        structure with a problem is named.
        """
        from ase.geometry import complete_cell

        cells, pbc = self.cells, self.pbc
        vectors = cells.any(axis=2).sum(axis=1)  # what ``Cell.rank`` counts: the non-zero cell vectors
        completed = cells.copy()
        for index in np.flatnonzero(vectors < 3):
            completed[index] = complete_cell(cells[index])
        periodic = pbc.any(axis=1)
        # Coplanar vectors also have zero volume and would make the overlap check fail with a bare LinAlgError.
        degenerate = periodic & ((vectors < pbc.sum(axis=1)) | (np.linalg.matrix_rank(completed) < 3))
        first_degenerate = int(np.argmax(degenerate)) if degenerate.any() else None
        completed[~periodic] = np.eye(3)  # no minimum image without periodicity: any invertible cell will do
        completed[degenerate] = np.eye(3)  # reported above; keeps the stacked inverse defined
        overlapping = self._overlapping_structures(completed)
        first_overlap = int(overlapping[0]) if len(overlapping) else None
        if first_degenerate is not None and (first_overlap is None or first_degenerate <= first_overlap):
            raise DatasetError(f"structure {first_degenerate}: periodic cell is degenerate (zero volume)")
        if first_overlap is not None:
            atoms = slice(self.offsets[first_overlap], self.offsets[first_overlap + 1])
            formula = Atoms(numbers=self.numbers[atoms]).get_chemical_formula()
            raise DatasetError(
                f"structure {first_overlap} ({formula}): atoms overlap (closer than {MIN_INTERATOMIC_DISTANCE} Å)"
            )

    def _overlapping_structures(self, cells: np.ndarray) -> np.ndarray:
        """Sorted indices of the structures with two atoms (periodic images included) closer than 0.1 Å.

        All pairs with the minimum image in fractional coordinates, batched over structures of equal size and
        periodicity: exact for distances below half the smallest periodic cell height (any image that close has
        fractional offsets below 1/2). Very thin cells and structures of more than ``ALL_PAIRS_MAX_ATOMS`` atoms
        use ASE's neighbour list, one at a time.
        """
        reciprocal = np.linalg.inv(cells)  # columns b_i with a_j . b_i = delta_ij; cell heights are 1 / |b_i|
        heights = 1.0 / np.linalg.norm(reciprocal, axis=-2)
        thin = (np.where(self.pbc, heights, np.inf) < 2 * MIN_INTERATOMIC_DISTANCE).any(axis=1)
        offsets, found = self.offsets, []
        groups: dict[tuple, list[int]] = {}
        for index, (count, is_thin) in enumerate(zip(self.natoms.tolist(), thin.tolist(), strict=True)):
            if is_thin or count > ALL_PAIRS_MAX_ATOMS:
                atoms = slice(offsets[index], offsets[index + 1])
                if _overlap_by_neighbour_list(
                    self.numbers[atoms], self.positions[atoms], self.cells[index], self.pbc[index]
                ):
                    found.append(index)
            elif count > 1:
                groups.setdefault((count, *self.pbc[index].tolist()), []).append(index)
        metric = cells @ cells.transpose(0, 2, 1)  # |f @ cell|^2 = f . (cell cell^T) . f
        for (count, *periodicity), members in groups.items():
            first, second = _pairs(count)
            chunk = max(1, PAIRS_PER_CHUNK // len(first))
            for start in range(0, len(members), chunk):
                batch = np.asarray(members[start : start + chunk])
                positions = self.positions[offsets[batch][:, None] + np.arange(count)]  # (batch, atoms, 3)
                fractional = np.einsum("bai,bij->jba", positions, reciprocal[batch])  # (3, batch, atoms)
                shortest = _shortest_squared_separations(fractional, metric[batch], first, second, periodicity)
                found += batch[shortest < MIN_INTERATOMIC_DISTANCE**2].tolist()
        return np.sort(np.asarray(found, dtype=np.int64))

    def units_hints(self) -> list[str]:
        """Why the labels may not be in eV and eV/Å: forces far beyond DFT training data, or energies per atom that
        stay far apart after removing per-element references (one set in kJ/mol, another in eV, ...)."""
        hints = []
        if not self.labelled:
            return hints
        largest = np.abs(self.forces).max(axis=1)
        if largest.max() > MAX_PLAUSIBLE_FORCE:
            structure = int(np.searchsorted(self.offsets[1:], int(np.argmax(largest)), "right"))
            hints.append(
                f"structure {structure}: a force component of {largest.max():.4g} eV/Å (above "
                f"{MAX_PLAUSIBLE_FORCE:g} eV/Å): are the forces in eV/Å (not meV/Å, kJ/mol/Å or Hartree/Bohr)?"
            )
        elements = self.elements
        if self.num_structures > len(elements):
            counts = self.composition_matrix(elements)
            references, *_ = np.linalg.lstsq(counts, self.energies, rcond=None)
            per_atom = (self.energies - counts @ references) / self.natoms
            spread = float(per_atom.max() - per_atom.min())
            if spread > MAX_PLAUSIBLE_ENERGY_SPREAD:
                low, high = int(np.argmin(per_atom)), int(np.argmax(per_atom))
                hints.append(
                    f"structures {low} and {high}: energies per atom differ by {spread:.4g} eV/atom after removing "
                    f"per-element references (more than {MAX_PLAUSIBLE_ENERGY_SPREAD:g}): are all energies in eV "
                    "(not kJ/mol, kcal/mol or Hartree, or a mix)?"
                )
        return hints

    # -- views --------------------------------------------------------------------------------------------
    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.natoms)])

    @property
    def num_structures(self) -> int:
        return len(self.natoms)

    @property
    def num_atoms(self) -> int:
        return int(self.natoms.sum())

    @property
    def elements(self) -> list[str]:
        from ase.data import chemical_symbols

        return sorted(chemical_symbols[number] for number in np.flatnonzero(np.bincount(self.numbers)))

    def atoms_per_element(self) -> dict[str, int]:
        """Number of atoms of each element, over all structures."""
        from ase.data import chemical_symbols

        counts = np.bincount(self.numbers)  # numbers are 1..118 (validated): a count per possible element
        return {chemical_symbols[number]: int(counts[number]) for number in np.flatnonzero(counts)}

    def composition_matrix(self, elements: Sequence[str]) -> np.ndarray:
        """(n_structures, n_elements) counts of each element per structure (one ``bincount`` over all atoms)."""
        from ase.data import atomic_numbers

        column_of_number = np.full(119, -1, dtype=np.int64)
        column_of_number[[atomic_numbers[symbol] for symbol in elements]] = np.arange(len(elements))
        columns = column_of_number[self.numbers]
        if (columns < 0).any():
            self.check_elements(elements)  # names the elements that have no column
        structure_of_atom = np.repeat(np.arange(self.num_structures), self.natoms)
        slots = structure_of_atom * len(elements) + columns
        counts = np.bincount(slots, minlength=self.num_structures * len(elements))
        return counts.reshape(self.num_structures, len(elements)).astype(float)

    def to_atoms(self, with_labels: bool = True) -> list[Atoms]:
        """ASE structures; with labels attached as a SinglePointCalculator (energy in eV, forces in eV/Å).

        An unlabelled set gives structures without a calculator.
        """

        structures = []
        offsets = self.offsets
        for i in range(self.num_structures):
            start, stop = offsets[i], offsets[i + 1]
            atoms = Atoms(
                numbers=self.numbers[start:stop],
                positions=self.positions[start:stop],
                cell=self.cells[i],
                pbc=self.pbc[i],
            )
            if with_labels and self.labelled:
                stress = stress_of(self, i) if self.stress is not None else None
                atoms.calc = SinglePointCalculator(
                    atoms,
                    energy=float(self.energies[i]),
                    forces=self.forces[start:stop].copy(),
                    **({"stress": stress} if stress is not None else {}),
                )
            structures.append(atoms)
        return structures

    # -- safe file format ---------------------------------------------------------------------------------
    def save_npz(self, handle: IO[bytes] | str | os.PathLike) -> None:
        """Uncompressed, with 1-byte atomic numbers: positions and forces barely compress (~20 % at zlib's cost of
        ~0.1 s per 1000 structures of 64 atoms), and the numbers were the compressible part. Unlabelled sets
        leave out their all-NaN energies and forces."""
        arrays = {name: getattr(self, name) for name in self.FIELDS}
        arrays["numbers"] = self.numbers.astype(np.uint8)  # 1..118, checked by validate()
        if not self.labelled:  # labelled files keep exactly the layout they always had
            arrays[self.LABELLED_KEY] = np.array(False)
            for name in self.LABEL_FIELDS:
                del arrays[name]

        np.savez(handle, **arrays, **extras_to_npz(self))

    @classmethod
    def load_npz(cls, handle: IO[bytes] | str | os.PathLike) -> StructureArrays:
        """Load without pickle (``allow_pickle=False``): a stored file can never execute code."""
        with np.load(handle, allow_pickle=False) as data:
            labelled = True
            if cls.LABELLED_KEY in data.files:
                flag = data[cls.LABELLED_KEY]
                if flag.dtype != bool or flag.shape != ():
                    raise DatasetError(f"'{cls.LABELLED_KEY}' must be a boolean scalar, got {flag.dtype} {flag.shape}")
                labelled = bool(flag)
            needed = cls.FIELDS if labelled else tuple(name for name in cls.FIELDS if name not in cls.LABEL_FIELDS)
            missing = [name for name in needed if name not in data.files]
            if missing:
                raise DatasetError(f"not a structure archive: arrays {missing} are missing")
            fields = {name: data[name] for name in needed}
            if fields["numbers"].dtype.kind not in "iu":
                raise DatasetError(f"numbers: expected integers, got {fields['numbers'].dtype}")
            fields["numbers"] = fields["numbers"].astype(np.int64)  # stored as uint8 (older files: int64)
            if not labelled:  # older unlabelled files carry NaN arrays, newer ones none: the same set either way
                fields["energies"] = np.full(len(fields["natoms"]), np.nan)
                fields["forces"] = np.full((len(fields["numbers"]), 3), np.nan)

            return cls(**fields, labelled=labelled, **extras_from_npz(data))


def fit_reference_energies(arrays: StructureArrays, elements: Sequence[str]) -> dict[str, float]:
    """Per-element reference energies (eV/atom) by least squares: energy ≈ Σ_elements count × reference.

    Fitting on energy differences between compositions removes the large constant part that the ACE model would
    otherwise have to learn. Elements without data get 0; degenerate compositions get the minimum-norm solution.
    """
    arrays.require_labels("reference energies cannot be fitted")
    counts = arrays.composition_matrix(elements)
    solution, *_ = np.linalg.lstsq(counts, arrays.energies, rcond=None)
    return {element: float(value) for element, value in zip(elements, solution, strict=True)}


def corrected_energies(arrays: StructureArrays, reference_energies: Mapping[str, float]) -> np.ndarray:
    """Energies minus the per-element references (eV): what Pacemaker fits as ``energy_corrected``."""
    elements = list(reference_energies)
    missing = sorted(set(arrays.elements) - set(elements))
    if missing:
        raise DatasetError(f"reference_energies: no value for element(s) {missing}")
    references = np.array([reference_energies[e] for e in elements])
    return arrays.energies - arrays.composition_matrix(elements) @ references


def zbl_baseline(arrays: StructureArrays, pair_cutoffs: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, ...]:
    """ZBL energies (eV, per structure) and forces (eV/Å, per atom) with per-pair ``(inner, outer)`` cutoffs (Å)."""
    from aiida_autopipec.learning.zbl import ZBLCalculator

    cutoffs = {tuple(key.split("-")): tuple(value) for key, value in pair_cutoffs.items()}
    calculator = ZBLCalculator(*max(cutoffs.values(), key=lambda pair: pair[1]), cutoffs=cutoffs)
    energies, forces = [], []
    for atoms in arrays.to_atoms(with_labels=False):
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.asarray(energies), np.concatenate(forces)


def structure_weight_columns(arrays: StructureArrays, structure_weights: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Pacemaker's ``w_energy`` (one per structure) and ``w_forces`` (one per atom) from one weight per structure.

    Every atom of a structure gets its structure's weight, so equal weights reproduce Pacemaker's default uniform
    policy; only relative values matter (Pacemaker normalises both columns).
    """
    weights = np.asarray(structure_weights, dtype=float).reshape(-1)
    if weights.shape != (arrays.num_structures,):
        raise DatasetError(
            f"structure weights: got {weights.size} for {arrays.num_structures} structures; give one per structure"
        )
    bad = np.flatnonzero(~np.isfinite(weights) | (weights <= 0))
    if len(bad):
        raise DatasetError(f"structure weights: must be finite and > 0; structure {bad[0]} has {weights[bad[0]]}")
    return weights, np.repeat(weights, arrays.natoms)


def to_pacemaker_dataframe(
    arrays: StructureArrays,
    reference_energies: Mapping[str, float],
    energy_weights: np.ndarray | None = None,
    force_weights: np.ndarray | None = None,
    baseline_cutoffs: Mapping[str, Sequence[float]] | None = None,
):
    """Pacemaker's DataFrame. Weights are optional: one per structure (energy) and one per atom (forces).

    With ``baseline_cutoffs`` (delta learning) the ZBL baseline is subtracted: ``energy_corrected`` and ``forces``
    are then the residuals the ACE model learns; ``energy`` keeps the reference total energy.
    """
    import pandas as pd

    arrays.require_labels("it cannot be fitted")
    structures = arrays.to_atoms(with_labels=False)
    offsets = arrays.offsets
    energy_corrected, forces = corrected_energies(arrays, reference_energies), arrays.forces
    if baseline_cutoffs:
        baseline_energies, baseline_forces = zbl_baseline(arrays, baseline_cutoffs)
        energy_corrected, forces = energy_corrected - baseline_energies, forces - baseline_forces
    frame = pd.DataFrame(
        {
            "ase_atoms": structures,
            "energy": arrays.energies,
            "forces": [forces[offsets[i] : offsets[i + 1]] for i in range(arrays.num_structures)],
            "energy_corrected": energy_corrected,
        }
    )
    if (energy_weights is None) != (force_weights is None):
        raise DatasetError("give both energy_weights and force_weights, or neither")
    if energy_weights is not None:
        energy_weights = np.asarray(energy_weights, dtype=float)
        force_weights = np.asarray(force_weights, dtype=float)
        if energy_weights.shape != (arrays.num_structures,) or force_weights.shape != (arrays.num_atoms,):
            raise DatasetError("weights: need one energy weight per structure and one force weight per atom")
        finite = np.isfinite(energy_weights).all() and np.isfinite(force_weights).all()
        if not finite or (energy_weights < 0).any() or (force_weights < 0).any():
            raise DatasetError("weights must be finite and non-negative")
        frame["w_energy"] = energy_weights
        frame["w_forces"] = [force_weights[offsets[i] : offsets[i + 1]] for i in range(arrays.num_structures)]
    return frame


def write_pacemaker_dataset(path: str | os.PathLike, arrays: StructureArrays, reference_energies, **options) -> Path:
    """Write Pacemaker's gzip-pickled DataFrame (only ever into a working directory)."""
    path = Path(path)
    # Compressed only when the name asks for it (Pacemaker reads both): the job's files are temporary, and even
    # gzip level 1 costs ~0.7 s per 10,000 structures of 64 atoms for ~20 % smaller float data.
    compression = {"method": "gzip", "compresslevel": 1} if path.name.endswith((".gz", ".gzip")) else None
    with cyclic_garbage_collection_paused():
        frame = to_pacemaker_dataframe(arrays, reference_energies, **options)
        frame.to_pickle(path, compression=compression)
    return path


def write_extxyz(path: str | os.PathLike, structures: Sequence[Atoms]) -> Path:
    from ase.io import write

    path = Path(path)
    write(path, list(structures), format="extxyz")
    return path


def read_ase_db(
    path: str | os.PathLike, selection: Any = None, progress: Callable | None = None, **key_value_pairs: Any
) -> list[Atoms]:
    """Structures with their stored energies/forces from an ASE database (``ase.db`` selection syntax).

    ``progress(rows, length)`` may wrap the row iterator, e.g. in a progress bar for large databases.
    """
    return [row.toatoms() for row in select_database_rows(path, selection, progress, **key_value_pairs)]


#: The columns of an ASE database row that :meth:`StructureArrays.from_database_rows` reads: selecting only these
#: (and no ``data``) reads a database ~20 % faster.
DATABASE_COLUMNS = ("id", "numbers", "positions", "cell", "pbc", "energy", "forces")


def select_database_rows(
    path: str | os.PathLike,
    selection: Any = None,
    progress: Callable | None = None,
    *,
    columns: Sequence[str] | None = None,
    **key_value_pairs: Any,
) -> list:
    """The rows of an ASE database that ``selection`` and the keyword filters match (at least one), with clear
    errors for missing, empty or corrupt files and bad selections.

    ``columns`` (e.g. :data:`DATABASE_COLUMNS`): read only these, without the rows' ``data``; default: everything.
    """
    import ase.db

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such database file")
    if path.stat().st_size == 0:  # ase.db would write its empty schema into the user's file
        raise DatasetError(f"{path}: the file is empty, not an ASE database")
    described = " ".join(str(part) for part in (repr(selection), key_value_pairs or "") if part)
    try:
        database = ase.db.connect(path)
        database.count()  # reads the file: a corrupt one fails here, not in the selection
    except Exception as exc:
        raise DatasetError(f"{path}: cannot be read as an ASE database: {exc}") from exc
    with database:
        try:
            reading = {} if columns is None else {"include_data": False, "columns": list(columns)}
            rows = database.select(selection, **reading, **key_value_pairs)
            if progress is not None:
                rows = progress(rows, database.count(selection, **key_value_pairs))
            rows = list(rows)
        except Exception as exc:
            raise DatasetError(f"{path}: the selection {described} cannot be applied: {exc}") from exc
    if not rows:
        raise DatasetError(f"{path}: the selection {described} matched no rows")
    return rows
