"""Helpers shared by the ``autopipec`` commands: loading nodes by PK/UUID, ``KEY=VALUE`` options, summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
import numpy as np
import yaml


def load_node_of_type(identifier: str, types: tuple[type, ...], what: str):
    """The node with PK or UUID ``identifier``, which must be one of ``types``; a clear error otherwise."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError, ValueError) as exc:
        raise click.BadParameter(f"no {what} with PK or UUID '{identifier}': {exc}") from exc
    if not isinstance(node, types):
        raise click.BadParameter(f"node {identifier} is a {type(node).__name__}, not a {what}")
    return node


def protocol_help(name: str) -> str:
    """What each preset of ``protocols/<name>.yaml`` means, for ``--protocol --help`` (read without importing AiiDA)."""
    from importlib import resources

    text = resources.files("aiida_autopipec").joinpath("protocols", f"{name}.yaml").read_text(encoding="utf-8")
    presets = yaml.safe_load(text)["protocols"]
    return " ".join(f"{key}: {preset['description']}" for key, preset in presets.items())


def add_to_group(label: str | None, *nodes) -> None:
    """Put ``nodes`` into the group ``label`` (created if needed), so results can be found by group."""
    if label is None:
        return
    from aiida import orm

    group, _ = orm.Group.collection.get_or_create(label)
    group.add_nodes(list(nodes))
    click.echo(f"added {', '.join(f'{type(n).__name__}<{n.pk}>' for n in nodes)} to group '{group.label}'")


def parse_assignments(assignments: Sequence[str], option: str) -> dict[str, Any]:
    """``["maxiter=50", "cutoff=5.5"]`` -> ``{"maxiter": 50, "cutoff": 5.5}`` (values parsed as YAML)."""
    result = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator or not key.strip():
            raise click.BadParameter(f"'{assignment}' is not KEY=VALUE", param_hint=option)
        try:
            result[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"'{assignment}': the value is not valid YAML: {exc}", param_hint=option) from exc
    return result


def read_overrides(path: str | None) -> dict[str, Any]:
    """Overrides from a YAML file (a mapping of process inputs), or nothing."""
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise click.BadParameter(f"{path}: must contain a mapping of inputs", param_hint="--overrides")
    return content


def training_set_summary(training_set) -> str:
    """Structures, atoms, elements, energy range (eV/atom) and largest force norm (eV/Å) of a TrainingSetData."""
    arrays = training_set.get_arrays()
    lines = [
        f"TrainingSetData<{training_set.pk}>: {arrays.num_structures} structures, {arrays.num_atoms} atoms, "
        f"elements {', '.join(arrays.elements)}",
    ]
    if arrays.labelled:
        per_atom = arrays.energies / arrays.natoms
        force_norms = np.linalg.norm(arrays.forces, axis=1)
        lines.append(f"  energy per atom: {per_atom.min():.4f} to {per_atom.max():.4f} eV/atom")
        lines.append(f"  largest |force|: {force_norms.max():.4f} eV/Å")
    else:
        lines.append("  unlabelled (no energies or forces): usable as active-learning candidates")
    return "\n".join(lines)
