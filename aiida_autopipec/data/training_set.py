"""``TrainingSetData``: structures with energies (eV) and forces (eV/Å), or unlabelled ones, stored without pickle."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiida import orm
from ase import Atoms

from aiida_autopipec.learning.dataset import (
    DatasetError,
    StructureArrays,
    read_extxyz,
)

__all__ = ["TrainingSetData"]

SHARD_FOLDER = "shards"


def _content_hash(arrays: StructureArrays) -> str:
    """SHA-256 of the array contents (dtype, shape and bytes of every field), independent of file encoding."""
    digest = hashlib.sha256()
    for name in StructureArrays.FIELDS:
        value = np.ascontiguousarray(getattr(arrays, name))
        digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class TrainingSetData(orm.Data):
    """Structures with reference energies (eV) and forces (eV/Å) for fitting, or without them (``labelled`` False:
    candidates to be labelled, e.g. by ``AseLabelCalculation``; they cannot be fitted).

    The data live in the file repository as ``.npz`` shards (loaded with ``allow_pickle=False``), one per addition,
    so a merged set re-uses the files of its parts (the repository de-duplicates them) instead of copying them.
    Attributes: ``num_structures``, ``num_atoms``, ``elements``, ``content_hash``, ``labelled``, the list of
    ``shards`` and, for labelled sets only, ``energy_range`` (eV) and ``max_abs_force`` (eV/Å).
    """

    def __init__(self, arrays: StructureArrays | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if arrays is not None:
            self._set_shards([arrays])

    # -- constructors --------------------------------------------------------------------------------------
    @classmethod
    def from_ase(
        cls, structures: Sequence[Atoms], elements: Sequence[str] | None = None, labelled: bool = True
    ) -> TrainingSetData:
        """From ASE structures carrying energy and forces (calculator results or extxyz info/arrays).

        ``labelled=False``: keep only the structures (any labels they carry are ignored), e.g. candidates to label.
        """
        return cls(arrays=StructureArrays.from_atoms(structures, elements, labelled=labelled))

    @classmethod
    def from_file(cls, path: str | os.PathLike, index: str = ":", **kwargs: Any) -> TrainingSetData:
        """From an extxyz file with energies and forces (``labelled=False``: structures only)."""
        return cls.from_ase(read_extxyz(path, index), **kwargs)

    @classmethod
    def from_ase_db(cls, path: str | os.PathLike, selection: Any = None, **key_value_pairs: Any) -> TrainingSetData:
        """From an ASE database; ``selection`` and keyword filters use ``ase.db`` query syntax."""
        return cls(arrays=StructureArrays.from_ase_db(path, selection, **key_value_pairs))

    @classmethod
    def from_structures(
        cls, structures: Sequence[orm.StructureData], energies: Sequence[float], forces: Sequence[Any]
    ) -> TrainingSetData:
        """From AiiDA ``StructureData`` nodes with one energy (eV) and one (n_atoms, 3) force array (eV/Å) each."""
        structures = list(structures)
        if len(energies) != len(structures) or len(forces) != len(structures):
            raise DatasetError(
                f"got {len(structures)} structures, {len(energies)} energies and {len(forces)} force arrays"
            )
        atoms_list = []
        for index, (structure, energy, force) in enumerate(zip(structures, energies, forces, strict=True)):
            if not isinstance(structure, orm.StructureData):
                raise DatasetError(f"structure {index}: expected StructureData, got {type(structure).__name__}")
            atoms = structure.get_ase()
            atoms.info["energy"] = energy
            force = np.asarray(force, dtype=float)
            if force.shape != (len(atoms), 3):
                raise DatasetError(f"structure {index}: forces have shape {force.shape}, expected ({len(atoms)}, 3)")
            atoms.arrays["forces"] = force
            atoms_list.append(atoms)
        return cls.from_ase(atoms_list)

    @classmethod
    def merge(cls, training_sets: Sequence[TrainingSetData]) -> TrainingSetData:
        """One set holding the shards of all given sets, in order; stored files are reused, not re-encoded."""
        if not training_sets:
            raise DatasetError("nothing to merge")
        if len({training_set.labelled for training_set in training_sets}) > 1:
            unlabelled = [index for index, training_set in enumerate(training_sets) if not training_set.labelled]
            raise DatasetError(
                f"cannot merge labelled and unlabelled sets (sets {unlabelled} are unlabelled): "
                "label the candidates first, or merge their without_labels() copies"
            )
        merged = cls()
        shards = []
        for training_set in training_sets:
            for shard in training_set.base.attributes.get("shards"):
                content = training_set.base.repository.get_object_content(shard["file"], mode="rb")
                merged.base.repository.put_object_from_bytes(content, shard["file"])
                shards.append(shard)
        merged._set_attributes(shards, [s.get_arrays() for s in training_sets])
        return merged

    def without_labels(self) -> TrainingSetData:
        """A new (unstored) unlabelled set of the same structures: labels, if any, are dropped."""
        return type(self)(arrays=self.get_arrays().without_labels())

    # -- storage -------------------------------------------------------------------------------------------
    def _set_shards(self, parts: Sequence[StructureArrays]) -> None:
        shards, stored = [], []
        for arrays in parts:
            if not arrays.labelled:  # one NaN bit pattern, so equal structures hash equal
                arrays = arrays.without_labels()
            stored.append(arrays)
            content_hash = _content_hash(arrays)
            buffer = io.BytesIO()
            arrays.save_npz(buffer)
            filename = f"{SHARD_FOLDER}/{content_hash}.npz"
            self.base.repository.put_object_from_bytes(buffer.getvalue(), filename)
            shards.append(
                {
                    "file": filename,
                    "content_hash": content_hash,
                    "num_structures": arrays.num_structures,
                    "num_atoms": arrays.num_atoms,
                }
            )
        self._set_attributes(shards, stored)

    def _set_attributes(self, shards: list[dict], parts: Sequence[StructureArrays]) -> None:
        joined = parts[0] if len(parts) == 1 else StructureArrays.concatenate(list(parts))
        # One shard holds exactly the joined arrays: its hash is theirs (hashing 10,000 structures costs ~30 ms).
        content_hash = shards[0]["content_hash"] if len(shards) == 1 else _content_hash(joined)
        attributes = self.base.attributes
        attributes.set("shards", shards)
        attributes.set("num_structures", joined.num_structures)
        attributes.set("num_atoms", joined.num_atoms)
        attributes.set("elements", joined.elements)
        attributes.set("content_hash", content_hash)
        attributes.set("labelled", joined.labelled)
        if joined.labelled:
            attributes.set("energy_range", [float(joined.energies.min()), float(joined.energies.max())])
            attributes.set("max_abs_force", float(np.abs(joined.forces).max()))

    # -- access --------------------------------------------------------------------------------------------
    @property
    def num_structures(self) -> int:
        return self.base.attributes.get("num_structures")

    @property
    def num_atoms(self) -> int:
        return self.base.attributes.get("num_atoms")

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get("elements")

    @property
    def content_hash(self) -> str:
        return self.base.attributes.get("content_hash")

    @property
    def labelled(self) -> bool:
        """Whether the structures carry energies and forces (sets stored before the flag existed are labelled)."""
        return bool(self.base.attributes.get("labelled", True))

    def get_arrays(self) -> StructureArrays:
        """All structures as one :class:`StructureArrays` (shards joined in order)."""
        parts = []
        for shard in self.base.attributes.get("shards"):
            with self.base.repository.open(shard["file"], mode="rb") as handle:
                parts.append(StructureArrays.load_npz(io.BytesIO(handle.read())))
        return StructureArrays.concatenate(parts)

    def to_ase(self) -> list[Atoms]:
        """ASE structures with energy (eV) and forces (eV/Å) in a SinglePointCalculator (none when unlabelled)."""
        return self.get_arrays().to_atoms()

    def __len__(self) -> int:
        return self.num_structures
