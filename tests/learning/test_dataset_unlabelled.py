"""Unlabelled ``StructureArrays``: NaN labels, the flag kept in ``.npz``, geometry still checked, never fitted."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from aiida_autopipec.learning.dataset import (
    DatasetError,
    StructureArrays,
    fit_reference_energies,
    to_pacemaker_dataframe,
    write_pacemaker_dataset,
)
from aiida_autopipec.learning.reference_data import emt_dataset


@pytest.fixture(scope="module")
def emt_labelled():
    """Five EMT-labelled Al-Cu structures (8 atoms each)."""
    return emt_dataset(5, seed=3)


@pytest.fixture(scope="module")
def bare():
    """The same kind of structures without any calculator or labels."""
    return emt_dataset(5, seed=3, labelled=False)


def _same_geometry(actual: list[Atoms], expected: list[Atoms]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.get_chemical_symbols() == want.get_chemical_symbols()
        assert np.array_equal(got.positions, want.positions)
        assert np.array_equal(np.asarray(got.cell), np.asarray(want.cell))
        assert np.array_equal(got.pbc, want.pbc)


# -- construction ----------------------------------------------------------------------------------------------
def test_from_atoms_without_labels_stores_nan(bare):
    arrays = StructureArrays.from_atoms(bare, labelled=False)
    assert arrays.labelled is False
    assert arrays.num_structures == 5 and arrays.num_atoms == 40
    assert arrays.energies.shape == (5,) and np.isnan(arrays.energies).all()
    assert arrays.forces.shape == (40, 3) and np.isnan(arrays.forces).all()
    assert arrays.elements == ["Al", "Cu"]


def test_labelled_is_the_default(emt_labelled):
    assert StructureArrays.from_atoms(emt_labelled).labelled is True


def test_structures_without_labels_need_labelled_false(bare):
    with pytest.raises(DatasetError, match=r"structure 0 .*: no energy"):
        StructureArrays.from_atoms(bare)


def test_labels_present_are_ignored_when_unlabelled(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled, labelled=False)
    assert np.isnan(arrays.energies).all() and np.isnan(arrays.forces).all()
    _same_geometry(arrays.to_atoms(), emt_labelled)


def test_to_atoms_of_unlabelled_set_has_no_calculator(bare):
    structures = StructureArrays.from_atoms(bare, labelled=False).to_atoms()
    assert all(atoms.calc is None for atoms in structures)
    _same_geometry(structures, bare)


def test_elements_are_checked_when_unlabelled(bare):
    with pytest.raises(DatasetError, match=r"\['Cu'\] that are not in elements \['Al'\]"):
        StructureArrays.from_atoms(bare, elements=["Al"], labelled=False)


def test_overlapping_atoms_are_rejected_when_unlabelled():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0.05, 0, 0]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(DatasetError, match=r"structure 0 .*atoms overlap"):
        StructureArrays.from_atoms([atoms], labelled=False)


def test_degenerate_cell_is_rejected_when_unlabelled():
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(DatasetError, match="degenerate"):
        StructureArrays.from_atoms([atoms], labelled=False)


# -- validation ------------------------------------------------------------------------------------------------
def _fields(arrays: StructureArrays) -> dict:
    return {name: getattr(arrays, name).copy() for name in StructureArrays.FIELDS}


def test_unlabelled_set_must_have_all_nan_labels(bare):
    fields = _fields(StructureArrays.from_atoms(bare, labelled=False))
    fields["energies"][3] = -1.0
    with pytest.raises(DatasetError, match="structure 3: unlabelled, but has a value for its energy"):
        StructureArrays(**fields, labelled=False)
    fields = _fields(StructureArrays.from_atoms(bare, labelled=False))
    fields["forces"][17, 1] = 0.0  # an atom of structure 2
    with pytest.raises(DatasetError, match="structure 2: unlabelled, but has a value for its forces"):
        StructureArrays(**fields, labelled=False)


def test_nan_labels_of_a_labelled_set_are_still_rejected(bare):
    fields = _fields(StructureArrays.from_atoms(bare, labelled=False))
    with pytest.raises(DatasetError, match="structure 0: energy contain NaN"):
        StructureArrays(**fields)


def test_positions_must_be_finite_when_unlabelled(bare):
    fields = _fields(StructureArrays.from_atoms(bare, labelled=False))
    fields["positions"][9, 0] = np.inf
    with pytest.raises(DatasetError, match="structure 1: positions contain NaN or inf"):
        StructureArrays(**fields, labelled=False)


def test_labelled_flag_must_be_a_bool(bare):
    fields = _fields(StructureArrays.from_atoms(bare, labelled=False))
    with pytest.raises(DatasetError, match="labelled: expected True or False"):
        StructureArrays(**fields, labelled="no")


# -- conversions -----------------------------------------------------------------------------------------------
def test_without_labels_and_with_labels_round_trip(emt_labelled):
    labelled = StructureArrays.from_atoms(emt_labelled)
    unlabelled = labelled.without_labels()
    assert unlabelled.labelled is False and np.isnan(unlabelled.energies).all()
    relabelled = unlabelled.with_labels(labelled.energies, labelled.forces)
    assert relabelled.labelled is True
    for name in StructureArrays.FIELDS:
        assert np.array_equal(getattr(relabelled, name), getattr(labelled, name)), name


def test_take_selects_structures_in_order(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled)
    picked = arrays.take([3, 0])
    assert picked.labelled is True
    assert picked.energies.tolist() == [arrays.energies[3], arrays.energies[0]]
    _same_geometry(picked.to_atoms(), [emt_labelled[3], emt_labelled[0]])
    assert np.array_equal(picked.forces[:8], emt_labelled[3].get_forces())
    assert arrays.without_labels().take([1]).labelled is False
    with pytest.raises(DatasetError, match=r"outside 0..4"):
        arrays.take([5])


# -- concatenation ---------------------------------------------------------------------------------------------
def test_concatenate_unlabelled_parts(bare):
    joined = StructureArrays.concatenate(
        [StructureArrays.from_atoms(bare[:2], labelled=False), StructureArrays.from_atoms(bare[2:], labelled=False)]
    )
    assert joined.labelled is False and joined.num_structures == 5
    _same_geometry(joined.to_atoms(), bare)


def test_concatenate_refuses_to_mix(emt_labelled, bare):
    parts = [StructureArrays.from_atoms(emt_labelled[:2]), StructureArrays.from_atoms(bare[2:], labelled=False)]
    with pytest.raises(DatasetError, match=r"cannot join labelled and unlabelled structures \(parts \[1\]"):
        StructureArrays.concatenate(parts)


# -- file format -----------------------------------------------------------------------------------------------
def test_npz_round_trip_keeps_the_flag(bare, tmp_path):
    arrays = StructureArrays.from_atoms(bare, labelled=False)
    arrays.save_npz(tmp_path / "candidates.npz")
    with np.load(tmp_path / "candidates.npz", allow_pickle=False) as data:
        assert data["labelled"].dtype == bool and not bool(data["labelled"])
    loaded = StructureArrays.load_npz(tmp_path / "candidates.npz")
    assert loaded.labelled is False
    for name in StructureArrays.FIELDS:
        assert np.array_equal(getattr(loaded, name), getattr(arrays, name), equal_nan=True), name
    _same_geometry(loaded.to_atoms(), bare)


def test_labelled_npz_has_the_old_layout_and_loads_labelled(emt_labelled, tmp_path):
    arrays = StructureArrays.from_atoms(emt_labelled)
    arrays.save_npz(tmp_path / "set.npz")
    with np.load(tmp_path / "set.npz", allow_pickle=False) as data:
        assert sorted(data.files) == sorted(StructureArrays.FIELDS)
    assert StructureArrays.load_npz(tmp_path / "set.npz").labelled is True


def test_file_without_flag_loads_as_labelled(emt_labelled, tmp_path):
    """Files written before the flag existed: plain arrays only."""
    arrays = StructureArrays.from_atoms(emt_labelled)
    np.savez(tmp_path / "old.npz", **{name: getattr(arrays, name) for name in StructureArrays.FIELDS})
    loaded = StructureArrays.load_npz(tmp_path / "old.npz")
    assert loaded.labelled is True
    assert np.array_equal(loaded.energies, arrays.energies)


def test_file_with_bad_flag_is_rejected(bare, tmp_path):
    arrays = StructureArrays.from_atoms(bare, labelled=False)
    fields = {name: getattr(arrays, name) for name in StructureArrays.FIELDS}
    np.savez(tmp_path / "bad.npz", **fields, labelled=np.array([0, 1]))
    with pytest.raises(DatasetError, match="'labelled' must be a boolean scalar"):
        StructureArrays.load_npz(tmp_path / "bad.npz")


def test_file_claiming_labels_with_nan_is_rejected(bare, tmp_path):
    """An unlabelled file stripped of its flag is not silently taken as labelled data."""
    arrays = StructureArrays.from_atoms(bare, labelled=False)
    np.savez(tmp_path / "stripped.npz", **{name: getattr(arrays, name) for name in StructureArrays.FIELDS})
    with pytest.raises(DatasetError, match="NaN"):
        StructureArrays.load_npz(tmp_path / "stripped.npz")


# -- never fitted ----------------------------------------------------------------------------------------------
def test_unlabelled_data_cannot_be_fitted(bare, tmp_path):
    arrays = StructureArrays.from_atoms(bare, labelled=False)
    with pytest.raises(DatasetError, match=r"unlabelled .*cannot be fitted"):
        to_pacemaker_dataframe(arrays, {"Al": 0.0, "Cu": 0.0})
    with pytest.raises(DatasetError, match=r"unlabelled .*cannot be fitted"):
        write_pacemaker_dataset(tmp_path / "data.pckl.gzip", arrays, {"Al": 0.0, "Cu": 0.0})
    assert not (tmp_path / "data.pckl.gzip").exists()
    with pytest.raises(DatasetError, match=r"unlabelled .*reference energies cannot be fitted"):
        fit_reference_energies(arrays, ["Al", "Cu"])


def test_unlabelled_file_leaves_out_the_nan_labels_and_older_files_still_load(bare, tmp_path):
    arrays = StructureArrays.from_atoms(bare, labelled=False)
    arrays.save_npz(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as data:
        assert "forces" not in data.files and "energies" not in data.files
    older = {name: getattr(arrays, name) for name in StructureArrays.FIELDS}  # NaN arrays written out
    np.savez_compressed(tmp_path / "old.npz", **older, labelled=np.array(False))
    for name in ("new.npz", "old.npz"):
        loaded = StructureArrays.load_npz(tmp_path / name)
        assert not loaded.labelled and np.isnan(loaded.forces).all() and np.isnan(loaded.energies).all()
        assert loaded.forces.shape == arrays.forces.shape and np.array_equal(loaded.positions, arrays.positions)
    np.savez(tmp_path / "labelled_without_forces.npz", **{k: v for k, v in older.items() if k != "forces"})
    with pytest.raises(DatasetError, match=r"arrays \['forces'\] are missing"):
        StructureArrays.load_npz(tmp_path / "labelled_without_forces.npz")
