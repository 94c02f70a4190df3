"""Universal Ziegler-Biersack-Littmark (ZBL) screened-nuclear repulsion, as LAMMPS ``pair_style zbl`` has it.

Why this exists: a fitted potential is usually combined with a ZBL core
(``pair_style hybrid/overlay ... zbl``) so that atoms cannot pass through each other at short range. To fit
the machine-learned part on the *difference* to that core, and to check the combined model without LAMMPS,
we need the very same numbers LAMMPS produces. Everything here therefore follows ``src/pair_zbl.cpp`` term
by term: the same constants, the same switching polynomial and the same energy shift.

Units (LAMMPS ``units metal`` = ASE units): distances in Å, energies in eV, forces and dE/dr in eV/Å,
d²E/dr² in eV/Å², stress in eV/Å^3.

The pair energy is

    E(r) = (e²/4πε₀) Z1 Z2 / r · φ(r/a),   a = 0.46850 Å / (Z1^0.23 + Z2^0.23),
    φ(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x).

LAMMPS ``pair_style zbl inner outer`` adds a switching term S(r) so that the energy and its first and second
derivative all vanish at ``outer``; with t = r - inner and tc = outer - inner

    E_sw(r) = E(r) + C                                  r <= inner
    E_sw(r) = E(r) + A/3 t³ + B/4 t⁴ + C                inner < r < outer
    E_sw(r) = 0                                         r >= outer

    A = (-3 E'(rc) + tc E''(rc)) / tc²,  B = (2 E'(rc) - tc E''(rc)) / tc³,
    C = -E(rc) + tc/2 E'(rc) - tc²/12 E''(rc),           rc = outer.

So the force is switched off smoothly and the energy is constant-shifted by C everywhere inside ``inner``.
LAMMPS accepts ``inner == outer``; then A and B are never used (no r lies strictly between the two) and the
potential is just E(r) - E(rc), with a force that jumps at rc. The same is done here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "COULOMB_CONSTANT",
    "ZBLCalculator",
    "zbl_pair_derivative",
    "zbl_pair_energy",
    "zbl_pair_second_derivative",
    "zbl_switched_derivative",
    "zbl_switched_energy",
    "zbl_switching_coefficients",
]

#: e²/4πε₀ in eV·Å. This is LAMMPS' ``force->qqr2e * force->qelectron**2`` for ``units metal``
#: (``qqr2e = 14.399645``, ``qelectron = 1.0`` in ``update.cpp``). CODATA 2018 gives 14.3996454784 eV·Å;
#: we take the truncated LAMMPS value so that energies agree with LAMMPS to rounding error, not to 3e-8.
COULOMB_CONSTANT = 14.399645

#: Universal screening length prefactor (Å) and the exponent of Z in a = a0 / (Z1^p + Z2^p).
ZBL_A0 = 0.46850
ZBL_EXPONENT = 0.23
#: Coefficients c_k and decay constants d_k of the universal screening function φ(x) = Σ c_k exp(-d_k x).
#: The order (smallest decay first) is the one of ``pair_zbl_const.h``, kept so sums round the same way.
ZBL_COEFFICIENTS = (0.02817, 0.28022, 0.50986, 0.18175)
ZBL_DECAYS = (0.20162, 0.40290, 0.94229, 3.19980)

FloatArray = NDArray[np.float64]


def _screening_sums(
    r: ArrayLike, z1: ArrayLike, z2: ArrayLike, order: int
) -> tuple[FloatArray, FloatArray, list[FloatArray]]:
    """Return r, Z1 Z2 e²/4πε₀ (eV·Å) and Σ c_k (d_k/a)^n exp(-d_k r/a) for n = 0..order.

    The screening length enters as 1/a = (Z1^0.23 + Z2^0.23)/a0, multiplied into each d_k first, in the
    order LAMMPS uses, so our results round like LAMMPS' ones.
    """
    r = np.asarray(r, dtype=float)
    z1 = np.asarray(z1, dtype=float)
    z2 = np.asarray(z2, dtype=float)
    ainv = (z1**ZBL_EXPONENT + z2**ZBL_EXPONENT) / ZBL_A0
    zze = z1 * z2 * COULOMB_CONSTANT
    sums = [np.zeros(np.broadcast_shapes(r.shape, ainv.shape)) for _ in range(order + 1)]
    for c, d in zip(ZBL_COEFFICIENTS, ZBL_DECAYS, strict=True):
        da = d * ainv
        term = c * np.exp(-da * r)
        for n in range(order + 1):
            sums[n] = sums[n] + term
            term = term * da
    return r, zze, sums


def zbl_pair_energy(r: ArrayLike, z1: ArrayLike, z2: ArrayLike) -> FloatArray:
    """Unswitched ZBL pair energy E(r) in eV for distances r (Å) and nuclear charges z1, z2 (broadcast)."""
    r, zze, (s0,) = _screening_sums(r, z1, z2, 0)
    return zze * s0 / r


def zbl_pair_derivative(r: ArrayLike, z1: ArrayLike, z2: ArrayLike) -> FloatArray:
    """Unswitched dE/dr in eV/Å; negative everywhere, since ZBL is purely repulsive."""
    r, zze, (s0, s1) = _screening_sums(r, z1, z2, 1)
    rinv = 1.0 / r
    return zze * (-s1 - s0 * rinv) * rinv


def zbl_pair_second_derivative(r: ArrayLike, z1: ArrayLike, z2: ArrayLike) -> FloatArray:
    """Unswitched d²E/dr² in eV/Å²; needed for the switching coefficients."""
    r, zze, (s0, s1, s2) = _screening_sums(r, z1, z2, 2)
    rinv = 1.0 / r
    return zze * (s2 + 2.0 * s1 * rinv + 2.0 * s0 * rinv * rinv) * rinv


def _check_cutoffs(inner: float, outer: float) -> None:
    """Reject what LAMMPS' ``pair_style zbl`` rejects (``inner <= 0`` or ``inner > outer``)."""
    if not (np.isfinite(inner) and np.isfinite(outer)):
        raise ValueError(f"ZBL cutoffs must be finite, got inner={inner}, outer={outer}")
    if inner <= 0.0:
        raise ValueError(f"ZBL inner cutoff must be positive, got {inner}")
    if inner > outer:
        raise ValueError(f"ZBL inner cutoff {inner} exceeds outer cutoff {outer}")


