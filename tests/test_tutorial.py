"""The tutorial script runs as documented: active learning -> export -> MD in ASE with the learned potential."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pacemaker

TUTORIAL = Path(__file__).parent.parent / "examples" / "tutorial.py"


@pytest.fixture(scope="module")
def tutorial():
    spec = importlib.util.spec_from_file_location("autopipec_tutorial", TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tutorial_learns_exports_and_runs_md(tutorial, aiida_profile, tmp_path, capsys):
    # A tiny budget: the point is that every step of the tutorial works, not the accuracy reached.
    outcome = tutorial.main(tmp_path / "export", initial=4, pool=20, maxiter=40, max_iterations=2, rmse_forces=1e-4)
    node = outcome["node"]
    assert node.is_finished
    assert node.exit_status in (0, node.process_class.exit_codes.ERROR_NOT_CONVERGED.status)
    history = outcome["results"]["history"].get_list()
    assert len(history) == 2
    assert history[1]["num_structures"] > history[0]["num_structures"]  # the loop added labelled structures

    written = outcome["written"]
    assert all(path.is_file() and path.stat().st_size > 0 for path in written.values())
    assert "pair_style" in written["lammps"].read_text()

    md = outcome["md"]
    energies = md["total_energy_per_atom"]
    assert len(energies) == 21 and all(map(lambda e: e == e, energies))  # 200 steps sampled every 10, no NaN
    # Forces are the gradient of the energy: NVE conserves the total energy (an inconsistent model drifts).
    assert md["drift_per_atom"] < 5e-3
    assert md["final_temperature"] > 0
    assert "NVE MD, 32 atoms" in capsys.readouterr().out
