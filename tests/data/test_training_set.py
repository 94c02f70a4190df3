"""``TrainingSetData``: constructors, exact ``.npz`` shards (no pickle), hashing, merging, validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from aiida import orm

from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.dataset import DatasetError, StructureArrays, write_extxyz
from aiida_autopipec.learning.reference_data import emt_dataset

#: extxyz writes positions and forces with 8 decimals: values read back agree to ~5e-9 only.
EXTXYZ_ATOL = 1e-7


@pytest.fixture(scope="module")
def structures():
    """Six EMT-labelled Al-Cu structures, 8 atoms each (energies in eV, forces in eV/Å)."""
    return emt_dataset(6, seed=21)


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def _assert_round_trip(actual, expected, atol: float = 0.0) -> None:
    """Same structures and labels: bit-for-bit when ``atol`` is 0."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.get_chemical_symbols() == want.get_chemical_symbols()
        assert np.array_equal(np.asarray(got.cell), np.asarray(want.cell))
        assert np.array_equal(got.pbc, want.pbc)
        assert got.get_potential_energy() == want.get_potential_energy()
        if atol == 0.0:
            assert np.array_equal(got.positions, want.positions)
            assert np.array_equal(got.get_forces(), want.get_forces())
        else:
            np.testing.assert_allclose(got.positions, want.positions, rtol=0, atol=atol)
            np.testing.assert_allclose(got.get_forces(), want.get_forces(), rtol=0, atol=atol)


def _shard_files(node: TrainingSetData) -> list[str]:
    return [shard["file"] for shard in node.base.attributes.get("shards")]


# -- constructors and exact round trip -----------------------------------------------------------------------
def test_from_ase_attributes_and_round_trip(structures):
    node = TrainingSetData.from_ase(structures)
    assert node.num_structures == len(node) == 6
    assert node.num_atoms == 48
    assert node.elements == ["Al", "Cu"]
    assert isinstance(node.content_hash, str)
    assert len(node.content_hash) == 64
    energies = [atoms.get_potential_energy() for atoms in structures]
    assert node.base.attributes.get("energy_range") == [min(energies), max(energies)]

    node.store()
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, TrainingSetData)
    assert loaded.uuid == node.uuid
    assert loaded.content_hash == node.content_hash
    _assert_round_trip(loaded.to_ase(), structures)


def test_from_ase_checks_elements(structures):
    with pytest.raises(DatasetError, match=r"\['Cu'\] that are not in elements \['Al'\]"):
        TrainingSetData.from_ase(structures, elements=["Al"])


def test_from_file_extxyz(structures, tmp_path):
    path = write_extxyz(tmp_path / "data.xyz", structures)
    node = TrainingSetData.from_file(path).store()
    assert node.num_structures == 6
    assert node.num_atoms == 48
    assert node.elements == ["Al", "Cu"]
    # What was read from the file is stored exactly; the file itself holds positions/forces to 8 decimals.
    _assert_round_trip(orm.load_node(node.pk).to_ase(), structures, atol=EXTXYZ_ATOL)

    partial = TrainingSetData.from_file(path, index="2:4")
    assert partial.num_structures == 2
    assert partial.get_arrays().energies.tolist() == [a.get_potential_energy() for a in structures[2:4]]


def test_from_ase_db_with_selection(structures, tmp_path):
    import ase.db

    path = tmp_path / "structures.db"
    with ase.db.connect(path) as database:
        for index, atoms in enumerate(structures):
            database.write(atoms, config="bulk" if index % 2 == 0 else "rattled")
    node = TrainingSetData.from_ase_db(path, config="rattled").store()
    assert node.num_structures == 3
    _assert_round_trip(orm.load_node(node.pk).to_ase(), structures[1::2])

    assert TrainingSetData.from_ase_db(path, "config=bulk").num_structures == 3
    assert TrainingSetData.from_ase_db(path).num_structures == 6


