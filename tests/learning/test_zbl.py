"""Tests of the ZBL pair potential and its ASE calculator, including a comparison with LAMMPS ``zbl``."""

from __future__ import annotations

import itertools
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.io import write

from aiida_autopipec.learning.zbl import (
    ZBLCalculator,
    zbl_pair_derivative,
    zbl_pair_energy,
    zbl_pair_second_derivative,
    zbl_switched_derivative,
    zbl_switched_energy,
    zbl_switching_coefficients,
)
from tests.storage_fixtures import lammps_binary

INNER, OUTER = 3.0, 4.0
Z_AL, Z_CU = 13, 29


def reference_zbl_energy(r: float, z1: float, z2: float) -> float:
    """ZBL written out by hand from Ziegler, Biersack & Littmark (1985), independently of the module."""
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (
        0.18175 * math.exp(-3.19980 * x)
        + 0.50986 * math.exp(-0.94229 * x)
        + 0.28022 * math.exp(-0.40290 * x)
        + 0.02817 * math.exp(-0.20162 * x)
    )
    return 14.399645 * z1 * z2 / r * phi


def alcu_cell(seed: int = 0) -> Atoms:
    """A random, slightly sheared 32-atom Al-Cu fcc cell with strong short contacts.

    The cell is lower triangular (a along x, b in the xy plane) so LAMMPS sees the same Cartesian frame.
    """
    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.permutation(len(atoms))[:14]] = "Cu"
    atoms.set_chemical_symbols(symbols.tolist())
    cell = np.array([[8.1, 0.0, 0.0], [0.35, 8.0, 0.0], [-0.3, 0.45, 8.2]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.positions += rng.normal(scale=0.2, size=atoms.positions.shape)
    # Short contacts: pull a few atoms towards a neighbour (down to ~1.0-1.6 Å).
    for k, target in ((0, 0.45), (5, 0.6), (11, 0.7)):
        d = atoms.get_distances(k, range(len(atoms)), mic=True, vector=True)
        dist = np.linalg.norm(d, axis=1)
        dist[k] = np.inf
        nearest = int(np.argmin(dist))
        atoms.positions[k] += target * d[nearest]
    atoms.wrap()
    return atoms


def tiny_cell() -> Atoms:
    """Two atoms in a cell much smaller than the cutoff, so many periodic images interact."""
    cell = np.array([[2.6, 0.0, 0.0], [0.2, 2.5, 0.0], [0.1, -0.3, 2.7]])
    return Atoms("AlCu", cell=cell, pbc=True, scaled_positions=[[0.1, 0.05, 0.0], [0.55, 0.5, 0.45]])


# --- the pair functions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("r", "z1", "z2"), [(1.0, Z_AL, Z_CU), (0.3, Z_AL, Z_AL), (2.5, Z_CU, Z_CU), (1.7, 1, 74)])
def test_pair_energy_matches_hand_written_formula(r: float, z1: int, z2: int) -> None:
    assert zbl_pair_energy(r, z1, z2) == pytest.approx(reference_zbl_energy(r, z1, z2), rel=1e-13)
    assert zbl_pair_energy(r, z2, z1) == pytest.approx(reference_zbl_energy(r, z1, z2), rel=1e-13)


def test_pair_energy_alcu_at_one_angstrom() -> None:
    # Al-Cu at 1 Å by hand: a = 0.46850/(13^0.23 + 29^0.23) = 0.1179110 Å, x = r/a = 8.480975,
    # φ(x) = 0.01446218, E = 14.399645 eV·Å * 13 * 29 / 1 Å * φ = 78.51034 eV.
    a = 0.46850 / (13**0.23 + 29**0.23)
    assert a == pytest.approx(0.1179110, rel=1e-6)
    hand_energy = 14.399645 * 13 * 29 * 0.01446218
    assert hand_energy == pytest.approx(78.51034, rel=1e-6)
    expected = reference_zbl_energy(1.0, 13, 29)
    assert expected == pytest.approx(78.5103352, rel=1e-8)
    assert float(zbl_pair_energy(1.0, 13, 29)) == pytest.approx(expected, rel=1e-14)


def test_pair_energy_vectorised_and_broadcast() -> None:
    r = np.linspace(0.2, 5.0, 7)
    z = np.array([[13.0], [29.0]])
    energies = zbl_pair_energy(r, z, 29)
    assert energies.shape == (2, 7)
    for row, z1 in zip(energies, (13, 29), strict=True):
        np.testing.assert_allclose(row, [reference_zbl_energy(x, z1, 29) for x in r], rtol=1e-13)


@pytest.mark.parametrize(("z1", "z2"), [(Z_AL, Z_CU), (1, 1), (Z_CU, Z_CU)])
def test_pair_derivatives_match_finite_differences(z1: int, z2: int) -> None:
    r = np.linspace(0.3, 5.0, 40)
    h = 1e-5
    numerical = (zbl_pair_energy(r + h, z1, z2) - zbl_pair_energy(r - h, z1, z2)) / (2 * h)
    np.testing.assert_allclose(zbl_pair_derivative(r, z1, z2), numerical, rtol=1e-7)
    numerical2 = (zbl_pair_derivative(r + h, z1, z2) - zbl_pair_derivative(r - h, z1, z2)) / (2 * h)
    np.testing.assert_allclose(zbl_pair_second_derivative(r, z1, z2), numerical2, rtol=1e-7)
    assert np.all(zbl_pair_derivative(r, z1, z2) < 0)


def test_switched_energy_and_derivatives_vanish_at_outer_cutoff() -> None:
    z1, z2 = Z_AL, Z_CU
    # Exactly zero at and beyond the outer cutoff.
    beyond = np.array([OUTER, OUTER + 1e-12, 4.5, 10.0, 1e3])
    assert np.all(zbl_switched_energy(beyond, z1, z2, INNER, OUTER) == 0.0)
    assert np.all(zbl_switched_derivative(beyond, z1, z2, INNER, OUTER) == 0.0)
    # E, E' and E'' vanish at rc: E(rc - h) ~ h^3 and E'(rc - h) ~ h^2.
    h = 2e-3
    e1, e2 = zbl_switched_energy([OUTER - h, OUTER - 2 * h], z1, z2, INNER, OUTER)
    d1, d2 = zbl_switched_derivative([OUTER - h, OUTER - 2 * h], z1, z2, INNER, OUTER)
    assert e2 / e1 == pytest.approx(8.0, rel=0.02)
    assert d2 / d1 == pytest.approx(4.0, rel=0.02)
    # Second derivative at rc from the switched first derivative (one-sided, O(h)).
    eps = 1e-6
    d_at = zbl_switched_derivative([OUTER - eps, OUTER - 2 * eps], z1, z2, INNER, OUTER)
    scale = abs(float(zbl_pair_second_derivative(OUTER, z1, z2)))
    assert abs(d_at[0] - d_at[1]) / eps < 1e-4 * scale
    # And the polynomial conditions, analytically: A/3 tc^3 + B/4 tc^4 + C = -E(rc) and so on.
    a, b, c = zbl_switching_coefficients(z1, z2, INNER, OUTER)
    tc = OUTER - INNER
    assert a / 3 * tc**3 + b / 4 * tc**4 + c == pytest.approx(-zbl_pair_energy(OUTER, z1, z2), rel=1e-12)
    assert a * tc**2 + b * tc**3 == pytest.approx(-zbl_pair_derivative(OUTER, z1, z2), rel=1e-12)
    assert 2 * a * tc + 3 * b * tc**2 == pytest.approx(-zbl_pair_second_derivative(OUTER, z1, z2), rel=1e-12)


def test_switched_energy_is_smooth_at_inner_cutoff_and_shifted_inside() -> None:
    z1, z2 = Z_CU, Z_CU
    _, _, c = zbl_switching_coefficients(z1, z2, INNER, OUTER)
    r = np.array([0.5, 1.0, 2.0, INNER])
    np.testing.assert_allclose(zbl_switched_energy(r, z1, z2, INNER, OUTER), zbl_pair_energy(r, z1, z2) + c, rtol=1e-14)
    np.testing.assert_array_equal(zbl_switched_derivative(r, z1, z2, INNER, OUTER), zbl_pair_derivative(r, z1, z2))
    h = 1e-6
    left, right = zbl_switched_energy([INNER - h, INNER + h], z1, z2, INNER, OUTER)
    assert abs(left - right) < 1e-5
    dl, dr = zbl_switched_derivative([INNER - h, INNER + h], z1, z2, INNER, OUTER)
    assert abs(dl - dr) < 1e-5
    # The switched derivative is the derivative of the switched energy, across the whole range.
    r = np.linspace(0.5, OUTER - 1e-3, 60)
    numerical = (
        zbl_switched_energy(r + 1e-5, z1, z2, INNER, OUTER) - zbl_switched_energy(r - 1e-5, z1, z2, INNER, OUTER)
    ) / 2e-5
    np.testing.assert_allclose(zbl_switched_derivative(r, z1, z2, INNER, OUTER), numerical, rtol=1e-7, atol=1e-9)


def test_equal_cutoffs_give_a_plain_energy_shift_like_lammps() -> None:
    r = np.array([0.8, 2.0, 2.999, 3.0, 3.5])
    expected = np.where(r < 3.0, zbl_pair_energy(r, Z_AL, Z_CU) - zbl_pair_energy(3.0, Z_AL, Z_CU), 0.0)
    np.testing.assert_allclose(zbl_switched_energy(r, Z_AL, Z_CU, 3.0, 3.0), expected, rtol=1e-14)
    np.testing.assert_array_equal(
        zbl_switched_derivative(r, Z_AL, Z_CU, 3.0, 3.0),
        np.where(r < 3.0, zbl_pair_derivative(r, Z_AL, Z_CU), 0.0),
    )


@pytest.mark.parametrize(("inner", "outer"), [(0.0, 1.0), (-1.0, 2.0), (3.0, 2.0), (1.0, float("inf"))])
def test_invalid_cutoffs_are_rejected(inner: float, outer: float) -> None:
    with pytest.raises(ValueError, match="cutoff"):
        ZBLCalculator(inner, outer)


def test_conflicting_pair_cutoffs_are_rejected() -> None:
    with pytest.raises(ValueError, match="conflicting"):
        ZBLCalculator(1.0, 2.0, cutoffs={("Al", "Cu"): (1.0, 2.0), ("Cu", "Al"): (1.0, 2.5)})
    with pytest.raises(ValueError, match="cutoff"):
        ZBLCalculator(1.0, 2.0, cutoffs={("Al", "Cu"): (2.0, 1.0)})
    with pytest.raises(ValueError, match="symbol"):
        ZBLCalculator(1.0, 2.0, cutoffs={("Al", "Xx"): (1.0, 2.0)})


# --- the calculator ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.4, 1.0, 2.5, 3.0, 3.4, 3.99, 4.0, 4.5])
def test_dimer_energy_and_forces(r: float) -> None:
    direction = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    atoms = Atoms("AlCu", positions=[[0.1, 0.2, 0.3], [0.1, 0.2, 0.3] + r * direction])
    atoms.calc = ZBLCalculator(INNER, OUTER)
    expected = float(zbl_switched_energy(r, Z_AL, Z_CU, INNER, OUTER))
    assert atoms.get_potential_energy() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(atoms.get_potential_energies(), [expected / 2, expected / 2], rtol=1e-12)
    de = float(zbl_switched_derivative(r, Z_AL, Z_CU, INNER, OUTER))
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces[1], -de * direction, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(forces[0], -forces[1], rtol=0, atol=1e-14)
    if r >= OUTER:
        assert atoms.get_potential_energy() == 0.0
        assert np.all(forces == 0.0)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_cluster_energy_is_sum_of_pair_energies_with_per_pair_cutoffs() -> None:
    rng = np.random.default_rng(3)
    atoms = Atoms("AlCuCuAlH", positions=rng.uniform(0.0, 3.0, size=(5, 3)))
    cutoffs = {("Cu", "Al"): (1.0, 2.0), (29, 29): (2.5, 3.5), ("H", "Al"): (0.5, 0.5)}
    atoms.calc = ZBLCalculator(2.0, 2.5, cutoffs=cutoffs)
    lookup = {(13, 29): (1.0, 2.0), (29, 29): (2.5, 3.5), (1, 13): (0.5, 0.5)}
    expected = 0.0
    for i, j in itertools.combinations(range(len(atoms)), 2):
        zi, zj = sorted((int(atoms.numbers[i]), int(atoms.numbers[j])))
        inner, outer = lookup.get((zi, zj), (2.0, 2.5))
        expected += float(zbl_switched_energy(atoms.get_distance(i, j), zi, zj, inner, outer))
    assert atoms.get_potential_energy() == pytest.approx(expected, rel=1e-12)
    assert atoms.get_potential_energies().sum() == pytest.approx(expected, rel=1e-12)
    assert atoms.calc.pair_cutoff(29, 13) == (1.0, 2.0)
    numerical = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), numerical, rtol=1e-6, atol=1e-6)


