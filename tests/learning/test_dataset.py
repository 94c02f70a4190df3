"""``aiida_autopipec.learning.dataset``: conversion, safe storage, readers, reference energies and validation.

No AiiDA here: everything works on ASE structures, numpy arrays and files in ``tmp_path``.
Units: energies in eV, forces in eV/Å, positions and cells in Å.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_autopipec.learning.dataset import (
    DatasetError,
    StructureArrays,
    corrected_energies,
    fit_reference_energies,
    read_ase_db,
    select_database_rows,
    to_pacemaker_dataframe,
    write_extxyz,
    write_pacemaker_dataset,
)
from aiida_autopipec.learning.readers import pickle_compression, read_extxyz
from aiida_autopipec.learning.reference_data import emt_dataset

#: Made-up per-element reference energies (eV/atom) for the synthetic, exactly additive data.
SYNTHETIC_REFERENCES = {"Al": -3.7, "Cu": -4.1}
#: extxyz writes positions and forces with 8 decimals (``%16.8f``): a round trip is exact to ~5e-9 only.
EXTXYZ_ATOL = 1e-7


@pytest.fixture(scope="module")
def emt_labelled():
    """Five EMT-labelled Al-Cu structures (8 atoms each) with a SinglePointCalculator."""
    return emt_dataset(5, seed=3)


def _labelled(atoms: Atoms, energy: float = -1.0, forces=None) -> Atoms:
    atoms.calc = SinglePointCalculator(
        atoms, energy=energy, forces=np.zeros((len(atoms), 3)) if forces is None else forces
    )
    return atoms


def _info_labelled(atoms: Atoms, energy: float, forces: np.ndarray) -> Atoms:
    """Labels the way an extxyz file without a calculator carries them: info['energy'], arrays['forces']."""
    atoms = atoms.copy()
    atoms.calc = None
    atoms.info["energy"] = energy
    atoms.arrays["forces"] = np.array(forces, dtype=float)
    return atoms


def _assert_same_structures(actual: list[Atoms], expected: list[Atoms]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert np.array_equal(got.numbers, want.numbers)
        assert np.array_equal(got.positions, want.positions)
        assert np.array_equal(np.asarray(got.cell), np.asarray(want.cell))
        assert np.array_equal(got.pbc, want.pbc)
        assert got.get_potential_energy() == want.get_potential_energy()
        assert np.array_equal(got.get_forces(), want.get_forces())


def _synthetic_structures() -> list[Atoms]:
    """Varied Al-Cu compositions whose energy is exactly Σ_i reference[Z_i] (eV)."""
    rng = np.random.default_rng(11)
    structures = []
    for num_cu in (0, 1, 3, 4, 6, 8):
        atoms = bulk("Al", "fcc", a=4.0, cubic=True) * (1, 1, 2)
        symbols = ["Cu"] * num_cu + ["Al"] * (len(atoms) - num_cu)
        atoms.set_chemical_symbols(list(rng.permutation(symbols)))
        atoms.positions += rng.normal(0.0, 0.05, size=atoms.positions.shape)
        energy = sum(SYNTHETIC_REFERENCES[s] for s in atoms.get_chemical_symbols())
        structures.append(_labelled(atoms, energy, rng.normal(0.0, 0.3, size=(len(atoms), 3))))
    return structures


# -- StructureArrays from ASE and back -----------------------------------------------------------------------
def test_from_atoms_with_emt_single_point_labels(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled)
    assert arrays.num_structures == 5
    assert arrays.num_atoms == 40
    assert arrays.elements == ["Al", "Cu"]
    assert np.array_equal(arrays.natoms, [8] * 5)
    assert arrays.positions.shape == arrays.forces.shape == (40, 3)
    assert arrays.cells.shape == (5, 3, 3)
    assert arrays.energies.tolist() == [atoms.get_potential_energy() for atoms in emt_labelled]
    assert np.array_equal(arrays.forces[8:16], emt_labelled[1].get_forces())


def test_from_atoms_with_extxyz_style_info_and_arrays(emt_labelled):
    plain = [_info_labelled(atoms, atoms.get_potential_energy(), atoms.get_forces()) for atoms in emt_labelled]
    assert all(atoms.calc is None for atoms in plain)
    from_info = StructureArrays.from_atoms(plain)
    from_calc = StructureArrays.from_atoms(emt_labelled)
    for name in StructureArrays.FIELDS:
        assert np.array_equal(getattr(from_info, name), getattr(from_calc, name)), name


def test_to_atoms_round_trips_exactly(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled)
    _assert_same_structures(arrays.to_atoms(), emt_labelled)


def test_to_atoms_without_labels_has_no_calculator(emt_labelled):
    structures = StructureArrays.from_atoms(emt_labelled).to_atoms(with_labels=False)
    assert all(atoms.calc is None for atoms in structures)
    assert np.array_equal(structures[2].positions, emt_labelled[2].positions)


def test_npz_round_trip_is_exact(emt_labelled, tmp_path):
    arrays = StructureArrays.from_atoms(emt_labelled)
    path = tmp_path / "set.npz"
    arrays.save_npz(path)
    loaded = StructureArrays.load_npz(path)
    for name in StructureArrays.FIELDS:
        assert getattr(loaded, name).dtype == getattr(arrays, name).dtype, name
        assert np.array_equal(getattr(loaded, name), getattr(arrays, name)), name
    _assert_same_structures(loaded.to_atoms(), emt_labelled)


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return 0.0


class _Payload:
    """Unpickling this object would call ``_record_unpickling``."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_load_npz_refuses_pickled_object_arrays(emt_labelled, tmp_path):
    arrays = StructureArrays.from_atoms(emt_labelled)
    fields = {name: getattr(arrays, name) for name in StructureArrays.FIELDS}
    fields["energies"] = np.array([_Payload()] * arrays.num_structures, dtype=object)
    path = tmp_path / "malicious.npz"
    np.savez(path, **fields)  # numpy pickles the object array
    UNPICKLED.clear()
    with pytest.raises(ValueError, match="allow_pickle"):
        StructureArrays.load_npz(path)
    assert UNPICKLED == []


