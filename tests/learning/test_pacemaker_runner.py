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
    # Pacemaker's own predictions (pickles, plots) are skipped unless asked for.
    assert not (tmp_path / files.TRAIN_PREDICTIONS).exists() and not (tmp_path / files.TEST_PREDICTIONS).exists()


def test_predictions_on_request(tmp_path, emt_structures, emt_test_structures):
    runner = PacemakerRunner(PacemakerConfigGenerator(CONFIG), tmp_path, predictions=True)
    runner.train(emt_structures, test_dataset=emt_test_structures)
    assert (tmp_path / files.TRAIN_PREDICTIONS).is_file() and (tmp_path / files.TEST_PREDICTIONS).is_file()


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


def test_warm_start_lowers_the_repulsive_core_where_new_data_come_closer(tmp_path):
    """Active learning adds structures with shorter distances than the first fit saw. Keeping the first fit's core
    would put those distances inside it, where the delivered model is repulsive ZBL, not the fitted data (Pacemaker,
    reporting errors without the core, would not show it). The warm start moves the core below the new data."""
    from aiida_autopipec.learning.baseline import shortest_pair_distances
    from aiida_autopipec.learning.reference_data import emt_dataset

    config = SystemConfig(
        elements=["Al", "Cu"],
        training={"cutoff": 4.5, "maxiter": 40, "number_of_functions_per_element": 8, "device": "cpu"},
    )
    mild = emt_dataset(12, seed=3, rattle=0.02)
    strong = emt_dataset(8, seed=4, rattle=0.25)  # pairs come much closer
    first = PacemakerRunner(PacemakerConfigGenerator(config), tmp_path / "first")
    first.train(mild)
    kept = first.evaluation_settings["pair_cutoffs"]
    second = PacemakerRunner(PacemakerConfigGenerator(config), tmp_path / "second")
    second.train(
        mild + strong,
        initial_potential=first.work_dir / files.OUTPUT_POTENTIAL_YAML,
        initial_reference_energies=first.reference_energies,
        initial_zbl_params=kept,
    )
    shortest = shortest_pair_distances(mild + strong, config.elements)
    now = second.evaluation_settings["pair_cutoffs"]
    for pair, (inner, outer) in now.items():
        assert outer < shortest[pair] and inner <= outer  # no training distance inside the core
    lowered = [pair for pair in now if now[pair][1] < kept[pair][1]]
    assert lowered, (kept, now)
    basis = yaml.safe_load((second.work_dir / files.INITIAL_POTENTIAL).read_text())
    for block in basis["species"]:
        species = block["speciesblock"].split()
        pair = "-".join(sorted([species[0], species[-1]]))
        assert block["r_in"] == pytest.approx(now[pair][1])
    # The delivered model (core included) fits the training data as well as Pacemaker says.
    metrics = second.metrics()
    assert metrics.train.rmse_forces <= 1.2 * metrics.pacemaker_reported["train"]["rmse_forces"]