def test_periodic_images_are_summed_explicitly() -> None:
    """A cell smaller than the cutoff: compare with a brute-force sum over lattice translations."""
    atoms = tiny_cell()
    atoms.calc = ZBLCalculator(INNER, OUTER)
    cell = atoms.cell.array
    expected = 0.0
    for shift in itertools.product(range(-4, 5), repeat=3):
        t = np.asarray(shift) @ cell
        for i, j in itertools.product(range(2), repeat=2):
            if i == j and shift == (0, 0, 0):
                continue
            r = np.linalg.norm(atoms.positions[j] + t - atoms.positions[i])
            zi, zj = atoms.numbers[i], atoms.numbers[j]
            expected += 0.5 * float(zbl_switched_energy(r, zi, zj, INNER, OUTER))
    assert atoms.get_potential_energy() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-6), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [alcu_cell, tiny_cell])
def test_forces_and_stress_match_finite_differences(make) -> None:
    atoms = make()
    atoms.calc = ZBLCalculator(INNER, OUTER, cutoffs={("Al", "Cu"): (1.5, 2.8)})
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1.0  # strongly repulsive contacts, not just the switching tail
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-5), rtol=1e-6, atol=1e-6)
    stress = atoms.get_stress()
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-6), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-13)


def test_translation_and_rotation_invariance() -> None:
    atoms = alcu_cell(seed=1)
    atoms.calc = ZBLCalculator(INNER, OUTER)
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

    moved = atoms.copy()
    moved.translate([1.234, -0.77, 5.1])
    moved.wrap()
    moved.calc = ZBLCalculator(INNER, OUTER)
    assert moved.get_potential_energy() == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(moved.get_forces(), forces, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(moved.get_stress(), stress, rtol=1e-10, atol=1e-12)

    cluster = Atoms("AlCuAlCu", positions=[[0, 0, 0], [1.2, 0.3, 0], [0.2, 2.1, 0.4], [3.0, 1.0, -0.5]])
    cluster.calc = ZBLCalculator(INNER, OUTER)
    e0, f0 = cluster.get_potential_energy(), cluster.get_forces()
    np.testing.assert_allclose(f0.sum(axis=0), 0.0, atol=1e-11)
    rotated = cluster.copy()
    rotated.rotate(37.0, (1.0, 2.0, -0.5), center=(0.3, 0.1, 0.0))
    rotated.translate([10.0, -3.0, 2.0])
    rotated.calc = ZBLCalculator(INNER, OUTER)
    assert rotated.get_potential_energy() == pytest.approx(e0, rel=1e-12)
    rotation = np.linalg.lstsq(
        cluster.positions - cluster.positions.mean(0),
        rotated.positions - rotated.positions.mean(0),
        rcond=None,
    )[0]
    np.testing.assert_allclose(rotated.get_forces(), f0 @ rotation, rtol=1e-10, atol=1e-10)


def test_isolated_atom_and_non_periodic_cell_without_volume() -> None:
    atom = Atoms("Cu")
    atom.calc = ZBLCalculator(INNER, OUTER)
    assert atom.get_potential_energy() == 0.0
    np.testing.assert_array_equal(atom.get_forces(), np.zeros((1, 3)))

    slab = alcu_cell()
    slab.pbc = (True, True, False)
    slab.calc = ZBLCalculator(INNER, OUTER)
    assert np.isfinite(slab.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        slab.get_stress()


# --- comparison with LAMMPS -------------------------------------------------------------------------------

#: LAMMPS' eV/Å^3 -> bar factor for ``units metal`` (``force->nktv2p``).
LAMMPS_NKTV2P = 1.6021765e6


def run_lammps(atoms: Atoms, pair_lines: list[str], workdir: Path) -> dict[str, np.ndarray | float]:
    """Single-point LAMMPS run: energy (eV), per-atom energies, forces (eV/Å), stress (eV/Å^3, ASE sign)."""
    binary = lammps_binary()
    cell = atoms.cell.array
    assert np.allclose(cell[np.triu_indices(3, 1)], 0.0), "use LAMMPS' lower-triangular cell orientation"
    write(workdir / "data.lmp", atoms, format="lammps-data", specorder=["Al", "Cu"], masses=True, units="metal")
    boundary = " ".join("p" if p else "f" for p in atoms.pbc)
    values = " ".join(f"$({key}:%.17g)" for key in ("pe", "pxx", "pyy", "pzz", "pyz", "pxz", "pxy"))
    script = "\n".join(
        [
            "units metal",
            "atom_style atomic",
            f"boundary {boundary}",
            "atom_modify map array",
            "read_data data.lmp",
            *pair_lines,
            "compute peatom all pe/atom",
            "dump forces all custom 1 forces.dump id fx fy fz c_peatom",
            "dump_modify forces format float %.17g sort id",
            "thermo_style custom step pe pxx pyy pzz pyz pxz pxy",
            "run 0",
            f'print "{values}" file result.txt',
            "",
        ]
    )
    (workdir / "in.lmp").write_text(script)
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
    return {
        "energy": pe,
        "energies": dump[:, 4],
        "forces": dump[:, 1:4],
        # LAMMPS' pressure tensor (bar) is +virial/V; ASE's stress is -virial/V in eV/Å^3.
        "stress": -np.array(pressure) / LAMMPS_NKTV2P,
    }


def compare_with_lammps(atoms: Atoms, calc: ZBLCalculator, lammps: dict, stress: bool) -> dict[str, float]:
    """Assert agreement to 1e-9 relative (LAMMPS writes 17 digits); return the max absolute differences."""
    atoms = atoms.copy()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    energies = atoms.get_potential_energies()
    forces = atoms.get_forces()
    assert energy == pytest.approx(lammps["energy"], rel=1e-9, abs=1e-10)
    np.testing.assert_allclose(energies, lammps["energies"], rtol=1e-9, atol=1e-10)
    fscale = max(1.0, float(np.abs(forces).max()))
    np.testing.assert_allclose(forces, lammps["forces"], rtol=1e-9, atol=1e-10 * fscale)
    diffs = {
        "energy": abs(energy - lammps["energy"]),
        "energies": float(np.abs(energies - lammps["energies"]).max()),
        "forces": float(np.abs(forces - lammps["forces"]).max()),
    }
    if stress:
        ours = atoms.get_stress()
        sscale = max(1e-3, float(np.abs(ours).max()))
        # LAMMPS' nktv2p (1.6021765e6) has 8 digits, so stress can only agree to ~1e-8 relative.
        np.testing.assert_allclose(ours, lammps["stress"], rtol=1e-7, atol=1e-7 * sscale)
        diffs["stress"] = float(np.abs(ours - lammps["stress"]).max())
    return diffs


def dimer_scan() -> tuple[Atoms, np.ndarray, np.ndarray]:
    """Many isolated dimers (Al-Al, Al-Cu, Cu-Cu) at distances across the switching region, 12 Å apart."""
    distances = [0.25, 0.6, 1.0, 1.8, 2.5, 2.95, 3.0001, 3.2, 3.5, 3.8, 3.95, 3.9999, 4.0001, 4.3]
    kinds = [("Al", "Al"), ("Al", "Cu"), ("Cu", "Cu")]
    rng = np.random.default_rng(7)
    symbols, positions, pair_r = [], [], []
    for n, ((s1, s2), r) in enumerate(itertools.product(kinds, distances)):
        origin = np.array([6.0 + 12.0 * (n % 7), 6.0 + 12.0 * (n // 7), 6.0])
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        symbols += [s1, s2]
        positions += [origin - 0.5 * r * direction, origin + 0.5 * r * direction]
        pair_r.append(r)
    ncols, nrows = 7, -(-len(pair_r) // 7)
    atoms = Atoms(symbols, positions=positions, cell=[12.0 * ncols, 12.0 * nrows, 12.0], pbc=False)
    numbers = atoms.numbers.reshape(-1, 2)
    return atoms, np.array(pair_r), numbers


@pytest.fixture(scope="module")
def lammps_diffs() -> Iterator[dict[str, dict[str, float]]]:
    """Collects the LAMMPS-vs-Python differences of the tests below (printed with ``pytest -s``)."""
    diffs: dict[str, dict[str, float]] = {}
    yield diffs
    for name, values in diffs.items():
        print(f"\nLAMMPS vs ZBLCalculator, {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in values.items()))


@pytest.mark.parametrize(("inner", "outer"), [(INNER, OUTER), (3.0, 3.0), (1.0, 3.6)])
def test_lammps_dimer_scan(tmp_path: Path, lammps_diffs: dict, inner: float, outer: float) -> None:
    atoms, pair_r, numbers = dimer_scan()
    lammps = run_lammps(
        atoms, [f"pair_style zbl {inner} {outer}", "pair_coeff 1 1 13 13", "pair_coeff 2 2 29 29"], tmp_path
    )
    # Each atom of a dimer carries half its pair energy.
    pair_energy = lammps["energies"].reshape(-1, 2).sum(axis=1)
    np.testing.assert_allclose(
        pair_energy,
        zbl_switched_energy(pair_r, numbers[:, 0], numbers[:, 1], inner, outer),
        rtol=1e-9,
        atol=1e-12,
    )
    force_norm = np.linalg.norm(lammps["forces"][1::2], axis=1)
    np.testing.assert_allclose(
        force_norm,
        np.abs(zbl_switched_derivative(pair_r, numbers[:, 0], numbers[:, 1], inner, outer)),
        rtol=1e-9,
        atol=1e-12,
    )
    lammps_diffs[f"dimer scan zbl {inner} {outer}"] = compare_with_lammps(
        atoms, ZBLCalculator(inner, outer), lammps, stress=False
    )


@pytest.mark.parametrize("make", [alcu_cell, tiny_cell])
def test_lammps_periodic_cell(tmp_path: Path, lammps_diffs: dict, make) -> None:
    atoms = make()
    lammps = run_lammps(
        atoms, [f"pair_style zbl {INNER} {OUTER}", "pair_coeff 1 1 13 13", "pair_coeff 2 2 29 29"], tmp_path
    )
    lammps_diffs[f"{make.__name__} zbl {INNER} {OUTER}"] = compare_with_lammps(
        atoms, ZBLCalculator(INNER, OUTER), lammps, stress=True
    )


def test_lammps_per_pair_cutoffs_via_hybrid_overlay(tmp_path: Path, lammps_diffs: dict) -> None:
    """Per-pair cutoffs equal one ``zbl`` instance per type pair under ``pair_style hybrid/overlay``."""
    atoms = alcu_cell(seed=2)
    pair_lines = [
        "pair_style hybrid/overlay zbl 3.0 4.0 zbl 1.5 2.8 zbl 2.0 3.5",
        "pair_coeff 1 1 zbl 1 13 13",
        "pair_coeff 1 2 zbl 2 13 29",
        "pair_coeff 2 2 zbl 3 29 29",
    ]
    lammps = run_lammps(atoms, pair_lines, tmp_path)
    calc = ZBLCalculator(3.0, 4.0, cutoffs={("Cu", "Al"): (1.5, 2.8), ("Cu", "Cu"): (2.0, 3.5)})
    lammps_diffs["alcu_cell hybrid/overlay"] = compare_with_lammps(atoms, calc, lammps, stress=True)
