"""Data steps of the active-learning loop: held-out split, deduplicating merge."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.reference_data import emt_dataset
from aiida_autopipec.workflows.functions import (
    merge_new_structures,
    new_structure_indices,
    split_held_out,
)


@pytest.fixture(scope="module")
def structures():
    return emt_dataset(10, seed=11)


def test_split_is_deterministic_and_disjoint(structures):
    data = TrainingSetData.from_ase(structures)
    first = split_held_out(data, orm.Float(0.2), orm.Int(5))
    second = split_held_out(data, orm.Float(0.2), orm.Int(5))
    assert first["test_set"].num_structures == 2 and first["training_set"].num_structures == 8
    assert first["test_set"].content_hash == second["test_set"].content_hash
    test_arrays, train_arrays = first["test_set"].get_arrays(), first["training_set"].get_arrays()
    assert new_structure_indices(train_arrays, test_arrays) == [0, 1]  # none of the held-out is in training
    assert split_held_out(data, orm.Float(0.2), orm.Int(6))["test_set"].content_hash != first["test_set"].content_hash


def test_merge_adds_only_new_structures_and_reuses_stored_shards(structures):
    base = TrainingSetData.from_ase(structures[:6]).store()
    # Two already known (one with positions differing by 1e-9 Å: the same structure), three new, one new twice.
    from ase.calculators.singlepoint import SinglePointCalculator

    nudged = structures[1].copy()
    nudged.positions += 1e-9
    nudged.calc = SinglePointCalculator(
        nudged, energy=structures[1].get_potential_energy(), forces=structures[1].get_forces()
    )
    new = TrainingSetData.from_ase([structures[0], nudged, *structures[6:9], structures[6]])
    result = merge_new_structures(base, new)
    merged = result["training_set"]
    assert result["added"].value == 3
    assert merged.num_structures == 9
    assert merged.base.attributes.get("shards")[0] == base.base.attributes.get("shards")[0]
    expected = [*structures[:6], *structures[6:9]]
    for atoms, reference in zip(merged.to_ase(), expected, strict=True):
        assert np.array_equal(atoms.positions, reference.positions)
        assert atoms.get_potential_energy() == reference.get_potential_energy()
    assert merged.base.links.get_incoming().first().node.process_label == "merge_new_structures"
