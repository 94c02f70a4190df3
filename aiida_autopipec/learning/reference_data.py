"""Small labelled datasets made with ASE's EMT calculator: for demos, tests and benchmarks.

EMT is cheap and deterministic, so the quickstart and the test suite can fit real potentials on data they make
themselves. Energies in eV, forces in eV/Å.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, reference_states

__all__ = ["EMT_ELEMENTS", "emt_dataset", "label_with_emt"]

#: Elements ASE's EMT calculator supports as fcc metals.
EMT_ELEMENTS = ("Al", "Cu", "Ni", "Pd", "Ag", "Pt", "Au")


def label_with_emt(structures: Sequence[Atoms]) -> list[Atoms]:
    """Copies of ``structures`` with EMT energies and forces frozen in a SinglePointCalculator."""
    from ase.calculators.emt import EMT

    labelled = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        labelled.append(atoms)
    return labelled


def emt_dataset(
    num_structures: int = 40,
    elements: Sequence[str] = ("Al", "Cu"),
    seed: int = 0,
    repeat: tuple[int, int, int] = (1, 1, 2),
    rattle: float = 0.08,
    strain: float = 0.04,
    labelled: bool = True,
) -> list[Atoms]:
    """Random fcc alloys of ``elements``: strained by up to ±``strain``, rattled by ``rattle`` Å (Gaussian).

    The lattice constant is the composition-weighted mean of the elements' reference fcc lattice constants.
    """
    unknown = [e for e in elements if e not in EMT_ELEMENTS]
    if unknown:
        raise ValueError(f"elements {unknown} are not supported by EMT fcc data; use some of {EMT_ELEMENTS}")
    rng = np.random.default_rng(seed)
    structures = []
    for index in range(num_structures):
        atoms = bulk(elements[0], "fcc", a=4.0, cubic=True) * repeat
        symbols = rng.choice(list(elements), size=len(atoms))
        if index < len(elements):  # make sure every element appears, also in tiny sets
            symbols[:] = elements[index]
        atoms.set_chemical_symbols(symbols.tolist())
        lattice = np.mean([reference_states[atomic_numbers[s]]["a"] for s in symbols])
        atoms.set_cell(atoms.cell * lattice / 4.0, scale_atoms=True)
        deformation = np.eye(3) + rng.uniform(-strain, strain, size=(3, 3))
        atoms.set_cell(atoms.cell @ ((deformation + deformation.T) / 2), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, size=atoms.positions.shape)
        structures.append(atoms)
    return label_with_emt(structures) if labelled else structures
