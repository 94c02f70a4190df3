"""Short-range safety: per-pair repulsion cutoffs from physics and data, and the dimer-curve check.

Rule (documented in docs/zbl.md), for every element pair (i, j), distances in Å:

* ``R_ij``: sum of the covalent radii (ASE's table);
* ``d_ij``: shortest i–j distance in the training data (``R_ij`` if the pair never comes closer than 1.5 R_ij);
* ``outer_ij = min(0.9 d_ij, R_ij)``: the repulsive core is fully off at 90 % of the shortest distance seen,
  so it never touches the fitted data and Pacemaker's metrics stay honest;
* ``inner_ij = max(0.75 outer_ij, min(1.5 Å, 0.9 outer_ij))``: below it the repulsion is pure ZBL; the switching
  region keeps at least 10 % of ``outer_ij``.

For metals (``d_ij`` above ~1.9 Å) this puts ``inner_ij`` at or above 1.5 Å, so the model is pure ZBL, strongly
repulsive, for every r < 1.5 Å.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "INNER_FRACTION",
    "OUTER_FRACTION",
    "check_dimer_curves",
    "pair_key",
    "shortest_pair_distances",
    "zbl_pair_cutoffs",
]

OUTER_FRACTION = 0.9  # of the shortest distance in the data
INNER_FRACTION = 0.75  # of the outer cutoff
MAX_INNER_FRACTION = 0.9  # of the outer cutoff: the switching region is never narrower than this leaves
PURE_ZBL_BELOW = 1.5  # Å: pure ZBL below this distance wherever the data allow it
STRENGTH_FRACTION = 0.5  # of the universal ZBL energy that a dimer must keep below min(inner, 1.5 Å)


def pair_key(first: str, second: str) -> str:
    """``'Al-Cu'``: the two symbols sorted and joined, so each unordered pair has one key."""
    return "-".join(sorted((first, second)))


def covalent_sum(first: str, second: str) -> float:
    from ase.data import atomic_numbers, covalent_radii

    return float(covalent_radii[atomic_numbers[first]] + covalent_radii[atomic_numbers[second]])


def shortest_pair_distances(structures: Sequence[Any], elements: Sequence[str]) -> dict[str, float]:
    """Shortest distance (Å) of every element pair in ``structures`` (ASE Atoms), periodic images included.

    Pairs that never come closer than 1.5 times their covalent-radius sum are left out.
    """
    from ase.data import chemical_symbols
    from ase.neighborlist import neighbor_list

    search = {pair_key(a, b): 1.5 * covalent_sum(a, b) for a in elements for b in elements}
    cutoff = max(search.values())
    shortest: dict[str, float] = {}
    for atoms in structures:
        if len(atoms) < 2 and not atoms.pbc.any():
            continue
        pairs = _minimum_image_pairs(atoms, cutoff)
        if pairs is None:
            first, second, distance = neighbor_list("ijd", atoms, cutoff)
        else:
            first, second, distance = pairs
        numbers = atoms.numbers
        low = np.minimum(numbers[first], numbers[second])
        high = np.maximum(numbers[first], numbers[second])
        codes = low * 1000 + high
        for code in np.unique(codes):
            key = pair_key(chemical_symbols[code // 1000], chemical_symbols[code % 1000])
            d = float(distance[codes == code].min())
            if d < search.get(key, 0.0) and d < shortest.get(key, np.inf):
                shortest[key] = d
    return shortest


#: Up to this many atoms, distances come from all pairs at once instead of ASE's (slower per structure) neighbour list.
ALL_PAIRS_MAX_ATOMS = 80


def _minimum_image_pairs(atoms: Any, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Atom pairs (i <= j) and their distances (Å) to every periodic image within reach of ``cutoff``.

    Differences are wrapped to fractional offsets in [-1/2, 1/2), then shifted by up to ``ceil(cutoff / height)``
    cells along each periodic axis, which reaches every image closer than ``cutoff`` (self images: i == j, shift
    not zero). None for large structures: the caller then uses ASE's neighbour list.
    """
    from ase.geometry import complete_cell

    if len(atoms) > ALL_PAIRS_MAX_ATOMS:
        return None
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = complete_cell(atoms.cell.array)
    reciprocal = np.linalg.inv(cell)
    heights = 1.0 / np.linalg.norm(reciprocal, axis=0)
    reach = np.where(pbc, np.ceil(cutoff / heights), 0).astype(int)
    if np.prod(2 * reach + 1) > 125:  # a thin cell, many images: leave it to the neighbour list
        return None
    first, second = np.triu_indices(len(atoms), k=0)
    fractional = (atoms.positions[second] - atoms.positions[first]) @ reciprocal
    fractional[:, pbc] -= np.round(fractional[:, pbc])
    shifts = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in reach], indexing="ij"), -1).reshape(-1, 3)
    vectors = (fractional[:, None, :] + shifts[None, :, :]) @ cell  # (pairs, shifts, 3)
    distance = np.linalg.norm(vectors, axis=2)
    distance[first == second] = np.where(np.any(shifts != 0, axis=1), distance[first == second], np.inf)
    within = distance < cutoff
    pair_index, _ = np.nonzero(within)
    return first[pair_index], second[pair_index], distance[within]