def zbl_switching_coefficients(
    z1: ArrayLike, z2: ArrayLike, inner: ArrayLike, outer: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return LAMMPS' switching coefficients (A in eV/Å³, B in eV/Å⁴, C in eV), see the module docstring.

    A and B are set to 0 where ``inner == outer``: LAMMPS divides by zero there but never uses the result.
    """
    inner = np.asarray(inner, dtype=float)
    outer = np.asarray(outer, dtype=float)
    if np.any(inner <= 0.0) or np.any(inner > outer):
        raise ValueError("ZBL cutoffs need 0 < inner <= outer")
    tc = outer - inner
    fc = zbl_pair_energy(outer, z1, z2)
    fcp = zbl_pair_derivative(outer, z1, z2)
    fcpp = zbl_pair_second_derivative(outer, z1, z2)
    switched = tc > 0.0
    tcs = np.where(switched, tc, 1.0)
    a = np.where(switched, (-3.0 * fcp + tcs * fcpp) / (tcs * tcs), 0.0)
    b = np.where(switched, (2.0 * fcp - tcs * fcpp) / (tcs * tcs * tcs), 0.0)
    c = -fc + (tc / 2.0) * fcp - (tc * tc / 12.0) * fcpp
    return a, b, c


def _switched(
    r: FloatArray,
    z1: ArrayLike,
    z2: ArrayLike,
    inner: ArrayLike,
    outer: ArrayLike,
    coefficients: tuple[FloatArray, FloatArray, FloatArray],
) -> tuple[FloatArray, FloatArray]:
    """Switched energy (eV) and dE/dr (eV/Å) from precomputed coefficients, arranged as in pair_zbl.cpp."""
    a, b, c = coefficients
    r = np.asarray(r, dtype=float)
    # t = 0 inside the inner cutoff makes the switching terms vanish exactly, as LAMMPS skips them there.
    t = np.maximum(r - np.asarray(inner, dtype=float), 0.0)
    energy = zbl_pair_energy(r, z1, z2) + c + t * t * t * (a / 3.0 + (b / 4.0) * t)
    derivative = zbl_pair_derivative(r, z1, z2) + t * t * (a + b * t)
    inside = r < np.asarray(outer, dtype=float)
    return np.where(inside, energy, 0.0), np.where(inside, derivative, 0.0)


def zbl_switched_energy(r: ArrayLike, z1: ArrayLike, z2: ArrayLike, inner: ArrayLike, outer: ArrayLike) -> FloatArray:
    """Pair energy (eV) of LAMMPS ``pair_style zbl inner outer``: shifted, switched, 0 for r >= outer."""
    coefficients = zbl_switching_coefficients(z1, z2, inner, outer)
    return _switched(np.asarray(r, dtype=float), z1, z2, inner, outer, coefficients)[0]


def zbl_switched_derivative(
    r: ArrayLike, z1: ArrayLike, z2: ArrayLike, inner: ArrayLike, outer: ArrayLike
) -> FloatArray:
    """dE/dr (eV/Å) of LAMMPS ``pair_style zbl inner outer``; exactly 0 for r >= outer."""
    coefficients = zbl_switching_coefficients(z1, z2, inner, outer)
    return _switched(np.asarray(r, dtype=float), z1, z2, inner, outer, coefficients)[1]


def _atomic_number(species: str | int) -> int:
    """Accept a chemical symbol or an atomic number, so ``cutoffs`` keys can be written either way."""
    if isinstance(species, str):
        if species not in atomic_numbers:
            raise ValueError(f"unknown chemical symbol {species!r}")
        return atomic_numbers[species]
    number = int(species)
    if number <= 0:
        raise ValueError(f"atomic numbers must be positive, got {species!r}")
    return number


class ZBLCalculator(Calculator):
    """ASE calculator reproducing LAMMPS ``pair_style zbl inner outer`` (energies, forces, stress).

    Each unordered pair of atoms closer than its outer cutoff contributes :func:`zbl_switched_energy`
    (nuclear charges = atomic numbers); per-atom energies get half of each pair, as LAMMPS'
    ``compute pe/atom`` does. Works for periodic, partly periodic and isolated structures; the stress
    (eV/Å^3, ASE sign: negative under compression, Voigt order xx yy zz yz xz xy) is only available for
    cells periodic in all three directions.

    ``cutoffs`` maps element pairs, e.g. ``{("Al", "Cu"): (1.5, 2.5)}`` (symbols or atomic numbers, either
    order), to their own ``(inner, outer)``; other pairs use the global cutoffs. LAMMPS' ``pair_style zbl``
    itself has only global cutoffs (``pair_coeff i j z_i z_j`` takes no cutoff), so per-pair values
    correspond to ``pair_style hybrid/overlay zbl in1 out1 zbl in2 out2 ...`` with each type pair given to
    exactly one ``zbl`` instance (``pair_coeff 1 2 zbl 2 13 29``).
    """

    implemented_properties = ("energy", "free_energy", "energies", "forces", "stress")

    def __init__(
        self,
        inner_cutoff: float,
        outer_cutoff: float,
        cutoffs: Mapping[tuple[str | int, str | int], tuple[float, float]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.inner_cutoff = float(inner_cutoff)
        self.outer_cutoff = float(outer_cutoff)
        _check_cutoffs(self.inner_cutoff, self.outer_cutoff)
        #: Per-pair cutoffs keyed by sorted atomic numbers: {(z_small, z_large): (inner, outer)}.
        self.pair_cutoffs: dict[tuple[int, int], tuple[float, float]] = {}
        for (first, second), (inner, outer) in (cutoffs or {}).items():
            key = tuple(sorted((_atomic_number(first), _atomic_number(second))))
            value = (float(inner), float(outer))
            _check_cutoffs(*value)
            if key in self.pair_cutoffs and self.pair_cutoffs[key] != value:
                raise ValueError(f"conflicting cutoffs given for the pair {first}-{second}")
            self.pair_cutoffs[key] = value

    def pair_cutoff(self, z1: int, z2: int) -> tuple[float, float]:
        """Return (inner, outer) in Å for the element pair (z1, z2)."""
        key = (min(z1, z2), max(z1, z2))
        return self.pair_cutoffs.get(key, (self.inner_cutoff, self.outer_cutoff))

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Evaluate every property at once from one neighbour list (pairs counted in both directions)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("ZBLCalculator: stress needs a cell periodic in 3 directions")

        natoms = len(atoms)
        species, kind = np.unique(atoms.numbers, return_inverse=True)
        # Per species-pair tables of cutoffs and switching coefficients, looked up per neighbour pair.
        cut = np.array([[self.pair_cutoff(int(p), int(q)) for q in species] for p in species], dtype=float)
        cut = cut.reshape(len(species), len(species), 2)
        z1_table, z2_table = np.meshgrid(species.astype(float), species.astype(float), indexing="ij")
        tables = zbl_switching_coefficients(z1_table, z2_table, cut[..., 0], cut[..., 1])

        i, j, d, vec = neighbor_list("ijdD", atoms, float(np.max(cut[..., 1], initial=0.0)))
        ki, kj = kind[i], kind[j]
        keep = d < cut[ki, kj, 1]
        i, j, d, vec, ki, kj = i[keep], j[keep], d[keep], vec[keep], ki[keep], kj[keep]

        pair_energy, pair_derivative = _switched(
            d,
            species[ki],
            species[kj],
            cut[ki, kj, 0],
            cut[ki, kj, 1],
            tuple(table[ki, kj] for table in tables),
        )
        # Every pair appears as (i, j) and (j, i): halves give per-atom energies and the total.
        energies = 0.5 * np.bincount(i, weights=pair_energy, minlength=natoms)
        # vec points from i to j, so -dE/dr_i = dE/dr * vec / r; the (j, i) entry gives atom j its share.
        pair_force = (pair_derivative / d)[:, None] * vec
        forces = np.stack([np.bincount(i, weights=pair_force[:, k], minlength=natoms) for k in range(3)], 1)

        energy = float(energies.sum())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = energies
        self.results["forces"] = forces
        if periodic:
            # stress = (1/V) dE/dstrain = (1/V) sum_pairs E'(r) r_a r_b / r = -virial / V; halved for the
            # double count of pairs.
            stress = 0.5 * (pair_force.T @ vec) / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
