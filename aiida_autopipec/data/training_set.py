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

from aiida_autopipec.learning.dataset import DatasetError, StructureArrays
from aiida_autopipec.learning.label_extras import hash_extras
from aiida_autopipec.learning.readers import ImportedData, read_extxyz_data, read_pacemaker_frame

__all__ = ["TrainingSetData"]

SHARD_FOLDER = "shards"


def _content_hash(arrays: StructureArrays) -> str:
    """SHA-256 of the array contents (dtype, shape and bytes of every field), independent of file encoding."""
    digest = hashlib.sha256()
    for name in StructureArrays.FIELDS:
        value = np.ascontiguousarray(getattr(arrays, name))
        digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    hash_extras(arrays, digest)  # stress, weights, reference energies: only when present
    return digest.hexdigest()


class TrainingSetData(orm.Data):
    """Structures with reference energies (eV) and forces (eV/Å) for fitting, or without them (``labelled`` False:
    candidates to be labelled, e.g. by ``AseLabelCalculation``; they cannot be fitted).

    The data live in the file repository as ``.npz`` shards (loaded with ``allow_pickle=False``), one per addition,
    so a merged set re-uses the files of its parts (the repository de-duplicates them) instead of copying them.
    Attributes: ``num_structures``, ``num_atoms``, ``elements``, ``content_hash``, ``labelled``, the list of
    ``shards`` and, for labelled sets only, ``energy_range`` (eV) and ``max_abs_force`` (eV/Å). When the data have
    them: ``reference_energies`` ({element: eV/atom} belonging to the energies; a fit subtracts them unless its
    parameters give explicit ones), ``energies_corrected`` (True: energies already corrected, references 0),
    ``has_weights`` (Pacemaker's w_energy/w_forces, used by fits without ``structure_weights``), ``has_stress``
    (eV/Å³), and ``import_notes`` (what the reader found, kept or ignored).
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
    def from_file(
        cls,
        path: str | os.PathLike,
        index: str = ":",
        *,
        energy_key: str | None = None,
        forces_key: str | None = None,
        **kwargs: Any,
    ) -> TrainingSetData:
        """From an extxyz file with energies (eV) and forces (eV/Å); stress (eV/Å³, or virial in eV converted to
        stress = −virial/volume) is kept when present. ``energy_key``/``forces_key``: take the labels from
        ``atoms.info[energy_key]`` and ``atoms.arrays[forces_key]`` (e.g. ``REF_energy``/``REF_forces``).
        ``labelled=False``: structures only; ``elements``: the allowed elements."""
        return cls.from_imported(read_extxyz_data(path, index, energy_key, forces_key, **kwargs))

    @classmethod
    def from_pacemaker_pickle(cls, path: str | os.PathLike, **kwargs: Any) -> TrainingSetData:
        """From Pacemaker's (gzip-)pickled DataFrame as Pacemaker accepts it: ``energy_corrected`` with or without
        ``energy``, optional ``w_energy``/``w_forces`` (see :mod:`aiida_autopipec.learning.readers`).

        Unpickling runs arbitrary code from the file: only for files you trust.
        """
        return cls.from_imported(read_pacemaker_frame(path, **kwargs))

    @classmethod
    def from_imported(cls, imported: ImportedData) -> TrainingSetData:
        """From a reader's result; its notes are kept in the ``import_notes`` attribute."""
        node = cls(arrays=imported.arrays)
        if imported.notes:
            node.base.attributes.set("import_notes", list(imported.notes))
        return node

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
        corrected = [index for index, training_set in enumerate(training_sets) if training_set.energies_corrected]
        if corrected and len(corrected) != len(training_sets):
            raise DatasetError(
                f"cannot merge sets whose energies are already corrected (sets {corrected}: Pacemaker's "
                "energy_corrected, reference energies 0) with sets of total energies: they are on different scales; "
                "import total energies for all, or correct the others with the same references first"
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
        optional = {
            "reference_energies": joined.reference_energies,
            "energies_corrected": joined.energies_corrected or None,
            "has_weights": joined.energy_weights is not None or None,
            "has_stress": joined.stress is not None or None,
        }
        for name, value in optional.items():
            if value is not None:  # a new node: nothing to delete otherwise
                attributes.set(name, dict(value) if name == "reference_energies" else value)

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

    @property
    def reference_energies(self) -> dict[str, float] | None:
        """Per-element reference energies (eV/atom) that belong to the stored energies, or None (fits fit them)."""
        return self.base.attributes.get("reference_energies", None)

    @property
    def energies_corrected(self) -> bool:
        """Whether the stored energies are already corrected (reference energies 0; nothing is subtracted)."""
        return bool(self.base.attributes.get("energies_corrected", False))

    @property
    def import_notes(self) -> list[str]:
        return list(self.base.attributes.get("import_notes", []))

    def get_arrays(self) -> StructureArrays:
        """All structures as one :class:`StructureArrays` (shards joined in order)."""
        parts = []
        for shard in self.base.attributes.get("shards"):
            with self.base.repository.open(shard["file"], mode="rb") as handle:
                parts.append(StructureArrays.load_npz(io.BytesIO(handle.read())))
        return StructureArrays.concatenate(parts)

    def to_ase(self) -> list[Atoms]:
        """ASE structures with energy (eV), forces (eV/Å) and, where stored, stress (eV/Å³) in a
        SinglePointCalculator (none when unlabelled)."""
        return self.get_arrays().to_atoms()

    def __len__(self) -> int:
        return self.num_structures
