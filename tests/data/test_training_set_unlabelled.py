"""Unlabelled ``TrainingSetData``: stored and reloaded with its flag, never merged with labelled data or fitted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.dataset import DatasetError, StructureArrays, write_extxyz
from aiida_autopipec.learning.reference_data import emt_dataset


@pytest.fixture(scope="module")
def labelled():
    return emt_dataset(6, seed=21)


@pytest.fixture(scope="module")
def bare():
    return emt_dataset(6, seed=21, labelled=False)


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def _same_geometry(actual, expected) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.get_chemical_symbols() == want.get_chemical_symbols()
        assert np.array_equal(got.positions, want.positions)
        assert np.array_equal(np.asarray(got.cell), np.asarray(want.cell))
        assert np.array_equal(got.pbc, want.pbc)


def test_unlabelled_round_trip_keeps_the_flag(bare):
    node = TrainingSetData.from_ase(bare, labelled=False)
    assert node.labelled is False
    assert node.num_structures == 6 and node.num_atoms == 48 and node.elements == ["Al", "Cu"]
    attributes = node.base.attributes.all
    assert attributes["labelled"] is False
    assert "energy_range" not in attributes and "max_abs_force" not in attributes
    node.store()

    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, TrainingSetData)
    assert loaded.labelled is False
    arrays = loaded.get_arrays()
    assert arrays.labelled is False and np.isnan(arrays.energies).all() and np.isnan(arrays.forces).all()
    structures = loaded.to_ase()
    assert all(atoms.calc is None for atoms in structures)
    _same_geometry(structures, bare)
    # The shard is the usual safe .npz, with the flag as a boolean array and without the all-NaN labels.
    shard = loaded.base.attributes.get("shards")[0]["file"]
    with np.load(io.BytesIO(loaded.base.repository.get_object_content(shard, mode="rb")), allow_pickle=False) as data:
        geometry = [name for name in StructureArrays.FIELDS if name not in StructureArrays.LABEL_FIELDS]
        assert sorted(data.files) == sorted([*geometry, "labelled"])


def test_labelled_sets_record_the_flag(labelled):
    node = TrainingSetData.from_ase(labelled).store()
    assert orm.load_node(node.pk).labelled is True
    assert node.base.attributes.get("labelled") is True
    assert "energy_range" in node.base.attributes.all


def test_sets_stored_before_the_flag_existed_are_labelled(labelled):
    node = TrainingSetData.from_ase(labelled)
    node.base.attributes.delete("labelled")
    node.store()
    assert orm.load_node(node.pk).labelled is True


def test_from_ase_ignores_labels_when_unlabelled(labelled):
    node = TrainingSetData.from_ase(labelled, labelled=False)
    assert node.labelled is False
    _same_geometry(node.to_ase(), labelled)
    assert (
        node.content_hash
        == TrainingSetData.from_ase(emt_dataset(6, seed=21, labelled=False), labelled=False).content_hash
    )


def test_from_file_unlabelled(bare, tmp_path):
    path = write_extxyz(tmp_path / "candidates.xyz", bare)
    node = TrainingSetData.from_file(path, labelled=False).store()
    assert node.labelled is False and node.num_structures == 6


def test_without_labels_drops_labels(labelled):
    node = TrainingSetData.from_ase(labelled).store()
    candidates = node.without_labels()
    assert not candidates.is_stored
    assert candidates.labelled is False
    assert candidates.num_structures == node.num_structures and candidates.elements == node.elements
    assert candidates.content_hash == TrainingSetData.from_ase(labelled, labelled=False).content_hash
    _same_geometry(candidates.to_ase(), labelled)
    assert node.labelled is True  # the original is untouched


def test_merge_of_unlabelled_sets(bare):
    first = TrainingSetData.from_ase(bare[:4], labelled=False).store()
    second = TrainingSetData.from_ase(bare[4:], labelled=False).store()
    merged = TrainingSetData.merge([first, second]).store()
    assert merged.labelled is False and merged.num_structures == 6
    _same_geometry(orm.load_node(merged.pk).to_ase(), bare)


def test_merge_refuses_to_mix(labelled, bare):
    parts = [TrainingSetData.from_ase(labelled[:3]), TrainingSetData.from_ase(bare[3:], labelled=False)]
    with pytest.raises(DatasetError, match=r"cannot merge labelled and unlabelled sets \(sets \[1\]"):
        TrainingSetData.merge(parts)


def test_bad_geometry_is_rejected_before_storing(bare):
    broken = [atoms.copy() for atoms in bare[:2]]
    broken[1].positions[1] = broken[1].positions[0] + 0.01
    before = _node_count()
    with pytest.raises(DatasetError, match=r"structure 1 .*atoms overlap"):
        TrainingSetData.from_ase(broken, labelled=False)
    assert _node_count() == before


@pytest.mark.parametrize("port", ["training_set", "test_set"])
def test_pacemaker_calculation_rejects_unlabelled_data(aiida_code_installed, local_computer, labelled, bare, port):
    code = aiida_code_installed(
        label="never-run-pacemaker",
        default_calc_job_plugin="autopipec.pacemaker",
        computer=local_computer,
        filepath_executable="/bin/false",
    )
    inputs = {
        "code": code,
        "training_set": TrainingSetData.from_ase(labelled),
        "parameters": orm.Dict({"cutoff": 4.5}),
    }
    inputs[port] = TrainingSetData.from_ase(bare, labelled=False)
    before = _node_count()
    with pytest.raises(ValueError, match=f"{port}: is unlabelled .*cannot be fitted"):
        run_get_node(PacemakerCalculation, **inputs)
    assert _node_count() == before


def test_content_hash_of_unlabelled_sets_ignores_the_nan_payload(bare):
    arrays = StructureArrays.from_atoms(bare, labelled=False)
    other_nan = np.frombuffer(np.uint64(0x7FF8DEADBEEF0001).tobytes(), dtype=float)[0]
    assert np.isnan(other_nan)
    fields = {name: getattr(arrays, name).copy() for name in StructureArrays.FIELDS}
    fields["energies"][:] = other_nan
    fields["forces"][:] = -other_nan
    odd = StructureArrays(**fields, labelled=False)
    assert TrainingSetData(arrays=odd).content_hash == TrainingSetData(arrays=arrays).content_hash
