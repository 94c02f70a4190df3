"""Repulsion cutoffs from data and covalent radii, and the dimer check (AiiDA-free)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii

from aiida_autopipec.learning.baseline import (
    check_dimer_curves,
    pair_key,
    shortest_pair_distances,
    zbl_pair_cutoffs,
)
from aiida_autopipec.learning.zbl import zbl_switched_derivative, zbl_switched_energy


def test_pair_key_is_order_independent():
    assert pair_key("Cu", "Al") == pair_key("Al", "Cu") == "Al-Cu"


def test_shortest_pair_distances_include_periodic_images():
    # fcc Cu, a = 3.6 Å: nearest neighbours at a / sqrt(2), through periodic images in the 1-atom cell.
    assert shortest_pair_distances([bulk("Cu", "fcc", a=3.6)], ["Cu"]) == {"Cu-Cu": pytest.approx(3.6 / np.sqrt(2))}
    dimer = Atoms("AlCu", positions=[[0, 0, 0], [2.1, 0, 0]])
    assert shortest_pair_distances([dimer], ["Al", "Cu"]) == {"Al-Cu": pytest.approx(2.1)}


def test_all_pairs_distances_agree_with_the_neighbour_list(monkeypatch):
    """The all-pairs path (small structures, images within reach) gives what ASE's neighbour list gives."""
    from aiida_autopipec.learning import baseline
    from aiida_autopipec.learning.reference_data import emt_dataset

    rng = np.random.default_rng(5)
    structures = [*emt_dataset(6, seed=4, rattle=0.2, labelled=False), bulk("Cu", "fcc", a=3.6)]
    for _ in range(40):  # skewed cells, some axes not periodic, some too thin for one image
        count = int(rng.integers(1, 12))
        cell = np.eye(3) * rng.uniform(2.0, 9.0) + rng.normal(size=(3, 3)) * 0.6
        atoms = Atoms(numbers=rng.choice([13, 29], count), cell=cell, pbc=rng.random(3) < 0.7)
        atoms.positions = rng.random((count, 3)) @ cell
        if abs(np.linalg.det(cell)) > 1.0:
            structures.append(atoms)
    for atoms in structures:
        fast = shortest_pair_distances([atoms], ["Al", "Cu"])
        monkeypatch.setattr(baseline, "ALL_PAIRS_MAX_ATOMS", 0)
        reference = shortest_pair_distances([atoms], ["Al", "Cu"])
        monkeypatch.setattr(baseline, "ALL_PAIRS_MAX_ATOMS", 80)
        assert fast == pytest.approx(reference, abs=1e-9)


def test_cutoff_rule_by_hand():
    radius_sum = covalent_radii[atomic_numbers["Al"]] + covalent_radii[atomic_numbers["Cu"]]
    cutoffs = zbl_pair_cutoffs(["Al", "Cu"], {"Al-Cu": 2.3, "Cu-Cu": 1.7})
    inner, outer = cutoffs["Al-Cu"]
    assert outer == pytest.approx(min(0.9 * 2.3, radius_sum), abs=1e-4)
    assert inner == pytest.approx(max(0.75 * outer, min(1.5, 0.9 * outer)), abs=1e-4)
    assert inner >= 1.5  # metals: pure ZBL below 1.5 Å
    # Cu-Cu closer in the data: the core moves inwards and still stays below the data.
    assert cutoffs["Cu-Cu"][1] <= 0.9 * 1.7
    # Al-Al never seen: the covalent-radius sum decides.
    assert cutoffs["Al-Al"][1] == pytest.approx(2 * covalent_radii[atomic_numbers["Al"]], abs=1e-4)


def _curve(r, energy, force):
    return {"r": r.tolist(), "energy": energy.tolist(), "force": force.tolist()}


R = np.arange(0.3, 4.0, 0.01)


def test_switched_zbl_passes():
    inner, outer = 1.6, 2.2
    curve = _curve(R, zbl_switched_energy(R, 13, 29, inner, outer), -zbl_switched_derivative(R, 13, 29, inner, outer))
    assert check_dimer_curves({"Al-Cu": curve}, {"Al-Cu": (inner, outer)}) == {}


@pytest.mark.parametrize(
    ("energy", "problem"),
    [
        (np.exp(-((R - 1.0) ** 2)), "does not decrease"),  # a hump: rises, then falls
        (-np.exp(-R), "does not decrease"),  # attractive all the way in
        (5.0 * np.exp(-2 * R), "below 0.5 x the ZBL repulsion"),  # monotonic but far too soft
    ],
)
def test_unsafe_curves_are_flagged(energy, problem):
    force = -np.gradient(energy, R)
    violations = check_dimer_curves({"Al-Cu": _curve(R, energy, force)}, {"Al-Cu": (1.6, 2.2)})
    assert list(violations) == ["Al-Cu"]
    assert any(problem in message for message in violations["Al-Cu"])