def test_load_npz_rejects_an_archive_without_the_fields(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, energies=np.zeros(2))
    with pytest.raises(DatasetError, match="not a structure archive"):
        StructureArrays.load_npz(path)


def test_concatenate_keeps_order(emt_labelled):
    first = StructureArrays.from_atoms(emt_labelled[:2])
    second = StructureArrays.from_atoms(emt_labelled[2:])
    joined = StructureArrays.concatenate([first, second])
    _assert_same_structures(joined.to_atoms(), emt_labelled)


# -- extxyz and ASE database readers -------------------------------------------------------------------------
def test_extxyz_round_trip_keeps_labels(emt_labelled, tmp_path):
    path = write_extxyz(tmp_path / "data.xyz", emt_labelled)
    structures = read_extxyz(path)
    assert len(structures) == len(emt_labelled)
    arrays = StructureArrays.from_atoms(structures)
    original = StructureArrays.from_atoms(emt_labelled)
    assert np.array_equal(arrays.numbers, original.numbers)
    assert np.array_equal(arrays.pbc, original.pbc)
    # Energies and cells are written with full precision; positions and forces with 8 decimals.
    np.testing.assert_allclose(arrays.energies, original.energies, rtol=0, atol=1e-12)
    np.testing.assert_allclose(arrays.cells, original.cells, rtol=0, atol=1e-12)
    np.testing.assert_allclose(arrays.positions, original.positions, rtol=0, atol=EXTXYZ_ATOL)
    np.testing.assert_allclose(arrays.forces, original.forces, rtol=0, atol=EXTXYZ_ATOL)


def test_read_extxyz_index_selects_frames(emt_labelled, tmp_path):
    path = write_extxyz(tmp_path / "data.xyz", emt_labelled)
    structures = read_extxyz(path, index="1:3")
    assert [atoms.get_potential_energy() for atoms in structures] == pytest.approx(
        [atoms.get_potential_energy() for atoms in emt_labelled[1:3]], abs=1e-12
    )


@pytest.fixture
def ase_db(emt_labelled, tmp_path):
    """An ASE sqlite database: two 'bulk' rows and three 'rattled' rows with EMT energies and forces."""
    import ase.db

    path = tmp_path / "structures.db"
    with ase.db.connect(path) as database:
        for index, atoms in enumerate(emt_labelled):
            database.write(atoms, config="bulk" if index < 2 else "rattled", index=index)
    return path