def zbl_pair_cutoffs(elements: Sequence[str], shortest: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """``{pair: (inner, outer)}`` in Å for every element pair, by the rule in the module docstring."""
    cutoffs = {}
    for i, first in enumerate(elements):
        for second in elements[i:]:
            key = pair_key(first, second)
            radius_sum = covalent_sum(first, second)
            outer = min(OUTER_FRACTION * shortest.get(key, radius_sum / OUTER_FRACTION), radius_sum)
            inner = max(INNER_FRACTION * outer, min(PURE_ZBL_BELOW, MAX_INNER_FRACTION * outer))
            # rounded to 0.1 mÅ: outer down (stays below the data), inner up (keeps 1.5 Å where the rule gives it)
            cutoffs[key] = (math.ceil(round(inner * 1e4, 6)) / 1e4, math.floor(outer * 1e4) / 1e4)
    return cutoffs


def check_dimer_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]], cutoffs: Mapping[str, tuple[float, float]]
) -> dict[str, list[str]]:
    """Violations per pair. Below the pair's inner cutoff the energy must fall monotonically with r and the force
    must push the atoms apart; below ``min(inner, 1.5 Å)`` the energy must also be at least half the universal ZBL
    repulsion (``STRENGTH_FRACTION``), so a model that is merely monotonic but soft does not pass.
    Returns ``{pair: [problems]}``; an empty dict means every pair passed.
    """
    from ase.data import atomic_numbers

    from aiida_autopipec.learning.zbl import zbl_pair_energy

    violations: dict[str, list[str]] = {}
    for key, curve in curves.items():
        r = np.asarray(curve["r"])
        energy = np.asarray(curve["energy"])
        force = np.asarray(curve["force"])
        inner = cutoffs[key][0]
        below = r < inner
        problems = []
        core = r <= min(inner, PURE_ZBL_BELOW)
        first, second = (atomic_numbers[symbol] for symbol in key.split("-"))
        weak = np.flatnonzero(energy[core] < STRENGTH_FRACTION * zbl_pair_energy(r[core], first, second))
        if len(weak):
            problems.append(
                f"energy at r = {r[core][weak[-1]]:.2f} Å is below {STRENGTH_FRACTION:g} x the ZBL repulsion"
            )
        if not np.isfinite(energy).all() or not np.isfinite(force).all():
            problems.append("energy or force is not finite")
        rising = np.flatnonzero(np.diff(energy[below]) >= 0)
        if len(rising):
            problems.append(f"energy does not decrease with r at r = {r[below][rising[0]]:.2f} Å (< {inner:.2f} Å)")
        attractive = np.flatnonzero(force[below] <= 0)
        if len(attractive):
            problems.append(f"force is not repulsive at r = {r[below][attractive[0]]:.2f} Å (< {inner:.2f} Å)")
        if problems:
            violations[key] = problems
    return violations
