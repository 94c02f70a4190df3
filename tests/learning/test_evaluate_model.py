"""The compute-side evaluation script makes the .yace itself (one interpreter fewer than pace_yaml2yace)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aiida_autopipec.learning import evaluate_model, files

pytestmark = pytest.mark.pacemaker

RECORDED = Path(__file__).parents[1] / "parsers" / "recorded" / "success"


@pytest.fixture
def job_folder(tmp_path):
    """Pacemaker's B-basis from a recorded real fit, and an evaluation input asking for the conversion."""
    shutil.copy(RECORDED / files.OUTPUT_POTENTIAL_YAML, tmp_path)
    settings = {
        "potential": files.OUTPUT_POTENTIAL_YACE,
        "convert": {"yaml": files.OUTPUT_POTENTIAL_YAML, "log": "c.log"},
    }
    return tmp_path, settings


def test_conversion_equals_pace_yaml2yace(job_folder, tmp_path_factory):
    folder, settings = job_folder
    assert evaluate_model.convert(folder, settings)
    reference = tmp_path_factory.mktemp("reference")
    shutil.copy(RECORDED / files.OUTPUT_POTENTIAL_YAML, reference)
    pace_yaml2yace = Path(sys.executable).parent / "pace_yaml2yace"
    subprocess.run(
        [str(pace_yaml2yace), "-o", files.OUTPUT_POTENTIAL_YACE, files.OUTPUT_POTENTIAL_YAML],
        cwd=reference,
        check=True,
        capture_output=True,
    )
    converted = (folder / files.OUTPUT_POTENTIAL_YACE).read_text()
    assert converted == (reference / files.OUTPUT_POTENTIAL_YACE).read_text()
    assert "converted output_potential.yaml" in (folder / "c.log").read_text()


def test_broken_basis_leaves_no_yace_and_says_why(job_folder):
    folder, settings = job_folder
    (folder / files.OUTPUT_POTENTIAL_YAML).write_text("elements: [Al]\nembeddings: {\n")
    (folder / "evaluation_input.json").write_text(json.dumps({**settings, "output": "evaluation.json"}))
    assert evaluate_model.main([str(folder / "evaluation_input.json")]) == 1
    assert not (folder / files.OUTPUT_POTENTIAL_YACE).exists() and not (folder / "evaluation.json").exists()
    log = (folder / "c.log").read_text()
    assert "converting output_potential.yaml to output_potential.yace failed" in log and "Traceback" in log


def test_dimer_curves_in_one_call_equal_one_dimer_at_a_time():
    """The batched scan gives what an isolated dimer gives (energy relative to separated atoms, force on atom 2)."""
    import numpy as np
    from ase import Atoms
    from pyace import PyACECalculator

    calculator = PyACECalculator(str(RECORDED / files.OUTPUT_POTENTIAL_YACE))
    curves = evaluate_model.dimer_curves(calculator, ["Al", "Cu"], 4.5, None)
    assert set(curves) == {"Al-Al", "Al-Cu", "Cu-Cu"}
    for pair, curve in curves.items():
        first, second = pair.split("-")
        separated = Atoms([first, second], positions=[[0, 0, 0], [9.5, 0, 0]], pbc=False)
        separated.calc = calculator
        for index in (0, 70, 200, len(curve["r"]) - 1):
            r = curve["r"][index]
            dimer = Atoms([first, second], positions=[[0, 0, 0], [r, 0, 0]], pbc=False)
            dimer.calc = calculator
            expected = dimer.get_potential_energy() - separated.get_potential_energy()
            assert curve["energy"][index] == pytest.approx(expected, rel=1e-8, abs=1e-9)
            assert curve["force"][index] == pytest.approx(dimer.get_forces()[1, 0], rel=1e-8, abs=1e-8)
        assert np.all(np.diff(curve["r"]) > 0)
