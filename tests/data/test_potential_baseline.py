"""``PotentialData`` with a ZBL baseline (delta learning: E_total = E_ZBL + E_ACE) on a real tiny Pacemaker fit.

The module fixture runs one real fit (~20-40 s), as ``test_potential.py`` does. The LAMMPS test runs the ZBL part
of the exported ``lammps.in`` in the real ``lmp`` binary (which has no ``pair_style pace``), to prove that the
``pair_coeff`` lines give every type pair the cutoffs of its element pair.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.data import PotentialData
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.pacemaker import PacemakerRunner
from aiida_autopipec.learning.reference_data import emt_dataset
from aiida_autopipec.learning.zbl import ZBLCalculator
from tests.learning.test_zbl import LAMMPS_NKTV2P, alcu_cell
from tests.storage_fixtures import lammps_binary

pytestmark = pytest.mark.pacemaker

#: Distinct cutoffs per pair (Å), so that a pair given the wrong cutoffs shows; outer cutoffs reach the nearest
#: neighbours of the fcc training structures (~2.5-2.9 Å), so the baseline is not zero there.
PAIR_CUTOFFS = {"Al-Al": [2.0, 3.0], "Al-Cu": [1.5, 2.9], "Cu-Cu": [1.2, 2.8]}
BASELINE = {"type": "zbl", "pair_cutoffs": PAIR_CUTOFFS}
ZBL_CUTOFFS = {("Al", "Al"): (2.0, 3.0), ("Al", "Cu"): (1.5, 2.9), ("Cu", "Cu"): (1.2, 2.8)}

COMMENT = [
    "# E_total = E_ACE + E_ZBL: the ACE potential was fitted to the residual E_reference - E_ZBL (delta",
    "# learning), so it must be used together with this ZBL baseline (per-pair inner/outer cutoffs in Å).",
]


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    """A real Pacemaker fit: (runner, .yace path with references in E0, B-basis .yaml path, training data)."""
    dataset = emt_dataset(16, seed=2)
    config = SystemConfig(
        elements=["Al", "Cu"],
        training={"cutoff": 4.5, "maxiter": 5, "number_of_functions_per_element": 6, "test_size": 0.2},
    )
    runner = PacemakerRunner(PacemakerConfigGenerator(config), tmp_path_factory.mktemp("pacemaker_fit"))
    yace = runner.train(dataset)
    return runner, yace, runner.work_dir / "output_potential.yaml", dataset


@pytest.fixture(scope="module")
def plain(fit):
    runner, yace, yaml, _ = fit
    return PotentialData(yace=yace, yaml=yaml, reference_energies=runner.reference_energies).store()


@pytest.fixture(scope="module")
def potential(fit):
    runner, yace, yaml, _ = fit
    return PotentialData(yace=yace, yaml=yaml, reference_energies=runner.reference_energies, baseline=BASELINE).store()


def _with_cutoffs(**changes):
    return {"type": "zbl", "pair_cutoffs": {**PAIR_CUTOFFS, **changes}}


# -- construction --------------------------------------------------------------------------------------------
def test_baseline_attribute_round_trip(potential, plain):
    loaded = orm.load_node(potential.pk)
    assert loaded.baseline == BASELINE
    assert list(loaded.baseline["pair_cutoffs"]) == ["Al-Al", "Al-Cu", "Cu-Cu"]
    assert plain.baseline is None
    assert orm.load_node(plain.pk).baseline is None
    assert "baseline" not in plain.base.attributes.all


def test_baseline_is_normalised(fit):
    _, yace, yaml, _ = fit
    given = {"pair_cutoffs": {"Cu-Cu": (1, 2), "Al-Cu": (1.5, 1.5), "Al-Al": np.array([0.5, 2.5])}, "type": "zbl"}
    node = PotentialData(yace=yace, yaml=yaml, baseline=given)
    expected = {"Al-Al": [0.5, 2.5], "Al-Cu": [1.5, 1.5], "Cu-Cu": [1.0, 2.0]}
    assert node.baseline == {"type": "zbl", "pair_cutoffs": expected}
    assert all(isinstance(x, float) for value in node.baseline["pair_cutoffs"].values() for x in value)


@pytest.mark.parametrize(
    ("baseline", "match"),
    [
        ({"type": "lj", "pair_cutoffs": PAIR_CUTOFFS}, r"baseline type must be 'zbl', got 'lj'"),
        ({"pair_cutoffs": PAIR_CUTOFFS}, r"baseline type must be 'zbl', got None"),
        ({"type": "zbl"}, r"'pair_cutoffs' must map pair keys"),
        ({"type": "zbl", "pair_cutoffs": PAIR_CUTOFFS, "scale": 1.0}, r"unknown key\(s\) \['scale'\]"),
        ([("type", "zbl")], r"baseline must be a mapping"),
        (
            {"type": "zbl", "pair_cutoffs": {"Al-Al": [2.0, 3.0], "Cu-Cu": [1.2, 2.8]}},
            r"lacks the element pair\(s\) \['Al-Cu'\]; every pair needs cutoffs",
        ),
        (_with_cutoffs(**{"Al-Cu": [2.5, 2.0]}), r"cutoffs of Al-Cu need 0 < inner <= outer .*inner=2.5, outer=2.0"),
        (_with_cutoffs(**{"Cu-Cu": [0.0, 2.0]}), r"cutoffs of Cu-Cu need 0 < inner <= outer"),
        (_with_cutoffs(**{"Cu-Cu": [-1.0, 2.0]}), r"cutoffs of Cu-Cu need 0 < inner <= outer"),
        (_with_cutoffs(**{"Cu-Cu": [1.0, float("inf")]}), r"cutoffs of Cu-Cu need 0 < inner <= outer"),
        (_with_cutoffs(**{"Al-Al": [2.0]}), r"cutoffs of Al-Al must be two numbers \[inner, outer\]"),
        (_with_cutoffs(**{"Al-Al": "2 3"}), r"cutoffs of Al-Al must be two numbers"),
        (_with_cutoffs(**{"Al-Al": [2.0, "3"]}), r"cutoffs of Al-Al must be two numbers"),
        (
            _with_cutoffs(**{"Al-Ni": [1.0, 2.0]}),
            r"pair key 'Al-Ni' is not a pair of the potential's elements \['Al', 'Cu'\]: .*no element\(s\) \['Ni'\]",
        ),
        (_with_cutoffs(**{"Cu-Al": [1.5, 2.9]}), r"pair key 'Cu-Al' is not .*write it as 'Al-Cu'"),
        (_with_cutoffs(**{"AlCu": [1.5, 2.9]}), r"pair key 'AlCu' is not .*two element symbols joined by '-'"),
    ],
    ids=[
        "wrong-type",
        "no-type",
        "no-pair-cutoffs",
        "extra-key",
        "not-a-mapping",
        "missing-pair",
        "inner-above-outer",
        "zero-inner",
        "negative-inner",
        "infinite-outer",
        "one-number",
        "string",
        "string-number",
        "unknown-element",
        "unsorted-key",
        "bad-key",
    ],
)
def test_invalid_baseline_is_rejected(fit, baseline, match):
    _, yace, yaml, _ = fit
    with pytest.raises(ValueError, match=match):
        PotentialData(yace=yace, yaml=yaml, baseline=baseline)


def test_baseline_needs_the_files():
    with pytest.raises(ValueError, match="needs both"):
        PotentialData(baseline=BASELINE)


# -- the sum calculator --------------------------------------------------------------------------------------
def _results(atoms, calculator, stress=True):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress() if stress else None


def test_without_baseline_the_calculator_is_pyace(plain):
    from pyace import PyACECalculator

    assert isinstance(plain.get_calculator(), PyACECalculator)
    assert plain.get_zbl_calculator() is None


def test_sum_calculator_is_ace_plus_zbl(potential, plain, fit):
    from ase.calculators.mixing import SumCalculator
    from pyace import PyACECalculator

    dataset = fit[3]
    calculator = orm.load_node(potential.pk).get_calculator()
    assert isinstance(calculator, SumCalculator)
    assert {"energy", "forces", "stress"} <= set(calculator.implemented_properties)
    ace = PyACECalculator(str(fit[1]))
    zbl = ZBLCalculator(9.0, 9.5, cutoffs=ZBL_CUTOFFS)  # the global cutoffs must not be used for Al/Cu
    nonzero_zbl = 0
    for atoms in dataset[:6]:
        energy, forces, stress = _results(atoms, calculator)
        ace_energy, ace_forces, ace_stress = _results(atoms, ace)
        zbl_energy, zbl_forces, zbl_stress = _results(atoms, zbl)
        nonzero_zbl += zbl_energy != 0.0
        assert energy == pytest.approx(ace_energy + zbl_energy, rel=0, abs=1e-8)
        np.testing.assert_allclose(forces, ace_forces + zbl_forces, rtol=0, atol=1e-8)
        np.testing.assert_allclose(stress, ace_stress + zbl_stress, rtol=0, atol=1e-8)
        # The plain potential is the very same ACE part.
        assert _results(atoms, plain.get_calculator())[0] == pytest.approx(ace_energy, rel=0, abs=1e-10)
    assert nonzero_zbl >= 3, "the baseline should act on the training structures, or the test proves little"


def test_sum_calculator_reevaluates_after_moving_atoms(potential, fit):
    """The sum must follow position and cell changes (no stale results from one of the parts)."""
    atoms = fit[3][0].copy()
    atoms.calc = potential.get_calculator()
    first = atoms.get_potential_energy()
    atoms.positions[0] += [0.3, -0.2, 0.1]
    moved = atoms.get_potential_energy()
    reference = atoms.copy()
    reference.calc = potential.get_ace_calculator()
    expected = reference.get_potential_energy()
    reference.calc = potential.get_zbl_calculator()
    expected += reference.get_potential_energy()
    assert moved != first
    assert moved == pytest.approx(expected, rel=0, abs=1e-8)


def test_dimer_is_strongly_repulsive(potential):
    calculator = potential.get_calculator()
    energies, forces = {}, {}
    for r in (1.0, 3.0):
        dimer = Atoms("AlCu", positions=[[0, 0, 0], [r, 0, 0]], pbc=False)
        dimer.calc = calculator
        energies[r], forces[r] = dimer.get_potential_energy(), dimer.get_forces()
    # Al-Cu at 1 Å is pure ZBL (inner 1.5 Å): ~78.5 eV unshifted.
    assert energies[1.0] - energies[3.0] > 20.0
    assert forces[1.0][1, 0] > 20.0  # pushes Cu (at +x) away from Al
    assert forces[1.0][0, 0] < -20.0
    np.testing.assert_allclose(forces[1.0].sum(axis=0), 0.0, atol=1e-8)


# -- LAMMPS input --------------------------------------------------------------------------------------------
def test_lammps_input_without_baseline_is_unchanged(plain):
    assert plain.lammps_input() == "pair_style pace\npair_coeff * * potential.yace Al Cu\n"


def test_lammps_input_two_elements(potential):
    assert potential.lammps_input().splitlines() == [
        *COMMENT,
        "pair_style hybrid/overlay pace zbl 2.0 3.0 zbl 1.5 2.9 zbl 1.2 2.8",
        "pair_coeff * * pace potential.yace Al Cu",
        "pair_coeff 1 1 zbl 1 13 13",
        "pair_coeff 1 2 zbl 2 13 29",
        "pair_coeff 2 2 zbl 3 29 29",
    ]
    assert potential.lammps_input().endswith("29 29\n")


def test_lammps_input_three_types(potential):
    assert potential.lammps_input(["Cu", "Al", "Cu"], yace_path="/data/p.yace").splitlines() == [
        *COMMENT,
        "pair_style hybrid/overlay pace zbl 2.0 3.0 zbl 1.5 2.9 zbl 1.2 2.8",
        "pair_coeff * * pace /data/p.yace Cu Al Cu",
        "pair_coeff 1 1 zbl 3 29 29",
        "pair_coeff 1 2 zbl 2 29 13",
        "pair_coeff 1 3 zbl 3 29 29",
        "pair_coeff 2 2 zbl 1 13 13",
        "pair_coeff 2 3 zbl 2 13 29",
        "pair_coeff 3 3 zbl 3 29 29",
    ]


def test_lammps_input_single_zbl_instance(potential, fit):
    # Only Cu-Cu is used: LAMMPS rejects unused sub-styles and wants no index for a single instance.
    assert potential.lammps_input(["Cu", "Cu"]).splitlines()[2:] == [
        "pair_style hybrid/overlay pace zbl 1.2 2.8",
        "pair_coeff * * pace potential.yace Cu Cu",
        "pair_coeff 1 1 zbl 29 29",
        "pair_coeff 1 2 zbl 29 29",
        "pair_coeff 2 2 zbl 29 29",
    ]
    _, yace, yaml, _ = fit
    shared = PotentialData(
        yace=yace, yaml=yaml, baseline={"type": "zbl", "pair_cutoffs": {key: [1.5, 2.5] for key in PAIR_CUTOFFS}}
    )
    assert shared.lammps_input().splitlines()[2:] == [
        "pair_style hybrid/overlay pace zbl 1.5 2.5",
        "pair_coeff * * pace potential.yace Al Cu",
        "pair_coeff 1 1 zbl 13 13",
        "pair_coeff 1 2 zbl 13 29",
        "pair_coeff 2 2 zbl 29 29",
    ]


def test_lammps_input_rejects_unknown_species(potential):
    with pytest.raises(ValueError, match=r"no element\(s\) \['Ni'\]"):
        potential.lammps_input(["Al", "Ni"])


def test_write_files_with_baseline(potential, tmp_path):
    written = potential.write_files(tmp_path, species=["Cu", "Al", "Cu"])
    assert written["lammps"].read_text() == potential.lammps_input(["Cu", "Al", "Cu"])
    assert written["yace"].read_text() == potential.get_yace()


# -- the ZBL part in real LAMMPS -----------------------------------------------------------------------------


def _zbl_part(lammps_in: str) -> list[str]:
    """The exported lines without ACE: ``pace`` dropped from ``pair_style`` and its ``pair_coeff * *`` line."""
    lines = []
    for line in lammps_in.splitlines():
        if line.startswith("pair_style "):
            assert " pace " in line
            line = line.replace(" pace ", " ", 1)
        elif line.startswith("pair_coeff * * pace "):
            continue
        lines.append(line)
    return lines


def _write_data(path: Path, atoms: Atoms, types: np.ndarray, species: list[str]) -> None:
    """LAMMPS data file with explicit atom types (several types may be the same element)."""
    cell = atoms.cell.array
    assert np.allclose(cell[np.triu_indices(3, 1)], 0.0), "use LAMMPS' lower-triangular cell orientation"
    lines = [
        "atoms with explicit types",
        "",
        f"{len(atoms)} atoms",
        f"{len(species)} atom types",
        "",
        f"0.0 {cell[0, 0]:.17g} xlo xhi",
        f"0.0 {cell[1, 1]:.17g} ylo yhi",
        f"0.0 {cell[2, 2]:.17g} zlo zhi",
        f"{cell[1, 0]:.17g} {cell[2, 0]:.17g} {cell[2, 1]:.17g} xy xz yz",
        "",
        "Masses",
        "",
        *(f"{t + 1} {atomic_masses[atomic_numbers[s]]:.17g}" for t, s in enumerate(species)),
        "",
        "Atoms # atomic",
        "",
        *(f"{n + 1} {types[n] + 1} {x:.17g} {y:.17g} {z:.17g}" for n, (x, y, z) in enumerate(atoms.positions)),
        "",
    ]
    path.write_text("\n".join(lines))


def _run_lammps(atoms: Atoms, types: np.ndarray, species: list[str], pair_lines: list[str], workdir: Path) -> dict:
    """Single point in LAMMPS: energy (eV), forces (eV/Å), stress (eV/Å^3, ASE sign)."""
    binary = lammps_binary()
    _write_data(workdir / "data.lmp", atoms, types, species)
    values = " ".join(f"$({key}:%.17g)" for key in ("pe", "pxx", "pyy", "pzz", "pyz", "pxz", "pxy"))
    script = [
        "units metal",
        "atom_style atomic",
        "boundary p p p",
        "atom_modify map array",
        "read_data data.lmp",
        *pair_lines,
        "dump forces all custom 1 forces.dump id fx fy fz",
        "dump_modify forces format float %.17g sort id",
        "thermo_style custom step pe pxx pyy pzz pyz pxz pxy",
        "run 0",
        f'print "{values}" file result.txt',
        "",
    ]
    (workdir / "in.lmp").write_text("\n".join(script))
    proc = subprocess.run(
        [binary, "-in", "in.lmp", "-log", "log.lammps", "-screen", "none", "-nocite"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
    assert proc.returncode == 0, f"LAMMPS failed:\n{proc.stdout}\n{proc.stderr}\n{log}"
    pe, *pressure = (float(x) for x in (workdir / "result.txt").read_text().split())
    dump = np.loadtxt(workdir / "forces.dump", skiprows=9, ndmin=2)
    assert np.array_equal(dump[:, 0], np.arange(1, len(atoms) + 1))
    return {"energy": pe, "forces": dump[:, 1:4], "stress": -np.array(pressure) / LAMMPS_NKTV2P}


@pytest.mark.parametrize("species", [["Al", "Cu"], ["Cu", "Al", "Cu"]], ids=["2-types", "3-types"])
def test_exported_zbl_lines_match_zbl_calculator_in_lammps(potential, tmp_path, species):
    atoms = alcu_cell(seed=4)  # 32 atoms, Al-Cu, periodic, contacts down to ~1 Å
    symbols = np.array(atoms.get_chemical_symbols())
    # Each atom gets a type of its element; with two Cu types, Cu atoms alternate between them.
    types = np.empty(len(atoms), dtype=int)
    for element in ("Al", "Cu"):
        candidates = [t for t, s in enumerate(species) if s == element]
        members = np.flatnonzero(symbols == element)
        types[members] = np.resize(candidates, len(members))
    assert len(set(types)) == len(species)

    written = potential.write_files(tmp_path / "potential", species=species)
    pair_lines = _zbl_part(written["lammps"].read_text())
    assert sum(line.startswith("pair_coeff") for line in pair_lines) == len(species) * (len(species) + 1) // 2
    lammps = _run_lammps(atoms, types, species, pair_lines, tmp_path)

    ours = atoms.copy()
    ours.calc = potential.get_zbl_calculator()
    energy, forces, stress = ours.get_potential_energy(), ours.get_forces(), ours.get_stress()
    assert np.abs(forces).max() > 10.0  # short contacts: strongly repulsive, not just switching tails
    assert energy == pytest.approx(lammps["energy"], rel=1e-8)
    np.testing.assert_allclose(forces, lammps["forces"], rtol=1e-8, atol=1e-8 * np.abs(forces).max())
    np.testing.assert_allclose(stress, lammps["stress"], rtol=1e-7, atol=1e-7 * np.abs(stress).max())

    # The per-pair cutoffs matter here: the same ZBL with the cutoffs of the pairs swapped is far off.
    swapped = atoms.copy()
    swapped.calc = ZBLCalculator(
        1.0, 2.0, cutoffs={("Al", "Al"): (1.2, 2.8), ("Al", "Cu"): (1.5, 2.9), ("Cu", "Cu"): (2.0, 3.0)}
    )
    assert abs(swapped.get_potential_energy() - lammps["energy"]) > 1e-3 * abs(lammps["energy"])


def test_lammps_extrapolation_input_uses_the_bbasis_and_active_set(plain, potential):
    """`pair_style pace/extrapolation` takes the B-basis .yaml and the .asi; with a baseline inside hybrid/overlay."""
    lines = plain.lammps_extrapolation_input().splitlines()
    assert lines[:2] == ["pair_style pace/extrapolation", "pair_coeff * * potential.yaml potential.asi Al Cu"]
    assert "fix pace_gamma all pair 10 pace/extrapolation gamma 1" in lines
    with_zbl = potential.lammps_extrapolation_input(["Cu", "Al"]).splitlines()
    zbl_lines = [
        line
        for line in potential.lammps_input(["Cu", "Al"]).splitlines()
        if line.startswith("pair_coeff") and " zbl " in line
    ]
    assert with_zbl[2].startswith("pair_style hybrid/overlay pace/extrapolation zbl ")
    assert "pair_coeff * * pace/extrapolation potential.yaml potential.asi Cu Al" in with_zbl
    assert zbl_lines and all(line in with_zbl for line in zbl_lines)  # the ZBL part exactly as in lammps.in
