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
