"""PacemakerRunner runs the real pacemaker without AiiDA; failures carry Pacemaker's own error text."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.dataset import DatasetError
from aiida_autopipec.learning.pacemaker import PacemakerError, PacemakerRunner
from aiida_autopipec.learning.potential import yace_elements

pytestmark = pytest.mark.pacemaker

CONFIG = SystemConfig(
    elements=["Al", "Cu"],
    training={"cutoff": 4.5, "maxiter": 10, "number_of_functions_per_element": 6, "device": "cpu"},
)


def test_train_returns_yace_with_reference_energies(tmp_path, emt_structures, emt_test_structures):
    runner = PacemakerRunner(PacemakerConfigGenerator(CONFIG), tmp_path)
    yace = runner.train(emt_structures, test_dataset=emt_test_structures)
    assert yace == tmp_path / files.OUTPUT_POTENTIAL_YACE
    e0_line = next(line for line in yace.read_text().splitlines() if line.startswith("E0:"))
    expected = [runner.reference_energies[element] for element in yace_elements(yace.read_text())]
    assert np.allclose(yaml.safe_load(e0_line)["E0"], expected)
    metrics = runner.metrics()
    assert metrics.iterations == 10
    assert metrics.test is not None and np.isfinite(metrics.test.rmse_forces)


def test_failed_run_raises_with_stderr_tail(tmp_path, emt_structures):
    # A basis Pacemaker cannot build: it exits 1 with a traceback on stderr only.
    generator = PacemakerConfigGenerator(CONFIG, {"potential": {"embeddings": {"ALL": {"npot": "NoSuchEmbedding"}}}})
    with pytest.raises(PacemakerError, match="exited with status 1") as error:
        PacemakerRunner(generator, tmp_path).train(emt_structures[:10])
    # The exception Pacemaker raised (after its traceback, TensorFlow keeps printing) is quoted first.
    assert re.search(r"^\w*Error: ", str(error.value).split("--- pacemaker.err ---\n")[1], re.MULTILINE)
    assert not (tmp_path / files.OUTPUT_POTENTIAL_YACE).exists()


def test_bad_data_rejected_before_pacemaker_runs(tmp_path, emt_structures):
    from ase.build import bulk

    foreign = bulk("Ni", "fcc", a=3.5, cubic=True)
    foreign.info["energy"], foreign.arrays["forces"] = -10.0, np.zeros((4, 3))
    with pytest.raises(DatasetError, match=r"\['Ni'\]"):
        PacemakerRunner(PacemakerConfigGenerator(CONFIG), tmp_path).train([*emt_structures[:3], foreign])
    assert not (tmp_path / files.INPUT_YAML).exists()
