"""``PotentialData``: a fitted ACE potential, as the ``.yace`` (evaluation) and B-basis ``.yaml`` (γ, warm start)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiida import orm

from aiida_autopipec.learning.potential import potential_info, yace_elements

__all__ = ["PotentialData"]

YACE_FILENAME = "potential.yace"
YAML_FILENAME = "potential.yaml"
LAMMPS_FILENAME = "lammps.in"


def _text(source: str | os.PathLike | bytes) -> str:
    if isinstance(source, bytes):
        return source.decode()
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source):
        return Path(source).read_text()
    return source


class PotentialData(orm.Data):
    """An ACE potential fitted by Pacemaker.

    * ``potential.yace``: Ctilde basis with the per-element reference energies (eV/atom) in ``E0``, so it predicts
      absolute energies on the scale of the training data; used by pyace and LAMMPS ``pair_style pace``.
    * ``potential.yaml``: the B-basis, needed for the extrapolation grade γ and to continue a fit.

    Attributes: ``elements``, ``cutoff`` (Å), ``num_functions``, ``reference_energies`` (eV/atom).
    """

    def __init__(
        self,
        yace: str | os.PathLike | bytes | None = None,
        yaml: str | os.PathLike | bytes | None = None,
        reference_energies: Mapping[str, float] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if yace is None and yaml is None:
            return
        if yace is None or yaml is None:
            raise ValueError("PotentialData needs both the .yace and the B-basis .yaml")
        yace_text, yaml_text = _text(yace), _text(yaml)
        info = potential_info(yaml_text)
        if yace_elements(yace_text) != info["elements"]:
            raise ValueError(f".yace elements {yace_elements(yace_text)} differ from .yaml elements {info['elements']}")
        self.base.repository.put_object_from_bytes(yace_text.encode(), YACE_FILENAME)
        self.base.repository.put_object_from_bytes(yaml_text.encode(), YAML_FILENAME)
        attributes = self.base.attributes
        attributes.set("elements", info["elements"])
        attributes.set("cutoff", info["cutoff"])
        attributes.set("num_functions", info["num_functions"])
        attributes.set("reference_energies", dict(reference_energies or {}))

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get("elements")

    @property
    def cutoff(self) -> float:
        """Largest neighbour cutoff of the basis, Å."""
        return self.base.attributes.get("cutoff")

    @property
    def num_functions(self) -> int:
        return self.base.attributes.get("num_functions")

    @property
    def reference_energies(self) -> dict[str, float]:
        return self.base.attributes.get("reference_energies", {})

    def get_yace(self) -> str:
        return self.base.repository.get_object_content(YACE_FILENAME)

    def get_yaml(self) -> str:
        return self.base.repository.get_object_content(YAML_FILENAME)

    def get_calculator(self, **kwargs: Any):
        """An ASE calculator (pyace ``PyACECalculator``) giving energy (eV), forces (eV/Å) and stress."""
        from pyace import PyACECalculator

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / YACE_FILENAME
            path.write_text(self.get_yace())
            return PyACECalculator(str(path), **kwargs)

    def lammps_input(self, species: Sequence[str] | None = None, yace_path: str = YACE_FILENAME) -> str:
        """``pair_style``/``pair_coeff`` lines; ``species`` = element of each LAMMPS atom type (default: elements)."""
        species = list(species or self.elements)
        unknown = sorted(set(species) - set(self.elements))
        if unknown:
            raise ValueError(f"the potential has no element(s) {unknown}; it covers {self.elements}")
        return f"pair_style pace\npair_coeff * * {yace_path} {' '.join(species)}\n"

    def write_files(self, directory: str | os.PathLike, species: Sequence[str] | None = None) -> dict[str, Path]:
        """Write ``potential.yace``, ``potential.yaml`` and a LAMMPS snippet ``lammps.in`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = {
            "yace": directory / YACE_FILENAME,
            "yaml": directory / YAML_FILENAME,
            "lammps": directory / LAMMPS_FILENAME,
        }
        written["yace"].write_text(self.get_yace())
        written["yaml"].write_text(self.get_yaml())
        written["lammps"].write_text(self.lammps_input(species))
        return written
