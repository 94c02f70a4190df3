"""TrainingSetData of Pacemaker frames and other codes' extxyz: reference state, weights and stress on the node."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.dataset import DatasetError
from tests.learning.test_dataset_formats import corrected, emt_labelled, frame_of, mace_style, pickled


def test_corrected_frame_records_zero_references(tmp_path, emt_structures):
    frame = frame_of(emt_structures, energy_corrected=corrected(emt_structures))
    node = TrainingSetData.from_pacemaker_pickle(pickled(tmp_path, frame)).store()
    assert node.energies_corrected and node.reference_energies == {"Al": 0.0, "Cu": 0.0}
    assert any("already corrected" in note for note in node.import_notes)
    arrays = node.get_arrays()
    assert arrays.energies_corrected and np.allclose(arrays.energies, corrected(emt_structures))


def test_weights_and_stress_come_back_and_change_the_content_hash(tmp_path, emt_structures):
    frame = frame_of(emt_structures, energy_corrected=corrected(emt_structures))
    plain = TrainingSetData.from_pacemaker_pickle(pickled(tmp_path, frame, "plain.pckl.gzip"))
    frame["w_energy"] = 2.0
    frame["w_forces"] = [np.full(len(atoms), 0.1) for atoms in emt_structures]
    weighted = TrainingSetData.from_pacemaker_pickle(pickled(tmp_path, frame)).store()
    assert weighted.base.attributes.get("has_weights") and weighted.content_hash != plain.content_hash
    assert np.all(weighted.get_arrays().force_weights == 0.1)

    structures = emt_labelled(3)
    node = TrainingSetData.from_file(
        mace_style(structures, tmp_path / "mace.xyz"), energy_key="REF_energy", forces_key="REF_forces"
    ).store()
    assert node.base.attributes.get("has_stress")
    for atoms, original in zip(node.to_ase(), structures, strict=True):
        assert np.allclose(atoms.get_stress(), original.get_stress())
        assert atoms.get_potential_energy() == pytest.approx(original.get_potential_energy())


def test_merging_corrected_with_total_energies_is_refused(tmp_path, emt_structures):
    corrected_set = TrainingSetData.from_pacemaker_pickle(
        pickled(tmp_path, frame_of(emt_structures[:4], energy_corrected=corrected(emt_structures[:4])))
    ).store()
    total = TrainingSetData.from_ase(emt_structures[4:8]).store()
    with pytest.raises(DatasetError, match=r"cannot merge sets whose energies are already corrected \(sets \[0\]"):
        TrainingSetData.merge([corrected_set, total])
    merged = TrainingSetData.merge([corrected_set, corrected_set]).store()
    assert merged.energies_corrected and merged.num_structures == 8


def test_subsets_keep_the_reference_state(tmp_path, emt_structures):
    """What the active-learning split does: TrainingSetData(arrays=arrays.take(...))."""
    node = TrainingSetData.from_pacemaker_pickle(
        pickled(tmp_path, frame_of(emt_structures, energy_corrected=corrected(emt_structures)))
    )
    part = TrainingSetData(arrays=node.get_arrays().take([0, 2]))
    assert part.energies_corrected and part.reference_energies == {"Al": 0.0, "Cu": 0.0}


def test_unlabelled_sets_ignore_the_labels(tmp_path, emt_structures):
    frame = pd.DataFrame({"ase_atoms": [atoms.copy() for atoms in emt_structures]})
    node = TrainingSetData.from_pacemaker_pickle(pickled(tmp_path, frame), labelled=False)
    assert not node.labelled and node.reference_energies is None
