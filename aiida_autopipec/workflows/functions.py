"""Data steps of the active-learning loop as calcfunctions, so every split and merge is in provenance."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.dataset import DatasetError, StructureArrays

__all__ = ["held_out_indices", "merge_new_structures", "new_structure_indices", "split_held_out"]

#: Two structures are the same when numbers and pbc agree and cells and positions agree to this tolerance (Å).
DUPLICATE_TOLERANCE = 1e-6


def _structures(arrays: StructureArrays) -> list[tuple[bytes, np.ndarray, np.ndarray]]:
    """Per structure: an exact key (atomic numbers, pbc) and the cell and positions to compare within it."""
    offsets = arrays.offsets
    return [
        (
            arrays.numbers[offsets[i] : offsets[i + 1]].tobytes() + arrays.pbc[i].tobytes(),
            arrays.cells[i],
            arrays.positions[offsets[i] : offsets[i + 1]],
        )
        for i in range(arrays.num_structures)
    ]


def new_structure_indices(known: StructureArrays, new: StructureArrays, tolerance: float = DUPLICATE_TOLERANCE) -> list:
    """Indices of the structures of ``new`` that are neither in ``known`` nor earlier in ``new``.

    Compared with a tolerance rather than by hashing rounded coordinates, which splits values that straddle a
    rounding boundary.
    """
    seen: dict[bytes, list[tuple[np.ndarray, np.ndarray]]] = {}
    for key, cell, positions in _structures(known):
        seen.setdefault(key, []).append((cell, positions))
    keep = []
    for index, (key, cell, positions) in enumerate(_structures(new)):
        bucket = seen.setdefault(key, [])
        if any(
            np.allclose(cell, other_cell, rtol=0, atol=tolerance)
            and np.allclose(positions, other_positions, rtol=0, atol=tolerance)
            for other_cell, other_positions in bucket
        ):
            continue
        bucket.append((cell, positions))
        keep.append(index)
    return keep


def held_out_indices(num_structures: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices held out (``fraction`` of the structures, at least one) and kept for training, deterministically."""
    count = max(1, round(num_structures * fraction))
    if count >= num_structures:
        raise DatasetError(f"cannot hold out {count} of {num_structures} structures and still train")
    order = np.random.default_rng(seed).permutation(num_structures)
    return sorted(order[:count].tolist()), sorted(order[count:].tolist())


@calcfunction
def split_held_out(training_set: TrainingSetData, fraction: orm.Float, seed: orm.Int) -> dict:
    """Carve a fixed held-out set (``fraction`` of the structures, at least one) deterministically from the data."""
    arrays = training_set.get_arrays()
    held_out, rest = held_out_indices(arrays.num_structures, fraction.value, seed.value)
    return {
        "training_set": TrainingSetData(arrays=arrays.take(rest)),
        "test_set": TrainingSetData(arrays=arrays.take(held_out)),
    }


@calcfunction
def merge_new_structures(training_set: TrainingSetData, new: TrainingSetData) -> dict:
    """Append the structures of ``new`` that are not already in the set (or twice in ``new``).

    The merged set reuses the stored shards of ``training_set``: the repository grows with the new data only.
    """
    new_arrays = new.get_arrays()
    keep = new_structure_indices(training_set.get_arrays(), new_arrays)
    if not keep:
        return {"training_set": TrainingSetData.merge([training_set]), "added": orm.Int(0)}
    addition = TrainingSetData(arrays=new_arrays.take(keep))
    return {"training_set": TrainingSetData.merge([training_set, addition]), "added": orm.Int(len(keep))}
