"""`autopipec data import`: extxyz, ASE database (with selection), Pacemaker pickle (only when trusted), bad files."""

from __future__ import annotations

import re

import ase.db
import numpy as np
import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_autopipec.cli import autopipec
from aiida_autopipec.learning.dataset import StructureArrays, to_pacemaker_dataframe, write_extxyz


def imported(result) -> orm.Node:
    assert result.exit_code == 0, result.output
    return orm.load_node(int(re.search(r"PK (\d+)", result.output).group(1)))


def test_extxyz_summary_matches_the_data(tmp_path, emt_structures):
    path = write_extxyz(tmp_path / "train.xyz", emt_structures)
    result = CliRunner().invoke(autopipec, ["data", "import", str(path)])
    training_set = imported(result)
    assert training_set.num_structures == len(emt_structures)
    per_atom = [atoms.get_potential_energy() / len(atoms) for atoms in emt_structures]
    largest = max(np.linalg.norm(atoms.get_forces(), axis=1).max() for atoms in emt_structures)
    assert f"{len(emt_structures)} structures, {sum(map(len, emt_structures))} atoms, elements Al, Cu" in result.output
    assert f"{min(per_atom):.4f} to {max(per_atom):.4f} eV/atom" in result.output
    assert f"largest |force|: {largest:.4f} eV/Å" in result.output
    assert training_set.uuid in result.output


def test_ase_database_with_selection(tmp_path, emt_structures):
    path = tmp_path / "data.db"
    with ase.db.connect(path) as database:
        for atoms in emt_structures:
            database.write(atoms)
    result = CliRunner().invoke(autopipec, ["data", "import", str(path), "--select", "id<=5"])
    assert imported(result).num_structures == 5
    result = CliRunner().invoke(autopipec, ["data", "import", str(path), "--select", "id>1000"])
    assert result.exit_code != 0 and "matched no rows" in result.output


def test_large_database_shows_a_progress_bar(tmp_path, monkeypatch, emt_structures):
    from aiida_autopipec.cli import data

    monkeypatch.setattr(data, "PROGRESS_THRESHOLD", 10)
    path = tmp_path / "large.db"
    with ase.db.connect(path) as database:
        for atoms in emt_structures:
            database.write(atoms)
    result = CliRunner().invoke(autopipec, ["data", "import", str(path)])
    assert imported(result).num_structures == len(emt_structures)
    assert "reading large.db" in result.stderr


def test_pickle_needs_trust(tmp_path, emt_structures):
    arrays = StructureArrays.from_atoms(emt_structures)
    path = tmp_path / "data.pckl.gzip"
    to_pacemaker_dataframe(arrays, {"Al": 0.0, "Cu": 0.0}).to_pickle(path)
    refused = CliRunner().invoke(autopipec, ["data", "import", str(path)])
    assert refused.exit_code != 0
    assert "--trust-pickle" in refused.output and "arbitrary code" in refused.output
    training_set = imported(CliRunner().invoke(autopipec, ["data", "import", str(path), "--trust-pickle"]))
    stored = training_set.get_arrays()
    assert np.allclose(stored.energies, arrays.energies) and np.allclose(stored.forces, arrays.forces)


def test_unlabelled_candidates(tmp_path, emt_structures):
    path = write_extxyz(tmp_path / "pool.xyz", emt_structures)
    result = CliRunner().invoke(autopipec, ["data", "import", str(path), "--unlabelled"])
    assert imported(result).labelled is False
    assert "unlabelled" in result.output


@pytest.mark.parametrize(
    ("content", "arguments", "message"),
    [
        ("not an xyz file\n", [], "cannot be read as extxyz"),
        ("", ["--select", "id<3"], "only applies to ASE databases"),
        ("garbage", ["--format", "pickle", "--trust-pickle"], "cannot be read as a pickled DataFrame"),
    ],
)
def test_bad_files(tmp_path, content, arguments, message):
    path = tmp_path / "bad.xyz"
    path.write_text(content)
    result = CliRunner().invoke(autopipec, ["data", "import", str(path), *arguments])
    assert result.exit_code != 0
    assert message in result.output
    assert orm.QueryBuilder().append(orm.Data, filters={"label": "bad.xyz"}).count() == 0


def test_missing_file():
    result = CliRunner().invoke(autopipec, ["data", "import", "/nonexistent/train.xyz"])
    assert result.exit_code == 2 and "does not exist" in result.output


