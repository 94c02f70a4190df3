"""PacemakerCalculation on data imported from Pacemaker frames and other codes: reference energies, weights,
molecules. The job-folder checks run ``prepare_for_submission`` only; the ``pacemaker``-marked tests fit for real."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.calculators.emt import EMT
from click.testing import CliRunner

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.cli import autopipec
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning import files
from aiida_autopipec.learning.dataset import write_extxyz
from aiida_autopipec.learning.pacemaker import REFERENCE_ENERGIES_JSON
from tests.learning.test_dataset_formats import REFERENCES, corrected, frame_of, pickled


@pytest.fixture
def weighted_frame(tmp_path, emt_structures):
    """energy_corrected only (references Al -3.1, Cu -4.2 eV/atom already subtracted), per-atom force weights."""
    frame = frame_of(emt_structures, energy_corrected=corrected(emt_structures), name="emt")
    frame["w_energy"] = np.linspace(1.0, 2.0, len(emt_structures))
    frame["w_forces"] = [np.linspace(0.5, 1.5, len(atoms)) for atoms in emt_structures]
    return pickled(tmp_path, frame), frame


def test_imported_weights_and_zero_references_reach_the_job_folder(
    generate_calc_job, pacemaker_code, weighted_frame, fast_parameters
):
    path, frame = weighted_frame
    inputs = {
        "code": pacemaker_code,
        "training_set": TrainingSetData.from_pacemaker_pickle(path),
        "parameters": orm.Dict(fast_parameters),
    }
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    written = pd.read_pickle(folder / files.TRAINING_DATA)
    assert np.array_equal(written["w_energy"], frame["w_energy"])
    for given, sent in zip(frame["w_forces"], written["w_forces"], strict=True):
        assert np.array_equal(given, sent)  # per atom, as imported
    assert np.allclose(written["energy_corrected"], frame["energy_corrected"])  # nothing subtracted again
    assert json.loads((folder / REFERENCE_ENERGIES_JSON).read_text()) == {"Al": 0.0, "Cu": 0.0}

    # An explicit structure_weights input wins; explicit reference energies too.
    inputs["structure_weights"] = orm.List([1.0] * len(frame))
    inputs["parameters"] = orm.Dict({**fast_parameters, "reference_energies": REFERENCES})
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    written = pd.read_pickle(folder / files.TRAINING_DATA)
    assert written["w_energy"].tolist() == [1.0] * len(frame)
    assert json.loads((folder / REFERENCE_ENERGIES_JSON).read_text()) == REFERENCES


def test_mixed_reference_state_and_ignored_weights_are_refused(pacemaker_code, weighted_frame, emt_test_structures):
    training_set = TrainingSetData.from_pacemaker_pickle(weighted_frame[0])
    with pytest.raises(ValueError, match=r"already corrected .* but those of test_set are total energies"):
        run_get_node(
            PacemakerCalculation,
            code=pacemaker_code,
            training_set=training_set,
            test_set=TrainingSetData.from_ase(emt_test_structures),
        )
    with pytest.raises(ValueError, match="the training set carries weights"):
        run_get_node(
            PacemakerCalculation,
            code=pacemaker_code,
            training_set=training_set,
            settings=orm.Dict({"pacemaker": {"fit": {"weighting": {"type": "EnergyBasedWeightingPolicy"}}}}),
        )


@pytest.mark.pacemaker
def test_fit_of_corrected_energies_subtracts_nothing_and_uses_the_weights(pacemaker_code, weighted_frame):
    path, frame = weighted_frame
    training_set = TrainingSetData.from_pacemaker_pickle(path)
    parameters = {"cutoff": 4.5, "maxiter": 15, "number_of_functions_per_element": 8, "device": "cpu"}
    results, node = run_get_node(
        PacemakerCalculation, code=pacemaker_code, training_set=training_set, parameters=orm.Dict(parameters)
    )
    assert node.is_finished_ok, node.exit_message
    assert results["potential"].reference_energies == {"Al": 0.0, "Cu": 0.0}
    log = node.outputs.retrieved.get_object_content(files.STDERR)  # holds every line of log.txt
    assert "Both weighting columns" in log  # Pacemaker used the imported w_energy/w_forces
    calculator = results["potential"].get_calculator()
    predicted = []
    for atoms in frame["ase_atoms"]:
        atoms = atoms.copy()
        atoms.calc = calculator
        predicted.append(atoms.get_potential_energy() / len(atoms))
    natoms = np.array([len(atoms) for atoms in frame["ase_atoms"]])
    shifts = np.array(
        [sum(REFERENCES[symbol] for symbol in atoms.get_chemical_symbols()) for atoms in frame["ase_atoms"]]
    )
    total = (frame["energy_corrected"].to_numpy() + shifts) / natoms

    def rmse(reference):
        return float(np.sqrt(np.mean(np.square(np.array(predicted) - reference))))

    # Predictions are the corrected energies (+3 to +4 eV/atom here), not total energies: the references (-3.1 and
    # -4.2 eV/atom) are neither subtracted again nor added back. 15 iterations fit them to a few tenths of an eV.
    assert rmse(frame["energy_corrected"].to_numpy() / natoms) < 1.0 < 3.0 < rmse(total)


def emt_clusters(count: int, seed: int = 0) -> list[Atoms]:
    """Small non-periodic Al-Cu clusters (zero cell, pbc False), EMT energies (eV) and forces (eV/Å)."""
    rng = np.random.default_rng(seed)
    clusters = []
    while len(clusters) < count:
        size = int(rng.integers(3, 7))
        positions = rng.uniform(0.0, 4.0, size=(size, 3))
        distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)[np.triu_indices(size, 1)]
        if distances.min() < 2.2:
            continue
        atoms = Atoms(rng.choice(["Al", "Cu"], size=size).tolist(), positions=positions, pbc=False)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        clusters.append(atoms)
    return clusters


@pytest.mark.pacemaker
def test_molecules_end_to_end(tmp_path, pacemaker_code):
    """Import (CLI), fit, evaluation of the delivered model, export of the data (extxyz) and the potential."""
    clusters = emt_clusters(16)
    path = write_extxyz(tmp_path / "clusters.xyz", clusters)
    result = CliRunner().invoke(autopipec, ["data", "import", str(path)])
    assert result.exit_code == 0, result.output
    training_set = orm.load_node(int(result.output.rsplit("PK ", 1)[1].split()[0]))
    assert not training_set.get_arrays().pbc.any()
    parameters = {"cutoff": 5.0, "maxiter": 15, "number_of_functions_per_element": 8, "device": "cpu"}
    results, node = run_get_node(
        PacemakerCalculation, code=pacemaker_code, training_set=training_set, parameters=orm.Dict(parameters)
    )
    assert node.is_finished_ok, node.exit_message
    metrics = results["metrics"].get_dict()
    assert np.isfinite(metrics["train"]["rmse_forces"]) and np.isfinite(metrics["test"]["rmse_energy"])
    molecule = clusters[0].copy()
    molecule.calc = results["potential"].get_calculator()
    assert np.isfinite(molecule.get_potential_energy()) and molecule.get_forces().shape == (len(molecule), 3)

    exported = write_extxyz(tmp_path / "exported.xyz", training_set.to_ase())
    again = TrainingSetData.from_file(exported)
    assert again.content_hash == training_set.content_hash
    result = CliRunner().invoke(autopipec, ["export", str(results["potential"].pk), str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "export" / "potential.yace").is_file()