def test_read_ase_db_selection(ase_db, emt_labelled):
    rattled = read_ase_db(ase_db, config="rattled")
    assert len(rattled) == 3
    energies = [atoms.get_potential_energy() for atoms in rattled]
    assert energies == [atoms.get_potential_energy() for atoms in emt_labelled[2:]]
    assert np.array_equal(rattled[0].get_forces(), emt_labelled[2].get_forces())
    assert np.array_equal(rattled[0].positions, emt_labelled[2].positions)

    assert len(read_ase_db(ase_db, "config=bulk")) == 2
    assert len(read_ase_db(ase_db, "index>=3")) == 2
    assert len(read_ase_db(ase_db)) == 5


def test_database_rows_give_the_arrays_their_atoms_give(ase_db, tmp_path):
    """The fast path (rows straight to arrays) equals building ase.Atoms with row.toatoms() first."""
    import ase.db
    from ase.build import molecule

    with ase.db.connect(ase_db) as database:  # also a molecule without cell or periodicity, and a 1-atom cell
        for atoms in (molecule("CO"), bulk("Cu", "fcc", a=3.6)):
            atoms.calc = SinglePointCalculator(atoms, energy=-1.5, forces=np.full((len(atoms), 3), 0.1))
            database.write(atoms, config="extra")
    rows = select_database_rows(ase_db)
    via_rows = StructureArrays.from_database_rows(rows)
    via_atoms = StructureArrays.from_atoms([row.toatoms() for row in rows])
    for field in StructureArrays.FIELDS:
        assert np.array_equal(getattr(via_rows, field), getattr(via_atoms, field)), field
    unlabelled = StructureArrays.from_database_rows(rows, labelled=False)
    assert not unlabelled.labelled and np.array_equal(unlabelled.positions, via_atoms.positions)
    with pytest.raises(DatasetError, match=r"the data contain element\(s\) \['C', 'O'\]"):
        StructureArrays.from_database_rows(rows, elements=["Al", "Cu"])


def test_database_read_column_by_column_equals_reading_whole_rows(ase_db):
    """``StructureArrays.from_ase_db`` reads only the structure and label columns (no ``data``, no key-value pairs):
    the same arrays as whole rows give, with the selection applied and elements checked."""
    import ase.db

    with ase.db.connect(ase_db) as database:
        database.write(bulk("Cu", "fcc", a=3.6), config="extra", data={"note": "ignored"})
    selected = StructureArrays.from_ase_db(ase_db, config="extra", labelled=False)
    assert selected.num_structures == 1 and not selected.labelled
    whole_rows = StructureArrays.from_database_rows(select_database_rows(ase_db, "config!=extra"))
    by_columns = StructureArrays.from_ase_db(ase_db, "config!=extra")
    for field in StructureArrays.FIELDS:
        assert np.array_equal(getattr(by_columns, field), getattr(whole_rows, field)), field
    with pytest.raises(DatasetError, match=r"the data contain element\(s\) \['Cu'\] that are not in elements"):
        StructureArrays.from_ase_db(ase_db, config="extra", labelled=False, elements=["Al"])


@pytest.mark.parametrize("missing", ["energy", "forces"])
def test_database_rows_without_labels_are_named(tmp_path, missing):
    import ase.db

    atoms = bulk("Al", "fcc", a=4.05) * (2, 1, 1)
    results = {"energy": -7.0, "forces": np.zeros((2, 3))}
    del results[missing]
    atoms.calc = SinglePointCalculator(atoms, **results)
    with ase.db.connect(tmp_path / "partial.db") as database:
        database.write(bulk("Al", "fcc", a=4.05), data={"note": "no calculator"})
        database.write(atoms)
    rows = select_database_rows(tmp_path / "partial.db")
    with pytest.raises(DatasetError, match=r"structure 0 \(Al\): no energy"):
        StructureArrays.from_database_rows(rows)
    # The same messages as through ase.Atoms.
    with pytest.raises(DatasetError, match=rf"structure 0 \(Al2\): no {missing}"):
        StructureArrays.from_atoms([rows[1].toatoms()])
    with pytest.raises(DatasetError, match=rf"structure 0 \(Al2\): no {missing}"):
        StructureArrays.from_database_rows(rows[1:])


