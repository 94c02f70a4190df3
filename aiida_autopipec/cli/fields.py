"""``autopipec fields``: the settings ``-p`` (TrainingConfig) and ``-c`` (ConvergenceConfig) accept, with units."""

from __future__ import annotations

import click

from aiida_autopipec.cli.main import autopipec

MODELS = ("training", "convergence")


def field_rows(model) -> list[tuple[str, str, str]]:
    """(name, default, description with units) of every field of a pydantic model."""
    rows = []
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else "none" if field.default is None else repr(field.default)
        rows.append((name, default, " ".join((field.description or "").split())))
    return rows


def format_fields(title: str, model, extra: tuple[tuple[str, str, str], ...] = ()) -> str:
    rows = field_rows(model) + list(extra)
    width = max(len(name) for name, _, _ in rows)
    lines = [title]
    lines += [f"  {name:<{width}}  {description} [default: {default}]" for name, default, description in rows]
    return "\n".join(lines)


@autopipec.command()
@click.argument("which", type=click.Choice(MODELS), required=False)
def fields(which: str | None) -> None:
    """The fields of `-p KEY=VALUE` (training) and `-c KEY=VALUE` (convergence), with units and defaults."""
    from aiida_autopipec.config import TrainingConfig

    if which in (None, "training"):
        elements = ("elements", "those of the training set", "Chemical symbols the potential covers, e.g. [Al, Cu].")
        click.echo(format_fields("-p, TrainingConfig (train and learn):", TrainingConfig, (elements,)))
    if which in (None, "convergence"):
        from aiida_autopipec.workflows.active_learning import ConvergenceConfig

        click.echo(format_fields("-c, ConvergenceConfig (learn):", ConvergenceConfig))
