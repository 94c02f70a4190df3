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