# -- reference energies and Pacemaker's DataFrame ------------------------------------------------------------
def test_fit_reference_energies_recovers_known_references():
    arrays = StructureArrays.from_atoms(_synthetic_structures())
    references = fit_reference_energies(arrays, ["Al", "Cu"])
    assert list(references) == ["Al", "Cu"]
    for element, value in SYNTHETIC_REFERENCES.items():
        assert abs(references[element] - value) < 1e-8, element
    np.testing.assert_allclose(corrected_energies(arrays, references), 0.0, atol=1e-8)


def test_reference_energies_for_too_few_elements_are_refused_by_name():
    arrays = StructureArrays.from_atoms(_synthetic_structures())
    with pytest.raises(DatasetError, match=r"element\(s\) \['Cu'\] that are not in elements \['Al'\]"):
        fit_reference_energies(arrays, ["Al"])


def test_composition_matrix_counts_each_element_per_structure():
    structures = [
        Atoms("Al3Cu", cell=[9, 9, 9], positions=np.eye(4, 3) * 3),
        Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]]),
    ]
    arrays = StructureArrays.from_atoms(structures, labelled=False)
    assert arrays.composition_matrix(["Cu", "Ni", "Al"]).tolist() == [[1, 0, 3], [2, 0, 0]]


def test_fit_reference_energies_gives_zero_for_absent_elements():
    arrays = StructureArrays.from_atoms(_synthetic_structures())
    references = fit_reference_energies(arrays, ["Al", "Ni", "Cu"])
    assert references["Ni"] == pytest.approx(0.0, abs=1e-12)
    assert references["Cu"] == pytest.approx(-4.1, abs=1e-8)


def test_corrected_energies_subtract_composition_times_reference(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled)
    references = {"Al": 0.5, "Cu": -2.0}
    expected = [
        atoms.get_potential_energy() - sum(references[s] for s in atoms.get_chemical_symbols())
        for atoms in emt_labelled
    ]
    np.testing.assert_allclose(corrected_energies(arrays, references), expected, rtol=0, atol=1e-12)


def test_corrected_energies_need_every_element(emt_labelled):
    with pytest.raises(DatasetError, match=r"no value for element\(s\) \['Cu'\]"):
        corrected_energies(StructureArrays.from_atoms(emt_labelled), {"Al": -3.7})


def test_pacemaker_dataframe_columns_and_shapes(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled)
    frame = to_pacemaker_dataframe(arrays, SYNTHETIC_REFERENCES)
    assert list(frame.columns) == ["ase_atoms", "energy", "forces", "energy_corrected"]
    assert len(frame) == 5
    assert all(isinstance(atoms, Atoms) and atoms.calc is None for atoms in frame["ase_atoms"])
    assert frame["energy"].tolist() == arrays.energies.tolist()
    assert all(forces.shape == (8, 3) for forces in frame["forces"])
    assert np.array_equal(frame["forces"][3], emt_labelled[3].get_forces())
    np.testing.assert_allclose(frame["energy_corrected"], corrected_energies(arrays, SYNTHETIC_REFERENCES))


def test_pacemaker_dataframe_with_weights(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled)
    energy_weights = np.linspace(0.1, 0.5, 5)
    force_weights = np.arange(40, dtype=float) / 40
    frame = to_pacemaker_dataframe(arrays, SYNTHETIC_REFERENCES, energy_weights, force_weights)
    assert list(frame.columns) == [
        "ase_atoms",
        "energy",
        "forces",
        "energy_corrected",
        "w_energy",
        "w_forces",
    ]
    assert frame["w_energy"].tolist() == energy_weights.tolist()
    assert all(weights.shape == (8,) for weights in frame["w_forces"])
    assert np.array_equal(frame["w_forces"][1], force_weights[8:16])


