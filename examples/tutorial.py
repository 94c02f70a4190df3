"""Tutorial: EMT data -> active learning -> export -> molecular dynamics in ASE with the learned potential.

Run it with ``verdi run examples/tutorial.py`` (or ``python examples/tutorial.py``; it loads the default profile).
``docs/tutorial.md`` walks through it step by step; ``tests/test_tutorial.py`` runs it with a tiny budget.
EMT stands in for DFT: swap ``LABELLER`` for GPAW, Quantum ESPRESSO (via ASE), ... to learn a real potential.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.engine import run_get_node
from ase import units

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.md.verlet import VelocityVerlet

from aiida_autopipec.codes import get_or_create_local_code, get_or_create_localhost
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.reference_data import emt_dataset
from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain

#: The reference method that labels selected structures (any ASE calculator: import path + keyword arguments).
LABELLER = {"import_path": "ase.calculators.emt.EMT", "kwargs": {}}


def get_python_code(computer: orm.Computer) -> orm.InstalledCode:
    """This Python (it has pyace and ASE) as the code that selects and labels candidates."""
    label = "python-autopipec-tutorial"
    try:
        return orm.load_code(f"{label}@{computer.label}")
    except Exception:
        return orm.InstalledCode(label=label, computer=computer, filepath_executable=sys.executable).store()


def learn(
    *,
    pacemaker_code: orm.AbstractCode,
    python_code: orm.AbstractCode,
    initial: int = 6,
    pool: int = 60,
    maxiter: int = 150,
    max_iterations: int = 4,
    rmse_forces: float = 0.06,
):
    """Step 1-2: start from a few labelled Al-Cu structures and let the loop pick what to label from a pool."""
    training_set = TrainingSetData.from_ase(emt_dataset(initial, seed=1, rattle=0.03))
    test_set = TrainingSetData.from_ase(emt_dataset(10, seed=2, rattle=0.08))
    candidates = TrainingSetData.from_ase(emt_dataset(pool, seed=3, rattle=0.08, labelled=False), labelled=False)
    return run_get_node(
        ActiveLearningWorkChain,
        training_set=training_set,
        test_set=test_set,
        candidates=candidates,
        parameters=orm.Dict({"cutoff": 4.5, "maxiter": maxiter, "number_of_functions_per_element": 10}),
        convergence=orm.Dict({"rmse_forces": rmse_forces, "max_iterations": max_iterations, "max_new_structures": 8}),
        pacemaker={"code": pacemaker_code},
        selection={"code": python_code},
        labeling={"code": python_code, "calculator": orm.Dict(LABELLER)},
    )


def run_md(potential, steps: int = 200, temperature: float = 600.0, seed: int = 0) -> dict:
    """Step 4: NVE molecular dynamics of a random fcc Al-Cu alloy cell (32 atoms) with the potential as ASE calculator.

    Returns the total energy per atom along the run (eV/atom): with conservative forces it barely drifts.
    """
    atoms = emt_dataset(3, seed=4, rattle=0.0, labelled=False)[2].repeat((2, 2, 1))  # a random alloy
    atoms.calc = potential.get_calculator()
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    total = []
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.attach(lambda: total.append(atoms.get_total_energy() / len(atoms)), interval=10)
    dynamics.run(steps)
    return {
        "atoms": len(atoms),
        "total_energy_per_atom": total,
        "drift_per_atom": float(abs(total[-1] - total[0])),
        "final_temperature": float(atoms.get_temperature()),
    }


def main(workdir: Path = Path("tutorial_export"), **budget) -> dict:
    computer = get_or_create_localhost()
    results, node = learn(
        pacemaker_code=get_or_create_local_code(computer=computer), python_code=get_python_code(computer), **budget
    )
    print(f"ActiveLearningWorkChain<{node.pk}> exit status {node.exit_status}; per iteration:")
    for row in results["history"].get_list():
        print(f"  {row['num_structures']} structures  test F-RMSE {row['test']['rmse_forces']:.4f} eV/Å")
    # Step 3: export the potential for LAMMPS (pair_style pace) or any pyace user.
    written = results["potential"].write_files(workdir)
    print("exported:", ", ".join(str(path) for path in written.values()))
    md = run_md(results["potential"])
    print(f"NVE MD, {md['atoms']} atoms: total energy drift {md['drift_per_atom']:.2e} eV/atom")
    return {"node": node, "results": results, "written": written, "md": md}


if __name__ == "__main__":
    from aiida import load_profile

    load_profile()
    main()
