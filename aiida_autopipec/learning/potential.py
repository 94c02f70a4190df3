"""Read and adjust Pacemaker's potential files (B-basis ``.yaml`` and Ctilde ``.yace``) without pyace."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from aiida_autopipec.learning.baseline import pair_key

__all__ = ["PotentialFileError", "potential_info", "set_reference_energies", "set_repulsion_cutoffs", "yace_elements"]

_YACE_E0 = re.compile(r"^E0: \[[^\]\n]*\]$", re.MULTILINE)
_YACE_ELEMENTS = re.compile(r"^elements: \[([^\]\n]*)\]$", re.MULTILINE)


class PotentialFileError(ValueError):
    """A file is not a Pacemaker potential of the expected kind."""


def potential_info(bbasis_yaml: str) -> dict[str, Any]:
    """Elements, cutoff (Å, largest ``rcutij``) and number of basis functions (in all, and per central element) of
    a B-basis ``.yaml``."""
    try:
        content = yaml.safe_load(bbasis_yaml)
    except yaml.YAMLError as exc:
        raise PotentialFileError(f"not valid YAML: {exc}") from exc
    blocks = content.get("species") if isinstance(content, dict) else None
    if not isinstance(blocks, list) or not blocks:
        raise PotentialFileError("not a B-basis potential: no 'species' blocks")
    elements: list[str] = []
    cutoffs: list[float] = []
    per_element: dict[str, int] = {}
    for block in blocks:
        species = str(block.get("speciesblock", "")).split()
        if len(species) == 1:
            elements.append(species[0])
        if "rcutij" in block:
            cutoffs.append(float(block["rcutij"]))
        if species:  # functions of a block belong to its central (first) element
            per_element[species[0]] = per_element.get(species[0], 0) + len(block.get("nbody", []))
    if not elements or not cutoffs:
        raise PotentialFileError("not a B-basis potential: no element blocks or no cutoff")
    return {
        "elements": elements,
        "cutoff": max(cutoffs),
        "num_functions": sum(per_element.values()),
        "functions_per_element": per_element,
    }


def yace_elements(yace: str) -> list[str]:
    match = _YACE_ELEMENTS.search(yace)
    if match is None:
        raise PotentialFileError("not a .yace potential: no 'elements: [...]' line")
    return [element.strip() for element in match.group(1).split(",")]


def set_reference_energies(yace: str, reference_energies: Mapping[str, float]) -> str:
    """Write per-element reference energies (eV/atom) into the ``E0`` line of a ``.yace``.

    Pacemaker fits ``energy - Σ references`` and leaves ``E0 = 0``; with the references written back, every
    evaluator of the ``.yace`` (pyace, LAMMPS ``pair_style pace``) returns energies on the user's scale.
    """
    elements = yace_elements(yace)
    missing = [element for element in elements if element not in reference_energies]
    if missing:
        raise PotentialFileError(f"no reference energy for element(s) {missing}")
    if _YACE_E0.search(yace) is None:
        raise PotentialFileError("not a .yace potential: no 'E0: [...]' line")
    values = ", ".join(repr(float(reference_energies[element])) for element in elements)
    return _YACE_E0.sub(f"E0: [{values}]", yace, count=1)


def set_repulsion_cutoffs(bbasis_yaml: str, pair_cutoffs: Mapping[str, tuple[float, float]]) -> str:
    """The B-basis with Pacemaker's ZBL core moved to ``pair_cutoffs`` (``'Al-Cu'``: ``(inner, outer)``, Å) for
    the pairs named; only blocks that have the core (``inner_cutoff_type: zbl``) change, coefficients stay."""
    content = yaml.safe_load(bbasis_yaml)
    if not isinstance(content, dict) or not isinstance(content.get("species"), list):
        raise PotentialFileError("not a B-basis potential: no 'species' blocks")
    for block in content["species"]:
        species = str(block.get("speciesblock", "")).split()
        key = pair_key(species[0], species[-1]) if species else ""
        if key in pair_cutoffs and block.get("inner_cutoff_type") == "zbl":
            inner, outer = (float(value) for value in pair_cutoffs[key])
            block["r_in"], block["delta_in"] = outer, round(outer - inner, 6)
    return yaml.safe_dump(content, sort_keys=False, default_flow_style=None, width=1_000_000)