# -- Pacemaker's own frames, other codes' extxyz, and importing the same file twice ------------------------------
def test_pacemaker_frame_energy_corrected_weights_and_extra_columns(tmp_path, emt_structures):
    from tests.learning.test_dataset_formats import corrected, frame_of, pickled

    frame = frame_of(emt_structures, energy_corrected=corrected(emt_structures), name="x")
    frame["w_energy"] = 1.0
    frame["w_forces"] = [np.ones(len(atoms)) for atoms in emt_structures]
    path = pickled(tmp_path, frame)
    result = CliRunner().invoke(autopipec, ["data", "import", str(path), "--trust-pickle"])
    training_set = imported(result)
    assert training_set.energies_corrected and training_set.reference_energies == {"Al": 0.0, "Cu": 0.0}
    assert "energies are already corrected (energy_corrected): stored with reference energies 0 eV/atom" in (
        result.output
    )
    assert "weights found: w_energy (per structure) and w_forces (per atom) are kept" in result.output
    assert "column(s) name ignored" in result.output


def test_frame_with_energy_and_energy_corrected_shows_the_references(tmp_path, emt_structures):
    from tests.learning.test_dataset_formats import corrected, energies, frame_of, pickled

    frame = frame_of(emt_structures, energy=energies(emt_structures), energy_corrected=corrected(emt_structures))
    result = CliRunner().invoke(autopipec, ["data", "import", str(pickled(tmp_path, frame)), "--trust-pickle"])
    assert not imported(result).energies_corrected
    assert "reference energies (eV/atom, subtracted by fits): Al -3.1, Cu -4.2" in result.output


def test_extxyz_keys_of_other_codes(tmp_path):
    from tests.learning.test_dataset_formats import emt_labelled, mace_style

    structures = emt_labelled(3)
    path = mace_style(structures, tmp_path / "mace.xyz")
    arguments = ["data", "import", str(path), "--energy-key", "REF_energy", "--forces-key", "REF_forces"]
    result = CliRunner().invoke(autopipec, arguments)
    training_set = imported(result)
    assert np.allclose(training_set.get_arrays().energies, [a.get_potential_energy() for a in structures])
    assert "labels from 'REF_energy' (eV) and 'REF_forces' (eV/Å)" in result.output
    assert "stress kept (REF_stress; eV/Å³" in result.output
    wrong = CliRunner().invoke(autopipec, ["data", "import", str(path), "--energy-key", "DFT_energy"])
    assert wrong.exit_code == 1 and wrong.output.count("Error:") == 1 and "no energy under 'DFT_energy'" in wrong.output
    database = tmp_path / "x.db"
    database.write_text("")
    refused = CliRunner().invoke(autopipec, ["data", "import", str(database), "--energy-key", "REF_energy"])
    assert refused.exit_code == 2 and "only applies to extxyz files" in refused.output


def test_importing_the_same_file_twice_reuses_the_node(tmp_path, emt_structures):
    from aiida_autopipec.cli.data import import_training_set, import_training_set_with_status

    path = write_extxyz(tmp_path / "same.xyz", emt_structures[:5])
    first = imported(CliRunner().invoke(autopipec, ["data", "import", str(path)]))
    again = CliRunner().invoke(autopipec, ["data", "import", str(path)])
    assert imported(again).pk == first.pk
    assert f"already stored as TrainingSetData<{first.pk}>" in again.output
    forced = CliRunner().invoke(autopipec, ["data", "import", str(path), "--force-new"])
    assert imported(forced).pk != first.pk and "already stored" not in forced.output
    forced = imported(forced)
    # The unlabelled set of the same file is other content.
    unlabelled = imported(CliRunner().invoke(autopipec, ["data", "import", str(path), "--unlabelled"]))
    assert unlabelled.pk != first.pk and not unlabelled.labelled
    # The API that `autopipec train FILE` / `learn FILE` use.
    result = import_training_set_with_status(path)
    assert result.reused and result.node.pk == first.pk and "already stored" in result.message()
    assert import_training_set(path).pk == first.pk
    assert import_training_set(path, force_new=True).pk not in (first.pk, forced.pk)


def test_import_into_a_group(tmp_path, emt_structures):
    path = write_extxyz(tmp_path / "grouped.xyz", emt_structures[:5])
    result = CliRunner().invoke(autopipec, ["data", "import", str(path), "--group", "dft-data", "--force-new"])
    training_set = imported(result)
    group = orm.load_group("dft-data")
    assert training_set.uuid in {node.uuid for node in group.nodes}
    assert f"added TrainingSetData<{training_set.pk}> to group 'dft-data'" in result.output