@pytest.mark.parametrize(
    ("energy_weights", "force_weights", "match"),
    [
        (np.ones(5), None, "give both"),
        (None, np.ones(40), "give both"),
        (np.ones(4), np.ones(40), "one energy weight per structure"),
        (np.ones(5), np.ones(39), "one force weight per atom"),
        (-np.ones(5), np.ones(40), "non-negative"),
        (np.ones(5), -np.ones(40), "non-negative"),
        (np.full(5, np.nan), np.ones(40), "finite"),
        (np.ones(5), np.full(40, np.nan), "finite"),
        (np.ones(5), np.full(40, np.inf), "finite"),
    ],
    ids=[
        "energy-only",
        "forces-only",
        "energy-count",
        "force-count",
        "negative-energy",
        "negative-force",
        "nan-energy",
        "nan-force",
        "inf-force",
    ],
)
def test_pacemaker_dataframe_rejects_bad_weights(emt_labelled, energy_weights, force_weights, match):
    arrays = StructureArrays.from_atoms(emt_labelled)
    with pytest.raises(DatasetError, match=match):
        to_pacemaker_dataframe(arrays, SYNTHETIC_REFERENCES, energy_weights, force_weights)


def test_write_pacemaker_dataset_is_readable_by_pandas(emt_labelled, tmp_path):
    import pandas as pd

    arrays = StructureArrays.from_atoms(emt_labelled)
    for name, compression in (("train.pckl", None), ("train.pckl.gzip", "gzip")):  # as Pacemaker reads them
        path = write_pacemaker_dataset(tmp_path / name, arrays, SYNTHETIC_REFERENCES)
        assert pickle_compression(path) == compression
        frame = pd.read_pickle(path, compression=compression)
        assert frame["energy"].tolist() == arrays.energies.tolist()
        assert np.array_equal(frame["ase_atoms"][0].positions, emt_labelled[0].positions)


@pytest.mark.parametrize("enabled_before", [True, False])
def test_writing_the_dataset_pauses_the_cycle_collector_and_restores_it(emt_labelled, tmp_path, enabled_before):
    """No cyclic garbage collection runs while the structures are made and pickled (a full one walks every object
    of the process), even with thresholds that would collect every few objects; the collector's state is restored."""
    import gc
    import sys

    arrays = StructureArrays.concatenate([StructureArrays.from_atoms(emt_labelled)] * 20)
    collections = []

    def count(phase, info):  # collections set off while the structures are made or pickled
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name not in ("to_pacemaker_dataframe", "to_pickle"):
            frame = frame.f_back
        if phase == "start" and frame is not None:
            collections.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.set_threshold(5, 1, 1)
    gc.callbacks.append(count)
    (gc.enable if enabled_before else gc.disable)()
    try:
        write_pacemaker_dataset(tmp_path / "train.pckl", arrays, SYNTHETIC_REFERENCES)
        assert gc.isenabled() is enabled_before
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)
        gc.enable()
    assert collections == []


# -- bad input -----------------------------------------------------------------------------------------------
def _al_pair(distance: float = 2.5) -> Atoms:
    return Atoms("Al2", positions=[[0, 0, 0], [distance, 0, 0]], cell=[6, 6, 6], pbc=True)


def test_empty_dataset_is_rejected():
    with pytest.raises(DatasetError, match="empty"):
        StructureArrays.from_atoms([])


def test_non_atoms_entry_is_rejected():
    with pytest.raises(DatasetError, match=r"structure 0: expected ase\.Atoms"):
        StructureArrays.from_atoms(["Al2"])


def test_structure_without_energy_is_rejected(emt_labelled):
    unlabelled = _al_pair()
    unlabelled.arrays["forces"] = np.zeros((2, 3))
    with pytest.raises(DatasetError, match=r"structure 1 \(Al2\): no energy"):
        StructureArrays.from_atoms([emt_labelled[0], unlabelled])


def test_structure_without_forces_is_rejected():
    atoms = _al_pair()
    atoms.calc = SinglePointCalculator(atoms, energy=-7.0)
    with pytest.raises(DatasetError, match=r"structure 0 \(Al2\): no forces"):
        StructureArrays.from_atoms([atoms])


def test_non_numeric_energy_is_rejected():
    atoms = _info_labelled(_al_pair(), "low", np.zeros((2, 3)))
    with pytest.raises(DatasetError, match="is not a number"):
        StructureArrays.from_atoms([atoms])


