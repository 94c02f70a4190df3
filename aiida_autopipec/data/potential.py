"""``PotentialData``: a fitted ACE potential, as the ``.yace`` (evaluation) and B-basis ``.yaml`` (γ, warm start)."""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiida import orm

from aiida_autopipec.learning.baseline import pair_key
from aiida_autopipec.learning.potential import potential_info, yace_elements

__all__ = ["PotentialData"]

YACE_FILENAME = "potential.yace"
YAML_FILENAME = "potential.yaml"
LAMMPS_FILENAME = "lammps.in"
#: The active set of the B-basis (``pace_activeset``) and the LAMMPS lines that use it (``pace/extrapolation``).
ASI_FILENAME = "potential.asi"
LAMMPS_EXTRAPOLATION_FILENAME = "lammps_extrapolation.in"


def _element_pairs(elements: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of ``elements`` (self-pairs included), in the order of ``elements``."""
    return [(first, second) for i, first in enumerate(elements) for second in elements[i:]]


def _validate_baseline(baseline: Mapping, elements: Sequence[str]) -> dict[str, Any]:
    """Check a ZBL baseline against the potential's ``elements``; return it in the stored form.

    Stored form: ``{"type": "zbl", "pair_cutoffs": {"Al-Al": [inner, outer], "Al-Cu": [...], ...}}`` (Å), with a
    key for every element pair (:func:`~aiida_autopipec.learning.baseline.pair_key`), ordered as the elements.
    """
    if not isinstance(baseline, Mapping):
        raise ValueError(f"baseline must be a mapping {{'type': 'zbl', 'pair_cutoffs': {{...}}}}, got {baseline!r}")
    extra = sorted(set(baseline) - {"type", "pair_cutoffs"})
    if extra:
        raise ValueError(f"baseline has unknown key(s) {extra}; expected only 'type' and 'pair_cutoffs'")
    if baseline.get("type") != "zbl":
        raise ValueError(f"baseline type must be 'zbl', got {baseline.get('type')!r}")
    given = baseline.get("pair_cutoffs")
    if not isinstance(given, Mapping):
        raise ValueError(f"baseline 'pair_cutoffs' must map pair keys like 'Al-Cu' to [inner, outer], got {given!r}")
    valid = {pair_key(first, second) for first, second in _element_pairs(elements)}
    for key in given:
        if key not in valid:
            parts = key.split("-") if isinstance(key, str) else []
            unknown = sorted(set(parts) - set(elements))
            if len(parts) != 2:
                hint = "keys are two element symbols joined by '-', sorted, e.g. 'Al-Cu'"
            elif unknown:
                hint = f"the potential has no element(s) {unknown}"
            else:
                hint = f"write it as {pair_key(*parts)!r}"
            raise ValueError(
                f"baseline pair key {key!r} is not a pair of the potential's elements {list(elements)}: {hint}"
            )
    missing = [pair_key(a, b) for a, b in _element_pairs(elements) if pair_key(a, b) not in given]
    if missing:
        raise ValueError(f"baseline 'pair_cutoffs' lacks the element pair(s) {missing}; every pair needs cutoffs")
    pair_cutoffs = {}
    for first, second in _element_pairs(elements):
        key = pair_key(first, second)
        value = given[key]
        items = [] if isinstance(value, (str, bytes, Mapping)) else list(value) if isinstance(value, Iterable) else []
        if len(items) != 2 or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in items):
            raise ValueError(f"baseline cutoffs of {key} must be two numbers [inner, outer] in Å, got {value!r}")
        inner, outer = float(items[0]), float(items[1])
        if not (math.isfinite(inner) and math.isfinite(outer) and 0.0 < inner <= outer):
            raise ValueError(f"baseline cutoffs of {key} need 0 < inner <= outer (Å), got inner={inner}, outer={outer}")
        pair_cutoffs[key] = [inner, outer]
    return {"type": "zbl", "pair_cutoffs": pair_cutoffs}


def _text(source: str | os.PathLike | bytes) -> str:
    if isinstance(source, bytes):
        return source.decode()
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source):
        return Path(source).read_text()
    return source


def _number(value: float) -> str:
    """Shortest text that reads back as the same float (``1.8``, not ``1.800000``)."""
    return repr(float(value))


class PotentialData(orm.Data):
    """An ACE potential fitted by Pacemaker.

    * ``potential.yace``: Ctilde basis with the per-element reference energies (eV/atom) in ``E0``, so it predicts
      absolute energies on the scale of the training data; used by pyace and LAMMPS ``pair_style pace``.
    * ``potential.yaml``: the B-basis, needed for the extrapolation grade γ and to continue a fit.

    Attributes: ``elements``, ``cutoff`` (Å), ``num_functions``, ``reference_energies`` (eV/atom) and, for delta
    learning, ``baseline``: ``{"type": "zbl", "pair_cutoffs": {"Al-Al": [inner, outer], "Al-Cu": [...], ...}}``
    (Å, one entry per element pair). With a baseline the model is E_total = E_ZBL + E_ACE, the ACE part having
    been fitted to the residual E_reference - E_ZBL; E_ZBL is LAMMPS' ``pair_style zbl inner outer`` of each pair
    (:class:`~aiida_autopipec.learning.zbl.ZBLCalculator`).
    """

    def __init__(
        self,
        yace: str | os.PathLike | bytes | None = None,
        yaml: str | os.PathLike | bytes | None = None,
        reference_energies: Mapping[str, float] | None = None,
        baseline: Mapping | None = None,
        short_range: Mapping | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if yace is None and yaml is None and baseline is None:
            return
        if yace is None or yaml is None:
            raise ValueError("PotentialData needs both the .yace and the B-basis .yaml")
        yace_text, yaml_text = _text(yace), _text(yaml)
        info = potential_info(yaml_text)
        if yace_elements(yace_text) != info["elements"]:
            raise ValueError(f".yace elements {yace_elements(yace_text)} differ from .yaml elements {info['elements']}")
        checked_baseline = None if baseline is None else _validate_baseline(baseline, info["elements"])
        self.base.repository.put_object_from_bytes(yace_text.encode(), YACE_FILENAME)
        self.base.repository.put_object_from_bytes(yaml_text.encode(), YAML_FILENAME)
        attributes = self.base.attributes
        attributes.set("elements", info["elements"])
        attributes.set("cutoff", info["cutoff"])
        attributes.set("num_functions", info["num_functions"])
        attributes.set("reference_energies", dict(reference_energies or {}))
        if checked_baseline is not None:
            attributes.set("baseline", checked_baseline)
        if short_range is not None:
            # How the fit kept the model repulsive (TrainingConfig.baseline) and the per-pair (inner, outer) cutoffs
            # in Å; a warm start continues with the same values.
            attributes.set(
                "short_range", {"mode": short_range["mode"], "pair_cutoffs": dict(short_range["pair_cutoffs"])}
            )

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

    @property
    def short_range(self) -> dict[str, Any] | None:
        """``{"mode": "core_repulsion" | "zbl_delta" | "none", "pair_cutoffs": {"Al-Cu": [inner, outer], ...}}``."""
        return self.base.attributes.get("short_range", None)

    @property
    def baseline(self) -> dict[str, Any] | None:
        """The ZBL baseline ``{"type": "zbl", "pair_cutoffs": {pair: [inner, outer]}}`` (Å), or None."""
        return self.base.attributes.get("baseline", None)

    def get_zbl_calculator(self):
        """The baseline alone as a :class:`~aiida_autopipec.learning.zbl.ZBLCalculator`; None without baseline."""
        baseline = self.baseline
        if baseline is None:
            return None
        from aiida_autopipec.learning.zbl import ZBLCalculator

        cutoffs = {tuple(key.split("-")): tuple(value) for key, value in baseline["pair_cutoffs"].items()}
        # Every pair of the potential's elements has its own cutoffs; the global ones are never used for them.
        inner, outer = next(iter(cutoffs.values()))
        return ZBLCalculator(inner, outer, cutoffs=cutoffs)

    def get_yace(self) -> str:
        return self.base.repository.get_object_content(YACE_FILENAME)

    def get_yaml(self) -> str:
        return self.base.repository.get_object_content(YAML_FILENAME)

    def get_ace_calculator(self, **kwargs: Any):
        """The ACE part alone: pyace ``PyACECalculator`` on the ``.yace`` (``kwargs`` go to it)."""
        from pyace import PyACECalculator

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / YACE_FILENAME
            path.write_text(self.get_yace())
            return PyACECalculator(str(path), **kwargs)

    def get_calculator(self, **kwargs: Any):
        """An ASE calculator giving the model's energy (eV), forces (eV/Å) and stress (eV/Å^3).

        Without a baseline this is pyace's ``PyACECalculator``. With a ZBL baseline it is an ASE ``SumCalculator``
        of that and the :class:`~aiida_autopipec.learning.zbl.ZBLCalculator` (E_total = E_ACE + E_ZBL); the
        parts stay available as ``results["energy_contributions"]`` etc. and as ``calculator.mixer.calcs``.
        ``kwargs`` go to ``PyACECalculator``. The ZBL stress needs a cell periodic in all three directions.
        """
        ace = self.get_ace_calculator(**kwargs)
        zbl = self.get_zbl_calculator()
        if zbl is None:
            return ace
        from ase.calculators.mixing import SumCalculator

        return SumCalculator([ace, zbl])

    def lammps_input(self, species: Sequence[str] | None = None, yace_path: str = YACE_FILENAME) -> str:
        """``pair_style``/``pair_coeff`` lines; ``species`` = element of each LAMMPS atom type (default: elements).

        Without a baseline: ``pair_style pace``. With a ZBL baseline: ``pair_style hybrid/overlay pace zbl in1 out1
        zbl in2 out2 ...``, one ``zbl`` instance per element pair present among the atom types (in the order of
        the potential's elements), and ``pair_coeff i j zbl N Z_i Z_j`` for every type pair i <= j, N being the
        instance of that element pair. If all those pairs share their cutoffs, one ``zbl in out`` instance serves
        them all and the lines are ``pair_coeff i j zbl Z_i Z_j`` (LAMMPS wants no index for a single instance).
        """
        species = list(species or self.elements)
        unknown = sorted(set(species) - set(self.elements))
        if unknown:
            raise ValueError(f"the potential has no element(s) {unknown}; it covers {self.elements}")
        baseline = self.baseline
        if baseline is None:
            return f"pair_style pace\npair_coeff * * {yace_path} {' '.join(species)}\n"

        from ase.data import atomic_numbers

        cutoffs = baseline["pair_cutoffs"]
        type_pairs = [(i, j) for i in range(len(species)) for j in range(i, len(species))]
        used = {pair_key(species[i], species[j]) for i, j in type_pairs}
        instances = [pair_key(a, b) for a, b in _element_pairs(self.elements) if pair_key(a, b) in used]
        single = len({tuple(cutoffs[key]) for key in instances}) == 1
        styles = instances[:1] if single else instances
        zbl_styles = " ".join(f"zbl {_number(cutoffs[key][0])} {_number(cutoffs[key][1])}" for key in styles)
        lines = [
            "# E_total = E_ACE + E_ZBL: the ACE potential was fitted to the residual E_reference - E_ZBL (delta",
            "# learning), so it must be used together with this ZBL baseline (per-pair inner/outer cutoffs in Å).",
            f"pair_style hybrid/overlay pace {zbl_styles}",
            f"pair_coeff * * pace {yace_path} {' '.join(species)}",
        ]
        for i, j in type_pairs:
            key = pair_key(species[i], species[j])
            index = "" if single else f"{instances.index(key) + 1} "
            lines.append(
                f"pair_coeff {i + 1} {j + 1} zbl {index}{atomic_numbers[species[i]]} {atomic_numbers[species[j]]}"
            )
        return "\n".join(lines) + "\n"

    def lammps_extrapolation_input(self, species: Sequence[str] | None = None, active_set: str = ASI_FILENAME) -> str:
        """The LAMMPS lines of :meth:`lammps_input` with ``pair_style pace/extrapolation`` (ML-PACE): the B-basis
        ``.yaml`` and its active set ``.asi`` give every atom its extrapolation grade γ, as ``f_pace_gamma``."""
        species = list(species or self.elements)
        plain = self.lammps_input(species, yace_path=f"{YAML_FILENAME} {active_set}")
        style = "pace/extrapolation"
        pair_lines = plain.replace("pair_style pace\n", f"pair_style {style}\n")
        pair_lines = pair_lines.replace("hybrid/overlay pace ", f"hybrid/overlay {style} ").replace(
            " * * pace ", f" * * {style} "
        )
        return pair_lines + (
            "# gamma of every atom every 10 steps; the largest one as a thermo quantity. Above ~5 the potential\n"
            "# extrapolates; far above (~25) its forces are not to be trusted: e.g. `fix halt 10 v_max_gamma > 25`.\n"
            f"fix pace_gamma all pair 10 {style} gamma 1\n"
            "compute max_pace_gamma all reduce max f_pace_gamma\n"
            "variable max_gamma equal c_max_pace_gamma\n"
        )

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
