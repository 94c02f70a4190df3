"""Pacemaker's own DataFrames (as Pacemaker accepts them) and extxyz written by other codes, without AiiDA.

Every frame is made here with pandas, the way Pacemaker's example datasets and users' scripts make them.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import write

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning.dataset import DatasetError, StructureArrays
from aiida_autopipec.learning.pacemaker import check_reference_state, fit_weights, resolve_reference_energies
from aiida_autopipec.learning.readers import read_extxyz_data, read_pacemaker_frame, read_pacemaker_pickle

REFERENCES = {"Al": -3.1, "Cu": -4.2}


def frame_of(structures, **columns) -> pd.DataFrame:
    """A Pacemaker frame: ``ase_atoms`` and ``forces`` plus the given columns (name -> per-structure values)."""
    frame = pd.DataFrame({"ase_atoms": [atoms.copy() for atoms in structures]})
    frame["forces"] = [atoms.get_forces() for atoms in structures]
    for name, values in columns.items():
        frame[name] = values
    return frame


def energies(structures):
    return np.array([atoms.get_potential_energy() for atoms in structures])


def corrected(structures, references=REFERENCES):
    shifts = [sum(references[symbol] for symbol in atoms.get_chemical_symbols()) for atoms in structures]
    return energies(structures) - np.array(shifts)


def pickled(tmp_path, frame, name="data.pckl.gzip"):
    path = tmp_path / name
    frame.to_pickle(path, compression="gzip")
    return path


def test_energy_corrected_only_is_stored_with_zero_references(tmp_path, emt_structures):
    values = corrected(emt_structures)
    imported = read_pacemaker_frame(pickled(tmp_path, frame_of(emt_structures, energy_corrected=values)))
    arrays = imported.arrays
    assert np.allclose(arrays.energies, values)
    assert arrays.energies_corrected and arrays.reference_energies == {"Al": 0.0, "Cu": 0.0}
    assert any("already corrected" in note for note in imported.notes)
    # A fit with the default 'fit' subtracts nothing: what Pacemaker fits is the energy_corrected column itself.
    config = SystemConfig(elements=["Al", "Cu"])
    assert resolve_reference_energies(config.training, arrays, ["Al", "Cu"]) == {"Al": 0.0, "Cu": 0.0}
    # An explicit dict wins.
    explicit = SystemConfig(elements=["Al", "Cu"], training={"reference_energies": {"Al": 1.0, "Cu": 2.0}})
    assert resolve_reference_energies(explicit.training, arrays, ["Al", "Cu"]) == {"Al": 1.0, "Cu": 2.0}
    # Older callers still get structures (corrected energies).
    structures = read_pacemaker_pickle(tmp_path / "data.pckl.gzip")
    assert np.allclose([atoms.get_potential_energy() for atoms in structures], values)


def test_energy_and_energy_corrected_give_total_energies_and_their_references(tmp_path, emt_structures):
    frame = frame_of(emt_structures, energy=energies(emt_structures), energy_corrected=corrected(emt_structures))
    imported = read_pacemaker_frame(pickled(tmp_path, frame))
    arrays = imported.arrays
    assert np.allclose(arrays.energies, energies(emt_structures)) and not arrays.energies_corrected
    assert arrays.reference_energies == pytest.approx(REFERENCES, abs=1e-9)
    config = SystemConfig(elements=["Al", "Cu"])
    assert resolve_reference_energies(config.training, arrays, ["Al", "Cu"]) == pytest.approx(REFERENCES, abs=1e-9)
    assert any("energy − energy_corrected" in note for note in imported.notes)


def test_energy_corrected_that_is_not_a_per_element_shift_wins_as_in_pacemaker(tmp_path, emt_structures):
    shifted = corrected(emt_structures) + np.linspace(0, 1, len(emt_structures))  # not linear in composition
    frame = frame_of(emt_structures, energy=energies(emt_structures), energy_corrected=shifted)
    imported = read_pacemaker_frame(pickled(tmp_path, frame))
    assert np.allclose(imported.arrays.energies, shifted) and imported.arrays.energies_corrected
    assert any("energy ignored" in note for note in imported.notes)


def test_weights_and_extra_columns(tmp_path, emt_structures):
    count = len(emt_structures)
    w_energy = np.linspace(1, 2, count)
    w_forces = [np.full(len(atoms), 0.5 + i) for i, atoms in enumerate(emt_structures)]
    frame = frame_of(
        emt_structures,
        energy_corrected=corrected(emt_structures),
        w_energy=w_energy,
        w_forces=w_forces,
        name=[f"s{i}" for i in range(count)],
        energy_corrected_per_atom=corrected(emt_structures) / [len(a) for a in emt_structures],
    )
    imported = read_pacemaker_frame(pickled(tmp_path, frame))
    arrays = imported.arrays
    assert np.array_equal(arrays.energy_weights, w_energy)
    assert np.array_equal(arrays.force_weights, np.concatenate(w_forces))
    assert any("weights found" in note for note in imported.notes)
    assert any("energy_corrected_per_atom, name ignored" in note for note in imported.notes)
    # Fits use them as Pacemaker's columns, unless structure weights are given.
    weights, _ = fit_weights(arrays, None, None)
    assert np.array_equal(weights["force_weights"], np.concatenate(w_forces))
    explicit, _ = fit_weights(arrays, None, [2.0] * count)
    assert np.array_equal(explicit["energy_weights"], [2.0] * count)
    # Subsets keep them; a test set without weights gets ones (Pacemaker joins the frames).
    part = arrays.take([1, 3])
    assert np.array_equal(part.energy_weights, w_energy[[1, 3]])
    assert np.array_equal(part.force_weights, np.concatenate([w_forces[1], w_forces[3]]))
    _, test = fit_weights(arrays, StructureArrays.from_atoms(emt_structures[:2]), None)
    assert np.array_equal(test["energy_weights"], [1.0, 1.0])


def test_one_weight_column_is_ignored_like_pacemaker(tmp_path, emt_structures):
    frame = frame_of(emt_structures, energy=energies(emt_structures), w_energy=1.0)
    imported = read_pacemaker_frame(pickled(tmp_path, frame))
    assert imported.arrays.energy_weights is None
    assert any("only w_energy found: ignored" in note for note in imported.notes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"w_forces": 1.0}, "w_forces has 1 value"),
        ({"w_forces": "per-atom"}, "could not convert|w_forces"),
        ({"w_energy": -1.0}, "weights must be finite and >= 0"),
        ({"drop": "energy_corrected"}, r"energy or energy_corrected"),
        ({"drop": "forces"}, r"\['forces'\] are missing"),
        ({"ase_atoms": "Al"}, "ase_atoms is a str"),
    ],
)
def test_bad_frames_give_one_clear_error(tmp_path, emt_structures, change, message):
    frame = frame_of(emt_structures[:3], energy_corrected=corrected(emt_structures[:3]))
    frame["w_energy"] = 1.0
    frame["w_forces"] = [np.ones(len(atoms)) for atoms in emt_structures[:3]]
    for name, value in change.items():
        if name == "drop":
            frame = frame.drop(columns=[value])
        else:
            frame[name] = [value] * 3 if not np.isscalar(value) or name != "w_energy" else value
    with pytest.raises(DatasetError, match=message):
        read_pacemaker_frame(pickled(tmp_path, frame))


def test_unlabelled_frame_needs_only_structures(tmp_path, emt_structures):
    frame = pd.DataFrame({"ase_atoms": [atoms.copy() for atoms in emt_structures]})
    imported = read_pacemaker_frame(pickled(tmp_path, frame), labelled=False)
    assert not imported.arrays.labelled and imported.arrays.num_structures == len(emt_structures)


def mace_style(structures, path, virial=False):
    """extxyz as MACE users write it: REF_energy/REF_stress (or REF_virial) in info, REF_forces in arrays."""
    written = []
    for atoms in structures:
        copy = atoms.copy()
        copy.calc = None
        copy.info["REF_energy"] = atoms.get_potential_energy()
        copy.arrays["REF_forces"] = atoms.get_forces()
        stress = atoms.calc.get_stress(atoms) if atoms.pbc.all() else None
        if stress is not None and virial:
            full = np.array([[stress[0], stress[5], stress[4]], [stress[5], stress[1], stress[3]]])
            full = np.vstack([full, [stress[4], stress[3], stress[2]]])
            copy.info["REF_virial"] = -full * atoms.get_volume()
        elif stress is not None:
            copy.info["REF_stress"] = stress
        copy.info["MACE_energy"] = 123.0  # another model's prediction: must not be taken
        written.append(copy)
    write(path, written, format="extxyz")
    return path


def emt_labelled(count=4):
    structures = []
    for i in range(count):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.02 * i, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        structures.append(atoms)
    return structures


@pytest.mark.parametrize("virial", [False, True])
def test_extxyz_with_ref_keys_and_stress(tmp_path, virial):
    structures = emt_labelled()
    path = mace_style(structures, tmp_path / "mace.xyz", virial=virial)
    imported = read_extxyz_data(path, energy_key="REF_energy", forces_key="REF_forces")
    arrays = imported.arrays
    assert np.allclose(arrays.energies, energies(structures))
    assert np.allclose(arrays.forces, np.concatenate([atoms.get_forces() for atoms in structures]))
    back = arrays.to_atoms()
    for atoms, original in zip(back, structures, strict=True):
        assert np.allclose(atoms.get_stress(), original.get_stress(), atol=1e-12)  # eV/Å³
    assert any("virial" in note if virial else "REF_stress" in note for note in imported.notes)
    # The npz storage keeps the stress.
    buffer = io.BytesIO()
    arrays.save_npz(buffer)
    buffer.seek(0)
    assert np.allclose(StructureArrays.load_npz(buffer).stress, arrays.stress)


def test_extxyz_missing_key_is_named(tmp_path):
    path = mace_style(emt_labelled(2), tmp_path / "mace.xyz")
    with pytest.raises(DatasetError, match=r"structure 0: no energy under 'DFT_energy'.*REF_energy"):
        read_extxyz_data(path, energy_key="DFT_energy", forces_key="REF_forces")
    with pytest.raises(DatasetError, match=r"structure 0: no forces under 'forces'.*REF_forces"):
        read_extxyz_data(path, energy_key="REF_energy", forces_key="forces")


def test_molecules_without_cell(tmp_path):
    structures = []
    for name in ("CO", "H2O", "CH4"):
        atoms = molecule(name)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        structures.append(atoms)
    path = tmp_path / "molecules.xyz"
    write(path, structures, format="extxyz")
    arrays = read_extxyz_data(path).arrays
    assert not arrays.pbc.any() and np.allclose(arrays.cells, 0.0)
    assert arrays.stress is None  # no volume: EMT's stress of a molecule is not written
    assert [len(a) for a in arrays.to_atoms()] == [2, 3, 5]
    check_reference_state(arrays, None)


def test_partially_periodic_structures_are_refused_before_a_fit(emt_structures):
    from ase.calculators.singlepoint import SinglePointCalculator

    slab = emt_structures[0].copy()
    slab.pbc = [True, True, False]
    slab.calc = SinglePointCalculator(slab, energy=-1.0, forces=np.zeros((len(slab), 3)))
    arrays = StructureArrays.from_atoms([slab])
    with pytest.raises(DatasetError, match="periodic along some axes only"):
        check_reference_state(arrays, None)


def test_corrected_and_total_energies_cannot_be_joined(tmp_path, emt_structures):
    corrected_set = read_pacemaker_frame(
        pickled(tmp_path, frame_of(emt_structures[:4], energy_corrected=corrected(emt_structures[:4])))
    ).arrays
    total = StructureArrays.from_atoms(emt_structures[4:8])
    with pytest.raises(DatasetError, match="cannot join energies that are already corrected"):
        StructureArrays.concatenate([corrected_set, total])
    with pytest.raises(DatasetError, match="test energies are total energies"):
        check_reference_state(corrected_set, total)
    joined = StructureArrays.concatenate([corrected_set, corrected_set])
    assert joined.energies_corrected and joined.reference_energies == {"Al": 0.0, "Cu": 0.0}
    # A warm start from a potential that subtracted references cannot continue on corrected energies.
    config = SystemConfig(elements=["Al", "Cu"])
    with pytest.raises(DatasetError, match="already corrected"):
        resolve_reference_energies(config.training, corrected_set, ["Al", "Cu"], previous=REFERENCES)


def test_joining_weighted_and_unweighted_sets(emt_structures):
    weighted = StructureArrays.from_atoms(emt_structures[:2])
    weighted = weighted.with_extras(energy_weights=np.array([1.0, 3.0]), force_weights=np.full(weighted.num_atoms, 2.0))
    plain = StructureArrays.from_atoms(emt_structures[2:3])
    joined = StructureArrays.concatenate([weighted, plain])
    assert joined.energy_weights.tolist() == [1.0, 3.0, 2.0]  # the mean weight of the weighted structures
    assert np.all(joined.force_weights == 2.0)
    assert joined.without_labels().energy_weights is None