def test_from_structures(structures):
    structure_nodes = [orm.StructureData(ase=atoms) for atoms in structures]
    energies = [atoms.get_potential_energy() for atoms in structures]
    forces = [atoms.get_forces() for atoms in structures]
    node = TrainingSetData.from_structures(structure_nodes, np.array(energies), forces).store()
    assert node.num_structures == 6
    assert node.num_atoms == 48
    assert node.elements == ["Al", "Cu"]
    _assert_round_trip(orm.load_node(node.pk).to_ase(), structures)
    # Same data as from ASE directly: same hash.
    assert node.content_hash == TrainingSetData.from_ase(structures).content_hash


# -- storage format ------------------------------------------------------------------------------------------
def test_repository_holds_only_npz_shards(structures):
    node = TrainingSetData.from_ase(structures).store()
    repository = node.base.repository
    assert repository.list_object_names() == ["shards"]
    names = repository.list_object_names("shards")
    assert names == [f"{node.content_hash}.npz"]
    assert _shard_files(node) == [f"shards/{name}" for name in names]
    for name in names:
        content = repository.get_object_content(f"shards/{name}", mode="rb")
        assert content[:2] == b"PK"  # a zip archive of .npy arrays
        with np.load(io.BytesIO(content), allow_pickle=False) as data:
            assert sorted(data.files) == sorted(StructureArrays.FIELDS)
            for field in StructureArrays.FIELDS:
                assert data[field].dtype != object, field
            assert data["energies"].tolist() == [a.get_potential_energy() for a in structures]


def test_content_hash_depends_only_on_the_data(structures):
    first = TrainingSetData.from_ase(structures)
    # Freshly made but identical structures (new Atoms objects, same numbers) hash the same.
    assert TrainingSetData.from_ase(emt_dataset(6, seed=21)).content_hash == first.content_hash
    assert TrainingSetData.from_ase(StructureArrays.from_atoms(structures).to_atoms()).content_hash == (
        first.content_hash
    )
    assert TrainingSetData.from_ase(structures[:5]).content_hash != first.content_hash
    assert TrainingSetData.from_ase(structures[::-1]).content_hash != first.content_hash
    assert TrainingSetData.from_ase(emt_dataset(6, seed=22)).content_hash != first.content_hash

    changed = StructureArrays.from_atoms(structures).to_atoms()
    changed[0].calc.results["energy"] += 1e-9
    assert TrainingSetData.from_ase(changed).content_hash != first.content_hash
    changed = StructureArrays.from_atoms(structures).to_atoms()
    changed[3].calc.results["forces"][5, 2] += 1e-9
    assert TrainingSetData.from_ase(changed).content_hash != first.content_hash


def test_stored_content_hash_survives_reload(structures):
    node = TrainingSetData.from_ase(structures).store()
    loaded = orm.load_node(node.pk)
    assert loaded.content_hash == node.content_hash
    from aiida_autopipec.data.training_set import _content_hash

    assert _content_hash(loaded.get_arrays()) == node.content_hash


# -- merge ---------------------------------------------------------------------------------------------------
def test_merge_concatenates_in_order_and_reuses_shards(structures):
    first = TrainingSetData.from_ase(structures[:2]).store()
    second = TrainingSetData.from_ase(structures[2:]).store()
    merged = TrainingSetData.merge([first, second])
    assert merged.num_structures == 6
    assert merged.num_atoms == 48
    assert merged.elements == ["Al", "Cu"]
    assert merged.content_hash == TrainingSetData.from_ase(structures).content_hash
    _assert_round_trip(merged.to_ase(), structures)

    # The shards are those of the parts, in order: same names and content hashes, no re-encoding.
    assert merged.base.attributes.get("shards") == [
        *first.base.attributes.get("shards"),
        *second.base.attributes.get("shards"),
    ]
    assert _shard_files(merged) == [*_shard_files(first), *_shard_files(second)]
    merged.store()
    for part in (first, second):
        (filename,) = _shard_files(part)
        merged_key = merged.base.repository.get_object(filename).key
        assert merged_key == part.base.repository.get_object(filename).key
        assert merged.base.repository.get_object_content(filename, mode="rb") == (
            part.base.repository.get_object_content(filename, mode="rb")
        )
    _assert_round_trip(orm.load_node(merged.pk).to_ase(), structures)