def test_nan_energy_is_rejected(emt_labelled):
    structures = [*emt_labelled[:2], _labelled(_al_pair(), energy=float("nan"))]
    with pytest.raises(DatasetError, match="structure 2: energy contain NaN or inf"):
        StructureArrays.from_atoms(structures)


def test_inf_force_is_rejected(emt_labelled):
    forces = emt_labelled[1].get_forces().copy()
    forces[3, 1] = np.inf
    broken = _labelled(emt_labelled[1].copy(), emt_labelled[1].get_potential_energy(), forces)
    with pytest.raises(DatasetError, match="structure 1: forces contain NaN or inf"):
        StructureArrays.from_atoms([emt_labelled[0], broken, emt_labelled[2]])


def test_forces_of_wrong_shape_are_rejected():
    atoms = _info_labelled(_al_pair(), -7.0, np.zeros((3, 3)))
    with pytest.raises(DatasetError, match=r"forces have shape \(3, 3\), expected \(2, 3\)"):
        StructureArrays.from_atoms([atoms])


def test_structure_without_atoms_is_rejected():
    with pytest.raises(DatasetError, match="structure 0: has no atoms"):
        StructureArrays.from_atoms([Atoms(cell=[3, 3, 3], pbc=True)])


def test_element_outside_the_potential_is_rejected(emt_labelled):
    with pytest.raises(DatasetError, match=r"element\(s\) \['Cu'\] that are not in elements \['Al', 'Ni'\]"):
        StructureArrays.from_atoms(emt_labelled, elements=["Al", "Ni"])


def test_elements_of_the_potential_may_be_more_than_in_the_data(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled, elements=["Al", "Cu", "Ni"])
    assert arrays.elements == ["Al", "Cu"]


def test_overlapping_atoms_are_rejected():
    with pytest.raises(DatasetError, match=r"structure 0 \(Al2\): atoms overlap"):
        StructureArrays.from_atoms([_labelled(_al_pair(distance=0.0))])


def test_overlapping_atoms_in_a_molecule_are_rejected():
    molecule = Atoms("Cu2", positions=[[1.0, 1.0, 1.0], [1.0, 1.05, 1.0]])
    with pytest.raises(DatasetError, match="atoms overlap"):
        StructureArrays.from_atoms([_labelled(molecule)])


def test_isolated_atom_and_distant_pair_are_accepted():
    arrays = StructureArrays.from_atoms([_labelled(Atoms("Cu")), _labelled(_al_pair(distance=2.5))])
    assert np.array_equal(arrays.natoms, [1, 2])


@pytest.mark.parametrize("all_pairs_max_atoms", [500, 0], ids=["all-pairs", "neighbour-list"])
@pytest.mark.parametrize("gap", [0.05, 0.3])
def test_overlap_across_the_periodic_boundary_of_a_skewed_cell(monkeypatch, all_pairs_max_atoms, gap):
    """Two atoms a ``gap`` (Å) apart only through the boundary; both ways of checking agree with the distance."""
    from aiida_autopipec.learning import dataset

    monkeypatch.setattr(dataset, "ALL_PAIRS_MAX_ATOMS", all_pairs_max_atoms)
    cell = np.array([[3.0, 0.0, 0.0], [1.9, 3.0, 0.0], [0.7, -1.1, 3.2]])
    atoms = Atoms("Cu2", positions=[[0.01, 0.5, 0.5], [3.01 - gap, 0.5, 0.5]], cell=cell, pbc=True)
    assert atoms.get_distance(0, 1, mic=True) == pytest.approx(gap)
    if gap < dataset.MIN_INTERATOMIC_DISTANCE:
        with pytest.raises(DatasetError, match="atoms overlap"):
            StructureArrays.from_atoms([_labelled(atoms)])
    else:
        assert StructureArrays.from_atoms([_labelled(atoms)]).num_structures == 1


def test_labels_of_a_moved_structure_are_not_used():
    """A SinglePointCalculator's labels belong to the geometry it was made for, not to atoms moved afterwards."""
    atoms = _labelled(_al_pair(distance=2.5))
    atoms.positions[1, 0] += 0.2
    with pytest.raises(DatasetError, match="no energy"):
        StructureArrays.from_atoms([atoms])


