"""``autopipec show`` (metrics, learning curve, active-learning history) and ``autopipec export`` (files + README)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from aiida_autopipec.cli.main import autopipec, format_metrics, load_or_create_profile
from aiida_autopipec.cli.utils import load_node_of_type

SPARK = "▁▂▃▄▅▆▇█"
#: Rows of the learning-curve table at most (evenly spaced, the last one always shown).
CURVE_ROWS = 12


def resolve_result(identifier: str):
    """(process node or None, PotentialData or None, the PacemakerCalculation that made the potential or None)."""
    from aiida import orm

    from aiida_autopipec.data import PotentialData

    node = load_node_of_type(identifier, (orm.ProcessNode, PotentialData), "process or PotentialData")
    process = node if isinstance(node, orm.ProcessNode) else None
    if isinstance(node, PotentialData):
        potential = node
    else:
        potential = node.outputs.potential if "potential" in node.outputs else None
    fit = potential.creator if potential is not None else None
    if fit is None and isinstance(node, orm.CalcJobNode):
        fit = node
    return process, potential, fit


def sparkline(values) -> str:
    """The values (log scale) as a line of block characters."""
    values = np.log10(np.clip(np.asarray(values, dtype=float), 1e-12, None))
    span = values.max() - values.min()
    levels = np.zeros(len(values), dtype=int) if span == 0 else np.round((values - values.min()) / span * 7).astype(int)
    return "".join(SPARK[level] for level in levels)


def format_learning_curve(curve) -> str:
    """Train/test loss and RMSEs at up to CURVE_ROWS displayed iterations, and a sparkline of the force RMSE."""
    arrays = {name: curve.get_array(name) for name in curve.get_arraynames()}
    iterations = arrays["iteration"]
    test = {int(i): k for k, i in enumerate(arrays.get("test_iteration", []))}
    rows = sorted(set(np.linspace(0, len(iterations) - 1, min(CURVE_ROWS, len(iterations))).astype(int)))
    lines = [
        f"Learning curve (force RMSE, log scale): {sparkline(arrays['rmse_forces'])}",
        f"{'iter':>6} {'loss':>11} {'RMSE E (eV/atom)':>17} {'RMSE F (eV/Å)':>14} {'test RMSE F':>12}",
    ]
    for row in rows:
        iteration = int(iterations[row])
        test_forces = f"{arrays['test_rmse_forces'][test[iteration]]:.4f}" if iteration in test else "-"
        lines.append(
            f"{iteration:>6} {arrays['loss'][row]:>11.4e} {arrays['rmse_energy'][row]:>17.4f} "
            f"{arrays['rmse_forces'][row]:>14.4f} {test_forces:>12}"
        )
    return "\n".join(lines)


def format_history(history: list[dict]) -> str:
    """One line per active-learning iteration."""
    lines = [f"{'iter':>4} {'structures':>10} {'train F':>9} {'test F':>9} {'added':>6} {'γ max':>7}  converged"]
    for entry in history:
        train = (entry.get("train") or {}).get("rmse_forces")
        test = (entry.get("test") or {}).get("rmse_forces")
        gamma = (entry.get("selection") or {}).get("max_gamma")
        lines.append(
            f"{entry['iteration']:>4} {entry['num_structures']:>10} "
            f"{'-' if train is None else f'{train:.4f}':>9} {'-' if test is None else f'{test:.4f}':>9} "
            f"{entry.get('added', '-'):>6} {'-' if gamma is None else f'{gamma:.1f}':>7}  "
            f"{'yes' if entry.get('is_converged') else 'no'}"
        )
    return "(force RMSE in eV/Å)\n" + "\n".join(lines)


@autopipec.command()
@click.argument("identifier")
def show(identifier: str) -> None:
    """Metrics, learning curve and (active learning) per-iteration history of a run or potential (PK/UUID)."""
    load_or_create_profile()
    process, potential, fit = resolve_result(identifier)
    if process is not None:
        state = process.process_state.value if process.process_state else "unknown"
        status = f" [{process.exit_status}] {process.exit_message or ''}" if process.is_terminated else ""
        click.echo(f"{process.process_label}<{process.pk}>: {state}{status}".rstrip())
    metrics = process.outputs.metrics if process is not None and "metrics" in process.outputs else None
    if metrics is None and fit is not None and "metrics" in fit.outputs:
        metrics = fit.outputs.metrics
    if metrics is not None:
        click.echo("\n" + format_metrics(metrics.get_dict()))
    if potential is not None:
        click.echo(
            f"\nPotentialData<{potential.pk}>: elements {', '.join(potential.elements)}, "
            f"{potential.num_functions} functions, cutoff {potential.cutoff} Å"
        )
    if fit is not None and "learning_curve" in fit.outputs:
        click.echo(f"\n{format_learning_curve(fit.outputs.learning_curve)}")
    if process is not None and "history" in process.outputs:
        click.echo(f"\nActive-learning history:\n{format_history(process.outputs.history.get_list())}")
    if metrics is None and potential is None:
        click.echo("No results yet (no metrics or potential among the outputs).")


def readme_text(process, potential, fit, written: dict[str, Path]) -> str:
    """The README of an export: what the files are, how to use them, and where they came from (UUIDs)."""
    lines = [
        f"# ACE potential for {', '.join(potential.elements)} (aiida-autopipec)",
        "",
        f"Cutoff {potential.cutoff} Å, {potential.num_functions} basis functions. Energies in eV, forces in eV/Å.",
        "",
        "## Files",
    ]
    lines += [f"- `{path.name}`" for path in written.values()]
    lines += [
        "",
        "## Use",
        "- ASE: `from pyace import PyACECalculator; atoms.calc = PyACECalculator('potential.yace')`"
        + (" (plus the ZBL baseline, see lammps.in)" if potential.baseline else ""),
        "- LAMMPS (built with ML-PACE): `include lammps.in`",
    ]
    if "asi" in written:
        lines += [
            "- Extrapolation grade γ in LAMMPS: `include lammps_extrapolation.in` (`pair_style pace/extrapolation` "
            "with the B-basis `potential.yaml` and its active set `potential.asi`, made with `pace_activeset` on "
            "the training set of the fit); in ASE: `PyACECalculator('potential.yaml')` then "
            "`calc.set_active_set('potential.asi')`, γ per atom in `calc.results['gamma']`",
        ]
    lines += [
        "",
        "## Provenance (AiiDA UUIDs)",
        f"- potential: PotentialData {potential.uuid}",
    ]
    if process is not None and process.pk != potential.pk:
        lines.append(f"- run: {process.process_label} {process.uuid}")
    if fit is not None:
        lines.append(f"- fit: {fit.process_label} {fit.uuid}")
        for port in ("training_set", "test_set", "code"):
            if port in fit.inputs:
                lines.append(f"- {port}: {type(fit.inputs[port]).__name__} {fit.inputs[port].uuid}")
        if "metrics" in fit.outputs:
            lines += ["", "## Metrics", "```", format_metrics(fit.outputs.metrics.get_dict()), "```"]
    return "\n".join(lines) + "\n"


def stored_active_set(process):
    """An ``.asi`` the run stored among its outputs (SinglefileData), or None."""
    if process is None:
        return None
    from aiida import orm

    outputs = process.base.links.get_outgoing(node_class=orm.SinglefileData).all_nodes()
    return next((node for node in outputs if node.filename.endswith(".asi")), None)


def compute_active_set(potential, training_set, target: Path) -> str | None:
    """Write the active set of ``potential`` on ``training_set`` to ``target`` with ``pace_activeset`` (all atoms);
    None on success, else why it could not be made."""
    import tempfile

    from aiida_autopipec.learning.potential import potential_info
    from aiida_autopipec.learning.select_structures import active_set_shortfall, build_active_set

    arrays = training_set.get_arrays()
    functions = potential_info(potential.get_yaml())["functions_per_element"]
    shortfall = active_set_shortfall(arrays.atoms_per_element(), functions)
    if shortfall:
        return shortfall
    structures = arrays.to_atoms(with_labels=False)
    forces = [arrays.forces[start:end] for start, end in zip(arrays.offsets[:-1], arrays.offsets[1:], strict=True)]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "potential.yaml").write_text(potential.get_yaml())
        try:
            asi = build_active_set(Path(folder), "potential.yaml", structures, arrays.energies, forces)
        except (RuntimeError, OSError) as exc:
            return str(exc).splitlines()[0]
        target.write_bytes(asi.read_bytes())
    return None


def export_training_set(training_set, directory: Path) -> None:
    """Write a TrainingSetData as extxyz (energies eV, forces eV/Å; structures only when unlabelled)."""
    from aiida_autopipec.learning.dataset import write_extxyz

    directory.mkdir(parents=True, exist_ok=True)
    path = write_extxyz(directory / "training_set.extxyz", training_set.to_ase())
    click.echo(f"wrote {path} ({training_set.num_structures} structures)")


@autopipec.command()
@click.argument("identifier")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-active-set", is_flag=True, help="Do not compute the active set (.asi) of the potential.")
def export(identifier: str, directory: Path, no_active_set: bool) -> None:
    """Write IDENTIFIER into DIRECTORY: a run or PotentialData as .yace, .yaml, active set .asi, LAMMPS inputs and a
    README; a TrainingSetData as extxyz."""
    load_or_create_profile()
    from aiida import orm

    from aiida_autopipec.data import PotentialData, TrainingSetData
    from aiida_autopipec.data.potential import ASI_FILENAME, LAMMPS_EXTRAPOLATION_FILENAME

    node = load_node_of_type(
        identifier, (orm.ProcessNode, PotentialData, TrainingSetData), "process, PotentialData or TrainingSetData"
    )
    if isinstance(node, TrainingSetData):
        export_training_set(node, directory)
        return
    process, potential, fit = resolve_result(identifier)
    if potential is None:
        raise click.ClickException(f"node {identifier} has no potential output (yet)")
    written = potential.write_files(directory)
    asi_path, stored = directory / ASI_FILENAME, stored_active_set(process)
    if stored is not None:
        asi_path.write_bytes(stored.get_content(mode="rb"))
        problem = None
    elif no_active_set:
        problem = "not asked for (--no-active-set)"
    elif fit is None or "training_set" not in fit.inputs:
        problem = "the fit that made the potential is not known"
    else:
        problem = compute_active_set(potential, fit.inputs.training_set, asi_path)
    if problem is None:
        written["asi"] = asi_path
        written["lammps_extrapolation"] = directory / LAMMPS_EXTRAPOLATION_FILENAME
        written["lammps_extrapolation"].write_text(potential.lammps_extrapolation_input())
    written["readme"] = directory / "README.md"
    written["readme"].write_text(readme_text(process, potential, fit, written))
    for path in written.values():
        click.echo(f"wrote {path}")
    if problem is not None:
        click.echo(f"no active set (.asi): {problem}")
