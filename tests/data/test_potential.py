"""``PotentialData`` and ``learning.potential`` on a real (tiny) potential fitted here by Pacemaker.

The module fixture runs one real fit (~20-60 s): 16 EMT Al-Cu structures, 6 functions/element, 5 iterations.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from aiida import orm

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.data import PotentialData
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.pacemaker import PacemakerRunner
from aiida_autopipec.learning.potential import (
    PotentialFileError,
    potential_info,
    set_reference_energies,
    yace_elements,
)
from aiida_autopipec.learning.reference_data import emt_dataset

pytestmark = pytest.mark.pacemaker

FUNCTIONS_PER_ELEMENT = 6


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    """A real Pacemaker fit: (runner, .yace path with references in E0, B-basis .yaml path, training data)."""
    dataset = emt_dataset(16, seed=2)
    config = SystemConfig(
        elements=["Al", "Cu"],
        training={
            "cutoff": 4.5,
            "maxiter": 5,
            "number_of_functions_per_element": FUNCTIONS_PER_ELEMENT,
            "test_size": 0.2,
        },
    )
    runner = PacemakerRunner(PacemakerConfigGenerator(config), tmp_path_factory.mktemp("pacemaker_fit"))
    yace = runner.train(dataset)
    return runner, yace, runner.work_dir / "output_potential.yaml", dataset


@pytest.fixture(scope="module")
def potential(fit):
    runner, yace, yaml, _ = fit
    return PotentialData(yace=yace, yaml=yaml, reference_energies=runner.reference_energies).store()


def _functions_per_element_in_yace(yace: str) -> dict[int, int]:
    """Count the Ctilde functions listed under each element index of the ``functions:`` section."""
    section = yace[yace.index("\nfunctions:") + 1 :]
    counts: dict[int, int] = {}
    current = None
    for line in section.splitlines()[1:]:
        header = re.match(r"^  (\d+):\s*$", line)
        if header:
            current = int(header.group(1))
            counts[current] = 0
        elif line.startswith("    - {") and current is not None:
            counts[current] += 1
        elif line and not line.startswith(" "):
            break
    return counts


def _energy_and_forces(atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces()


# -- attributes and storage ----------------------------------------------------------------------------------
def test_attributes(potential, fit):
    runner, yace, yaml, _ = fit
    assert potential.elements == ["Al", "Cu"]
    assert potential.cutoff == pytest.approx(4.5)
    # AiiDA stores float attributes rounded to 14 significant digits (``clean_value``), hence ``approx``.
    assert potential.reference_energies == pytest.approx(runner.reference_energies, rel=1e-13, abs=0)
    assert set(potential.reference_energies) == {"Al", "Cu"}

    # num_functions counts the B-basis functions of the .yaml: 6 per element (Al, Al-Cu, Cu, Cu-Al blocks).
    yaml_text = yaml.read_text()
    assert potential.num_functions == len(re.findall(r"^\s+- \{type: ", yaml_text, re.MULTILINE))
    assert potential.num_functions == 2 * FUNCTIONS_PER_ELEMENT == 12
    assert _functions_per_element_in_yace(yace.read_text()) == {0: 6, 1: 6}


def test_stored_files_round_trip(potential, fit):
    _, yace, yaml, _ = fit
    loaded = orm.load_node(potential.pk)
    assert isinstance(loaded, PotentialData)
    assert loaded.get_yace() == yace.read_text()
    assert loaded.get_yaml() == yaml.read_text()
    assert sorted(loaded.base.repository.list_object_names()) == ["potential.yace", "potential.yaml"]
    assert loaded.reference_energies == potential.reference_energies


def test_yace_carries_the_reference_energies(potential, fit):
    runner = fit[0]
    match = re.search(r"^E0: \[([^\]]*)\]$", potential.get_yace(), re.MULTILINE)
    values = [float(value) for value in match.group(1).split(",")]
    assert values == [runner.reference_energies["Al"], runner.reference_energies["Cu"]]
    assert values == pytest.approx([potential.reference_energies[e] for e in ("Al", "Cu")], rel=1e-13, abs=0)
    assert any(value != 0.0 for value in values)


def test_potential_info_of_the_fitted_yaml(potential):
    info = potential_info(potential.get_yaml())
    expected = {"elements": ["Al", "Cu"], "cutoff": 4.5, "num_functions": 12}
    assert info == {**expected, "functions_per_element": {"Al": 6, "Cu": 6}}  # by central element
    assert yace_elements(potential.get_yace()) == ["Al", "Cu"]


# -- evaluation ----------------------------------------------------------------------------------------------
def test_calculator_predicts_absolute_energies(potential, fit):
    from pyace import PyACECalculator

    _, _, yaml, dataset = fit
    calculator = orm.load_node(potential.pk).get_calculator()
    # Pacemaker fitted energy - Σ references; the raw B-basis potential has no E0 and predicts just that part.
    raw = PyACECalculator(str(yaml))
    references = potential.reference_energies
    for atoms in dataset:
        energy, forces = _energy_and_forces(atoms, calculator)
        raw_energy, raw_forces = _energy_and_forces(atoms, raw)
        assert abs(energy - atoms.get_potential_energy()) / len(atoms) < 0.5, atoms.get_chemical_formula()
        offset = sum(references[symbol] for symbol in atoms.get_chemical_symbols())
        assert energy - raw_energy == pytest.approx(offset, abs=1e-6)
        assert forces.shape == (len(atoms), 3)
        assert np.isfinite(forces).all()
        np.testing.assert_allclose(forces, raw_forces, rtol=0, atol=1e-8)  # constant E0 leaves forces alone


def test_calculator_on_a_new_structure(potential):
    atoms = emt_dataset(1, seed=99, elements=("Cu", "Al"), repeat=(1, 1, 1), labelled=False)[0]
    atoms.calc = potential.get_calculator()
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (4, 3)
    assert np.isfinite(atoms.get_stress()).all()


# -- files for LAMMPS ----------------------------------------------------------------------------------------
def test_write_files(potential, tmp_path):
    written = potential.write_files(tmp_path / "lammps")
    assert set(written) == {"yace", "yaml", "lammps"}
    assert written["yace"] == tmp_path / "lammps" / "potential.yace"
    assert written["yaml"] == tmp_path / "lammps" / "potential.yaml"
    assert written["lammps"] == tmp_path / "lammps" / "lammps.in"
    assert written["yace"].read_text() == potential.get_yace()
    assert written["yaml"].read_text() == potential.get_yaml()
    lammps = written["lammps"].read_text()
    assert lammps.splitlines() == ["pair_style pace", "pair_coeff * * potential.yace Al Cu"]


def test_write_files_with_species_per_atom_type(potential, tmp_path):
    written = potential.write_files(tmp_path, species=["Cu", "Al", "Cu"])
    assert "pair_coeff * * potential.yace Cu Al Cu\n" in written["lammps"].read_text()


def test_lammps_input(potential):
    assert potential.lammps_input() == "pair_style pace\npair_coeff * * potential.yace Al Cu\n"
    custom = potential.lammps_input(["Cu"], yace_path="/data/p.yace")
    assert custom.endswith("pair_coeff * * /data/p.yace Cu\n")


def test_lammps_input_rejects_unknown_species(potential, tmp_path):
    with pytest.raises(ValueError, match=r"no element\(s\) \['Ni'\]; it covers \['Al', 'Cu'\]"):
        potential.lammps_input(["Al", "Ni"])
    with pytest.raises(ValueError, match="Ni"):
        potential.write_files(tmp_path, species=["Ni"])


# -- construction errors -------------------------------------------------------------------------------------
def test_needs_both_files(fit):
    _, yace, yaml, _ = fit
    with pytest.raises(ValueError, match=r"needs both the \.yace and the B-basis \.yaml"):
        PotentialData(yace=yace)
    with pytest.raises(ValueError, match="needs both"):
        PotentialData(yaml=yaml)


def test_accepts_text_and_bytes(fit):
    _, yace, yaml, _ = fit
    from_text = PotentialData(yace=yace.read_text(), yaml=yaml.read_bytes())
    assert from_text.elements == ["Al", "Cu"]
    assert from_text.get_yace() == yace.read_text()
    assert from_text.reference_energies == {}


def test_mismatched_elements_are_rejected(fit):
    _, yace, yaml, _ = fit
    other = yace.read_text().replace("elements: [Al, Cu]", "elements: [Al, Ni]", 1)
    assert other != yace.read_text()
    with pytest.raises(ValueError, match=r"\.yace elements \['Al', 'Ni'\] differ from \.yaml elements"):
        PotentialData(yace=other, yaml=yaml)
    swapped = yace.read_text().replace("elements: [Al, Cu]", "elements: [Cu, Al]", 1)
    with pytest.raises(ValueError, match="differ"):
        PotentialData(yace=swapped, yaml=yaml)


def test_non_potential_yaml_is_rejected(fit, tmp_path):
    _, yace, _, _ = fit
    not_a_potential = tmp_path / "input.yaml"
    not_a_potential.write_text("cutoff: 4.5\nseed: 42\n")
    with pytest.raises(PotentialFileError, match="no 'species' blocks"):
        PotentialData(yace=yace, yaml=not_a_potential)


# -- learning.potential --------------------------------------------------------------------------------------
def test_set_reference_energies_uses_the_yace_element_order(fit):
    _, yace, _, _ = fit
    swapped = yace.read_text().replace("elements: [Al, Cu]", "elements: [Cu, Al]", 1)
    updated = set_reference_energies(swapped, {"Al": -3.7, "Cu": -4.1, "Ni": -5.0})
    assert re.findall(r"^E0: .*$", updated, re.MULTILINE) == ["E0: [-4.1, -3.7]"]
    # Nothing else changes.
    assert updated.replace("E0: [-4.1, -3.7]", "") == re.sub(r"^E0: .*$", "", swapped, flags=re.MULTILINE)


def test_set_reference_energies_round_trips_exactly(fit):
    _, yace, _, _ = fit
    references = {"Al": -3.141592653589793, "Cu": 1e-17}
    updated = set_reference_energies(yace.read_text(), references)
    values = re.search(r"^E0: \[(.*)\]$", updated, re.MULTILINE).group(1).split(", ")
    assert [float(value) for value in values] == [references["Al"], references["Cu"]]


def test_set_reference_energies_needs_every_element(fit):
    _, yace, _, _ = fit
    with pytest.raises(PotentialFileError, match=r"no reference energy for element\(s\) \['Cu'\]"):
        set_reference_energies(yace.read_text(), {"Al": -3.7})


def test_set_reference_energies_rejects_non_yace_text():
    with pytest.raises(PotentialFileError, match=re.escape("no 'elements: [...]' line")):
        set_reference_energies("species:\n  - speciesblock: Al\n", {"Al": -3.7})
    with pytest.raises(PotentialFileError, match=re.escape("no 'E0: [...]' line")):
        set_reference_energies("elements: [Al]\nembeddings: {}\n", {"Al": -3.7})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cutoff: 4.5\nseed: 42\n", "no 'species' blocks"),
        ("- 1\n- 2\n", "no 'species' blocks"),
        ("species: []\n", "no 'species' blocks"),
        ("", "no 'species' blocks"),
        ("species: [unclosed\n", "not valid YAML"),
        ("species:\n  - speciesblock: Al Cu\n    rcutij: 4.5\n", "no element blocks or no cutoff"),
        ("species:\n  - speciesblock: Al\n    nbody: []\n", "no element blocks or no cutoff"),
    ],
    ids=["mapping", "list", "no-blocks", "empty", "invalid", "no-element-block", "no-cutoff"],
)
def test_potential_info_rejects_non_potential_yaml(text, match):
    with pytest.raises(PotentialFileError, match=match):
        potential_info(text)
