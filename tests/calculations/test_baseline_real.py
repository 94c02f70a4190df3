"""Real fits through AiiDA in each short-range mode: dimer curves of every pair, and delta-model consistency."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.baseline import check_dimer_curves
from aiida_autopipec.learning.dataset import StructureArrays, zbl_baseline
from tests.conftest import FAST_PARAMETERS

pytestmark = pytest.mark.pacemaker

PAIRS = ("Al-Al", "Al-Cu", "Cu-Cu")


def fit(code, structures, test_structures, **parameters):
    return run_get_node(
        PacemakerCalculation,
        code=code,
        training_set=TrainingSetData.from_ase(structures),
        test_set=TrainingSetData.from_ase(test_structures),
        parameters=orm.Dict({**FAST_PARAMETERS, **parameters}),
    )


def curves_of(node):
    data = node.outputs.dimer_curves
    return {
        pair: {q: data.get_array(f"{pair.replace('-', '_')}_{q}") for q in ("r", "energy", "force")}
        for pair in data.base.attributes.get("pairs")
    }


@pytest.mark.parametrize("mode", ["core_repulsion", "zbl_delta"])
def test_repulsive_modes_give_safe_dimers_for_every_pair(pacemaker_code, emt_structures, emt_test_structures, mode):
    results, node = fit(pacemaker_code, emt_structures, emt_test_structures, baseline=mode)
    assert node.is_finished_ok, node.exit_message
    cutoffs = results["metrics"]["short_range"]["pair_cutoffs"]
    curves = curves_of(node)
    assert sorted(curves) == list(PAIRS)
    for pair, curve in curves.items():
        inner = cutoffs[pair][0]
        below = curve["r"] < inner
        assert inner >= 1.5  # metals: pure ZBL below 1.5 Å
        assert np.all(np.diff(curve["energy"][below]) < 0), pair  # falls monotonically with r
        assert np.all(curve["force"][below] > 0), pair  # pushes the atoms apart
        assert curve["energy"][curve["r"] <= 1.0].min() > 10.0, pair  # eV above separated atoms: strongly repulsive
    # The delivered potential's own calculator shows the same: a 1.0 Å Al-Cu dimer is far up the wall.
    from ase import Atoms

    dimer = Atoms("AlCu", positions=[[0, 0, 0], [1.0, 0, 0]], cell=[30, 30, 30], pbc=False)
    dimer.calc = results["potential"].get_calculator()
    assert dimer.get_forces()[1, 0] > 10.0  # eV/Å, repulsive


def test_without_baseline_the_check_reports_what_the_curves_show(pacemaker_code, emt_structures, emt_test_structures):
    results, node = fit(pacemaker_code, emt_structures, emt_test_structures, baseline="none")
    assert node.is_finished_ok  # 'none' is the user's explicit choice: flagged, not failed
    short_range = results["metrics"]["short_range"]
    curves = curves_of(node)
    # Independent verdict from the curves: any rise in energy or attraction below a pair's inner cutoff, or an
    # energy below half the bare ZBL repulsion below min(inner, 1.5 Å).
    from ase.data import atomic_numbers

    from aiida_autopipec.learning.zbl import zbl_pair_energy

    unsafe = set()
    for pair, curve in curves.items():
        inner = short_range["pair_cutoffs"][pair][0]
        below, core = curve["r"] < inner, curve["r"] <= min(inner, 1.5)
        z1, z2 = (atomic_numbers[s] for s in pair.split("-"))
        soft = curve["energy"][core] < 0.5 * zbl_pair_energy(curve["r"][core], z1, z2)
        if np.any(np.diff(curve["energy"][below]) >= 0) or np.any(curve["force"][below] <= 0) or soft.any():
            unsafe.add(pair)
    assert set(short_range["violations"]) == unsafe
    assert short_range["safe"] is (not unsafe)
    # A bare ACE model stays finite as r -> 0 (it never reaches ZBL strength); the recorded run in tests/parsers too.
    assert unsafe == set(PAIRS)


def test_delta_model_reproduces_reference_data_to_the_reported_rmse(
    pacemaker_code, emt_structures, emt_test_structures
):
    """ZBL switched on inside the data (cutoffs 2.0-3.2 Å), so the baseline is really subtracted and added back."""
    cutoffs = {pair: [2.0, 3.2] for pair in PAIRS}
    results, node = fit(pacemaker_code, emt_structures, emt_test_structures, baseline="zbl_delta", zbl_cutoffs=cutoffs)
    assert node.is_finished_ok, node.exit_message
    arrays = StructureArrays.from_atoms(emt_test_structures)
    zbl_energies, _ = zbl_baseline(arrays, cutoffs)
    assert np.abs(zbl_energies).max() > 0.1  # eV: the baseline matters for these structures

    potential = results["potential"]
    assert potential.baseline == {"type": "zbl", "pair_cutoffs": cutoffs}
    calculator = potential.get_calculator()  # ACE + ZBL
    energy_errors, force_errors = [], []
    for reference in emt_test_structures:
        atoms = reference.copy()
        atoms.calc = calculator
        energy_errors.append((atoms.get_potential_energy() - reference.get_potential_energy()) / len(atoms))
        force_errors.append((atoms.get_forces() - reference.get_forces()).ravel())
    rmse_energy = np.sqrt(np.mean(np.square(energy_errors)))
    rmse_forces = np.sqrt(np.mean(np.square(np.concatenate(force_errors))))
    test = results["metrics"]["test"]
    assert rmse_energy == pytest.approx(test["rmse_energy"], rel=0.02)
    assert rmse_forces == pytest.approx(test["rmse_forces"], rel=0.02)
    assert "pair_style hybrid/overlay pace zbl 2.0 3.2" in potential.lammps_input()
    assert check_dimer_curves(curves_of(node), potential.short_range["pair_cutoffs"]) == {}
