"""``autopipec plot``: PNGs of a run (learning curve, parity, dimer curves, active-learning convergence)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from aiida_autopipec.cli.main import autopipec, load_or_create_profile
from aiida_autopipec.cli.results import resolve_result


def _subsample(structures: list, maximum: int, seed: int = 0) -> list:
    if len(structures) <= maximum:
        return structures
    indices = np.sort(np.random.default_rng(seed).choice(len(structures), maximum, replace=False))
    return [structures[i] for i in indices]


@autopipec.command()
@click.argument("identifier")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@click.option("--max-structures", default=500, show_default=True, help="Structures per split in the parity plot.")
def plot(identifier: str, output: Path, max_structures: int) -> None:
    """PNGs of IDENTIFIER (run or potential): learning curve, energy/force parity, dimer curves, AL convergence."""
    load_or_create_profile()
    from aiida_autopipec.learning import plots

    process, potential, fit = resolve_result(identifier)
    if fit is None:
        raise click.ClickException(
            f"node {identifier} has no finished fit to plot (yet): no potential among its outputs"
        )
    written = []
    if "learning_curve" in fit.outputs:
        curve = fit.outputs.learning_curve
        arrays = {name: curve.get_array(name) for name in curve.get_arraynames()}
        written.append(plots.learning_curve_figure(arrays, output / "learning_curve.png"))
    if potential is not None:
        calculator = potential.get_calculator()
        splits = {}
        for split, port in (("train", "training_set"), ("test", "test_set")):
            if port in fit.inputs:
                structures = _subsample(fit.inputs[port].to_ase(), max_structures)
                splits[split] = (plots.reference_values(structures), plots.predict(structures, calculator))
        written.append(plots.parity_figure(splits, output / "parity.png"))
    if "dimer_curves" in fit.outputs:
        dimers = fit.outputs.dimer_curves
        pairs = dimers.base.attributes.get("pairs")
        curves = {
            pair: {q: dimers.get_array(f"{pair.replace('-', '_')}_{q}") for q in ("r", "energy")} for pair in pairs
        }
        pair_cutoffs = dimers.base.attributes.get("pair_cutoffs", None)
        written.append(plots.dimer_figure(curves, output / "dimer_curves.png", pair_cutoffs))
    if process is not None and "history" in process.outputs:
        from aiida_autopipec.workflows.active_learning import ConvergenceConfig

        target = ConvergenceConfig(**process.inputs.convergence.get_dict()).rmse_forces
        history = process.outputs.history.get_list()
        written.append(plots.convergence_figure(history, output / "convergence.png", target))
    for path in written:
        click.echo(f"wrote {path}")