@pytest.mark.parametrize(
    "cell",
    [
        np.zeros((3, 3)),  # no cell at all
        [[4, 0, 0], [0, 4, 0], [0, 0, 0]],  # a missing vector
        [[4, 0, 0], [0, 4, 0], [4, 4, 0]],  # three coplanar vectors
    ],
    ids=["zero", "missing-vector", "coplanar"],
)
def test_periodic_structure_with_degenerate_cell_is_rejected(cell):
    atoms = Atoms("Al2", positions=[[0, 0, 0], [2, 0, 0]], cell=cell, pbc=True)
    with pytest.raises(DatasetError, match="structure 0: periodic cell is degenerate"):
        StructureArrays.from_atoms([_labelled(atoms)])


def test_validate_rejects_inconsistent_arrays(emt_labelled):
    arrays = StructureArrays.from_atoms(emt_labelled)
    fields = {name: getattr(arrays, name) for name in StructureArrays.FIELDS}
    with pytest.raises(DatasetError, match=r"energies: shape \(4,\), expected \(5,\)"):
        StructureArrays(**{**fields, "energies": arrays.energies[:4]})
    with pytest.raises(DatasetError, match=r"atomic numbers outside 1\.\.118"):
        StructureArrays(**{**fields, "numbers": np.zeros_like(arrays.numbers)})


