"""learning/plots.py without AiiDA: figures from a recorded real Pacemaker run and from EMT evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase.calculators.emt import EMT
from PIL import Image

from aiida_autopipec.learning import plots
from aiida_autopipec.learning.metrics import LogParser

RECORDED = Path(__file__).parent.parent / "parsers" / "recorded" / "success"


def assert_real_image(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 250
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.std() > 10.0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) >= 20


def test_predict_with_the_reference_calculator_is_exact(emt_structures):
    """Evaluating the EMT-labelled structures with EMT itself reproduces the stored labels."""
    reference = plots.reference_values(emt_structures)
    predicted = plots.predict(emt_structures, EMT())
    assert predicted[0].shape == (len(emt_structures),)
    assert predicted[1].shape == (3 * sum(len(atoms) for atoms in emt_structures),)
    assert np.allclose(predicted[0], reference[0]) and np.allclose(predicted[1], reference[1])
    assert emt_structures[0].calc is not None and not isinstance(emt_structures[0].calc, EMT)  # inputs untouched


def test_figures_from_a_recorded_run(tmp_path, emt_structures, emt_test_structures):
    curve = LogParser().parse(RECORDED).learning_curve.model_dump()
    assert_real_image(plots.learning_curve_figure(curve, tmp_path / "curve.png"))

    settings = json.loads((RECORDED / "evaluation_input.json").read_text())
    dimers = json.loads((RECORDED / "evaluation.json").read_text())["dimers"]
    assert_real_image(plots.dimer_figure(dimers, tmp_path / "dimers.png", settings["pair_cutoffs"]))

    # Parity of a model off by 0.01 eV/atom in energy and 5 % in forces.
    splits = {}
    for name, structures in (("train", emt_structures), ("test", emt_test_structures)):
        energy, forces = plots.reference_values(structures)
        splits[name] = ((energy, forces), (energy + 0.01, forces * 1.05))
    assert_real_image(plots.parity_figure(splits, tmp_path / "parity.png"))


def test_convergence_figure(tmp_path):
    history = [
        {"iteration": 1, "num_structures": 8, "train": {"rmse_forces": 0.08}, "test": {"rmse_forces": 0.12}},
        {"iteration": 2, "num_structures": 16, "train": {"rmse_forces": 0.05}, "test": {"rmse_forces": 0.07}},
        {"iteration": 3, "num_structures": 24, "train": {"rmse_forces": 0.03}, "test": {"rmse_forces": 0.04}},
    ]
    assert_real_image(plots.convergence_figure(history, tmp_path / "convergence.png", target=0.05))
