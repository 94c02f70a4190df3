"""Fit Al-Cu ACE potentials on EMT data in each short-range mode and plot their dimer curves.

Writes docs/images/dimer_curves.png (used by docs/zbl.md). Run from the repository root:

    python examples/dimer_curves.py [output.png]

Needs the `pacemaker` extra (python-ace, tensorpotential) and matplotlib; takes about two minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.pacemaker import PacemakerRunner
from aiida_autopipec.learning.reference_data import emt_dataset

MODES = ("none", "core_repulsion", "zbl_delta")


def fit_and_evaluate(mode: str, structures, folder: Path) -> dict:
    config = SystemConfig(
        elements=["Al", "Cu"],
        training={"cutoff": 4.5, "maxiter": 60, "number_of_functions_per_element": 12, "baseline": mode, "seed": 1},
    )
    runner = PacemakerRunner(PacemakerConfigGenerator(config), folder)
    runner.train(structures)
    evaluation = json.loads((folder / files.EVALUATION_OUTPUT).read_text())
    return {
        "dimers": evaluation["dimers"],
        "pair_cutoffs": runner.evaluation_settings["pair_cutoffs"],
        "violations": runner.dimer_check(),
        "test_rmse_forces": runner.metrics().rmse_forces,
    }


def main(output: Path) -> None:
    structures = emt_dataset(40, seed=0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            results[mode] = fit_and_evaluate(mode, structures, Path(tmp) / mode)
    pairs = sorted(results[MODES[0]]["dimers"])
    figure, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.6), sharey=True)
    for axis, pair in zip(axes, pairs, strict=True):
        for mode in MODES:
            curve = results[mode]["dimers"][pair]
            verdict = "FLAGGED" if pair in results[mode]["violations"] else "passes"
            axis.plot(curve["r"], curve["energy"], label=f"{mode} ({verdict})")
        inner, outer = results["core_repulsion"]["pair_cutoffs"][pair]
        axis.axvspan(inner, outer, color="0.9", label="switching region")
        axis.axhline(0.0, color="0.5", lw=0.5)
        axis.set_ylim(-3, 30)
        axis.set_title(pair)
        axis.set_xlabel("r (Å)")
        axis.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("dimer energy (eV, 0 = separated atoms)")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    for mode in MODES:
        print(
            f"{mode:15s} test F-RMSE {results[mode]['test_rmse_forces']:.4f} eV/Å; "
            f"violations: {results[mode]['violations'] or 'none'}"
        )
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images/dimer_curves.png"))