def test_missing_extxyz_file(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.xyz: no such file"):
        read_extxyz(tmp_path / "missing.xyz")


def test_corrupt_extxyz_file(tmp_path):
    path = tmp_path / "garbage.xyz"
    path.write_text("this is not\nan xyz file\n")
    with pytest.raises(DatasetError, match=r"garbage\.xyz: cannot be read as extxyz"):
        read_extxyz(path)


def test_truncated_extxyz_file(emt_labelled, tmp_path):
    path = write_extxyz(tmp_path / "data.xyz", emt_labelled[:1])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")  # the header promises 8 atoms, 5 follow
    with pytest.raises(DatasetError, match="cannot be read as extxyz"):
        read_extxyz(path)


def test_empty_extxyz_file(tmp_path):
    path = tmp_path / "empty.xyz"
    path.write_text("")
    with pytest.raises(DatasetError, match="contains no structures"):
        read_extxyz(path)


def test_missing_database(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.db: no such database file"):
        read_ase_db(tmp_path / "missing.db")


def test_database_selection_matching_nothing(ase_db):
    with pytest.raises(DatasetError, match="matched no rows"):
        read_ase_db(ase_db, config="relaxed")


def test_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("just some text\n" * 20)
    with pytest.raises(DatasetError, match=r"notes\.db: cannot be read as an ASE database"):
        read_ase_db(path)


def test_batched_overlap_check_agrees_with_the_neighbour_list():
    """Mixed sizes, periodicities and skewed cells, some with a pair closer than 0.1 Å (also through a boundary):
    the batched all-pairs check finds exactly the structures ASE's neighbour list finds."""
    from aiida_autopipec.learning import dataset

    rng = np.random.default_rng(7)
    structures = []
    for index in range(120):
        count = int(rng.choice([1, 2, 5, 9]))
        cell = np.diag(rng.uniform(2.5, 5.0, 3)) + rng.uniform(-0.8, 0.8, (3, 3))
        pbc = [True, True, True] if index % 3 else rng.integers(0, 2, 3).astype(bool).tolist()
        positions = rng.uniform(0, 1, (count, 3)) @ cell
        if count > 1 and index % 4 == 0:  # a near-duplicate, shifted by a lattice vector half of the time
            positions[1] = positions[0] + rng.normal(0, 0.03, 3) + (cell[0] if index % 8 == 0 else 0)
        structures.append(Atoms(numbers=[13] * count, positions=positions, cell=cell, pbc=pbc))
    expected = [
        index
        for index, atoms in enumerate(structures)
        if dataset._overlap_by_neighbour_list(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    ]
    assert 5 < len(expected) < 60  # both kinds are present
    arrays = StructureArrays(
        numbers=np.concatenate([atoms.numbers for atoms in structures]),
        positions=np.concatenate([atoms.positions for atoms in structures]),
        forces=np.full((sum(len(a) for a in structures), 3), np.nan),
        natoms=np.array([len(a) for a in structures]),
        cells=np.array([a.cell.array for a in structures]),
        pbc=np.array([a.pbc for a in structures]),
        energies=np.full(len(structures), np.nan),
        labelled=False,
    )
    cells = np.array([a.cell.array if a.pbc.any() else np.eye(3) for a in structures])
    assert arrays._overlapping_structures(cells).tolist() == expected
    with pytest.raises(DatasetError, match=rf"structure {expected[0]} \(Al\d+\): atoms overlap"):
        arrays.check_geometry()


@pytest.mark.parametrize("pairs_per_chunk", [1, 25, 60_000], ids=["structure-by-structure", "small-chunks", "default"])
def test_overlap_check_finds_the_same_structures_in_chunks_of_any_size(monkeypatch, pairs_per_chunk):
    """Structures of 6 atoms (15 pairs) cut into batches of 1, 1 or many structures: an overlap in any batch is found,
    and only there."""
    from aiida_autopipec.learning import dataset

    monkeypatch.setattr(dataset, "PAIRS_PER_CHUNK", pairs_per_chunk)
    rng = np.random.default_rng(3)
    structures, expected = [], []
    for index in range(40):
        atoms = Atoms("Al6", cell=np.diag(rng.uniform(4.0, 6.0, 3)), pbc=True)
        atoms.set_scaled_positions(rng.permutation(np.eye(6, 3) * 0.45 + 0.05 * np.arange(6)[:, None]))
        if index in (0, 17, 39):
            atoms.positions[4] = atoms.positions[2] + [0.0, 0.06, 0.0]
            expected.append(index)
        structures.append(atoms)
    cells = np.array([atoms.cell.array for atoms in structures])
    arrays = StructureArrays(
        numbers=np.concatenate([atoms.numbers for atoms in structures]),
        positions=np.concatenate([atoms.positions for atoms in structures]),
        forces=np.full((6 * len(structures), 3), np.nan),
        natoms=np.full(len(structures), 6),
        cells=cells,
        pbc=np.ones((len(structures), 3), dtype=bool),
        energies=np.full(len(structures), np.nan),
        labelled=False,
    )
    assert arrays._overlapping_structures(cells).tolist() == expected


def test_the_first_problem_is_named_whichever_kind_it_is():
    overlap = _labelled(_al_pair(distance=0.05))
    flat = Atoms("Al2", positions=[[0, 0, 0], [2, 0, 0]], cell=[[4, 0, 0], [0, 4, 0], [0, 0, 0]], pbc=True)
    fine = _labelled(_al_pair(distance=2.5))
    with pytest.raises(DatasetError, match=r"structure 1 .*atoms overlap"):
        StructureArrays.from_atoms([fine, overlap, _labelled(flat)])
    with pytest.raises(DatasetError, match="structure 1: periodic cell is degenerate"):
        StructureArrays.from_atoms([fine, _labelled(flat), overlap])


def test_npz_is_uncompressed_with_one_byte_atomic_numbers_and_old_files_still_load(emt_labelled, tmp_path):
    import zipfile

    arrays = StructureArrays.from_atoms(emt_labelled)
    arrays.save_npz(tmp_path / "new.npz")
    with zipfile.ZipFile(tmp_path / "new.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(tmp_path / "new.npz") as data:
        assert data["numbers"].dtype == np.uint8
    # Files written before (compressed, int64 numbers) load to the same arrays, with int64 numbers either way.
    np.savez_compressed(tmp_path / "old.npz", **{name: getattr(arrays, name) for name in StructureArrays.FIELDS})
    for name in ("new.npz", "old.npz"):
        loaded = StructureArrays.load_npz(tmp_path / name)
        assert loaded.numbers.dtype == np.int64
        for field in StructureArrays.FIELDS:
            assert np.array_equal(getattr(loaded, field), getattr(arrays, field))
    fields = {name: getattr(arrays, name) for name in StructureArrays.FIELDS}
    np.savez(tmp_path / "float_numbers.npz", **{**fields, "numbers": arrays.numbers.astype(float)})
    with pytest.raises(DatasetError, match="numbers: expected integers, got float64"):
        StructureArrays.load_npz(tmp_path / "float_numbers.npz")