def test_merge_of_merged_sets_keeps_order(structures):
    parts = [TrainingSetData.from_ase(structures[i : i + 2]).store() for i in (0, 2, 4)]
    merged = TrainingSetData.merge([TrainingSetData.merge(parts[:2]).store(), parts[2]]).store()
    assert len(merged.base.attributes.get("shards")) == 3
    _assert_round_trip(orm.load_node(merged.pk).to_ase(), structures)


def test_merge_of_nothing_is_rejected():
    with pytest.raises(DatasetError, match="nothing to merge"):
        TrainingSetData.merge([])


# -- bad input fails before anything is stored ---------------------------------------------------------------
def _nan_energy(structures):
    broken = structures[1].copy()
    broken.info["energy"] = float("nan")
    broken.arrays["forces"] = structures[1].get_forces()
    return TrainingSetData.from_ase([structures[0], broken])


def _missing_forces(structures):
    broken = structures[1].copy()  # a copy has no calculator
    broken.info["energy"] = structures[1].get_potential_energy()
    return TrainingSetData.from_ase([structures[0], broken])


def _wrong_force_shape(structures):
    nodes = [orm.StructureData(ase=atoms) for atoms in structures[:2]]
    return TrainingSetData.from_structures(nodes, [-1.0, -2.0], [np.zeros((8, 3)), np.zeros((7, 3))])


def _too_few_energies(structures):
    nodes = [orm.StructureData(ase=atoms) for atoms in structures[:2]]
    return TrainingSetData.from_structures(nodes, [-1.0], [np.zeros((8, 3)), np.zeros((8, 3))])


def _too_few_forces(structures):
    nodes = [orm.StructureData(ase=atoms) for atoms in structures[:2]]
    return TrainingSetData.from_structures(nodes, [-1.0, -2.0], [np.zeros((8, 3))])


def _not_structure_data(structures):
    return TrainingSetData.from_structures([structures[0]], [-1.0], [np.zeros((8, 3))])


def _nan_energy_in_structures(structures):
    nodes = [orm.StructureData(ase=atoms) for atoms in structures[:2]]
    return TrainingSetData.from_structures(nodes, [-1.0, float("nan")], [np.zeros((8, 3))] * 2)


def _missing_file(structures, tmp_path):
    return TrainingSetData.from_file(tmp_path / "missing.xyz")


def _missing_db(structures, tmp_path):
    return TrainingSetData.from_ase_db(tmp_path / "missing.db")


@pytest.mark.parametrize(
    ("constructor", "match"),
    [
        (_nan_energy, "structure 1: energy contain NaN or inf"),
        (_missing_forces, r"structure 1 \(.*\): no forces"),
        (_wrong_force_shape, r"structure 1: forces have shape \(7, 3\), expected \(8, 3\)"),
        (_too_few_energies, "got 2 structures, 1 energies and 2 force arrays"),
        (_too_few_forces, "got 2 structures, 2 energies and 1 force arrays"),
        (_not_structure_data, "structure 0: expected StructureData, got Atoms"),
        (_nan_energy_in_structures, "structure 1: energy contain NaN or inf"),
    ],
    ids=[
        "nan-energy",
        "missing-forces",
        "wrong-force-shape",
        "too-few-energies",
        "too-few-forces",
        "not-structure-data",
        "nan-energy-from-structures",
    ],
)
def test_bad_input_raises_before_storing(structures, constructor, match):
    before = _node_count()
    with pytest.raises(DatasetError, match=match):
        constructor(structures)
    assert _node_count() == before


@pytest.mark.parametrize(
    ("constructor", "match"),
    [(_missing_file, r"missing\.xyz: no such file"), (_missing_db, r"missing\.db: no such database file")],
    ids=["missing-file", "missing-db"],
)
def test_missing_source_raises_before_storing(structures, tmp_path, constructor, match):
    before = _node_count()
    with pytest.raises(DatasetError, match=match):
        constructor(structures, tmp_path)
    assert _node_count() == before


def test_node_count_does_change_when_a_set_is_stored(structures):
    """Guard for the tests above: storing a set is visible in the node count."""
    before = _node_count()
    TrainingSetData.from_ase(structures[:1]).store()
    assert _node_count() == before + 1
