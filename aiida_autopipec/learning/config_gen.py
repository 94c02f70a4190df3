"""Turn a :class:`~aiida_autopipec.config.SystemConfig` into Pacemaker's ``input.yaml``.

Pacemaker does not validate its input (unknown keys are silently ignored, bad values fail minutes later), so this
module owns the schema: it writes only keys that the installed python-ace reads, and checks expert overrides
against the same schema before anything runs. ``tests/learning/test_config_gen.py`` proves with Pacemaker's own
dry run that each value written here takes effect.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning.baseline import pair_key, shortest_pair_distances, zbl_pair_cutoffs

__all__ = ["ConfigError", "PacemakerConfigGenerator", "deep_merge", "number_of_functions_per_element"]

#: At least this many fitted values (energies + force components) per basis coefficient.
OBSERVATIONS_PER_COEFFICIENT = 10
#: Densities per embedding (``ndensity``): each basis function carries one coefficient per density.
DEFAULT_NDENSITY = 2
MIN_FUNCTIONS_PER_ELEMENT = 5

ANY = None  # a leaf whose value is passed through (type-checked by Pacemaker or below)
FREE_MAPPING = "free mapping"  # a mapping whose keys are not fixed (metadata, scipy options, ...)
SPECIES_GROUPS = frozenset({"ALL", "UNARY", "BINARY", "TERNARY", "QUATERNARY", "QUINARY"})

EMBEDDING_SCHEMA = {k: ANY for k in ("npot", "fs_parameters", "ndensity", "rho_core_cut", "drho_core_cut")}
BOND_SCHEMA = {
    k: ANY
    for k in (
        "radbase",
        "radparameters",
        "rcut",
        "dcut",
        "r_in",
        "delta_in",
        "core-repulsion",
        "inner_cutoff_type",
        "NameOfCutoffFunction",
    )
}
FUNCTION_SCHEMA = {k: ANY for k in ("nradmax_by_orders", "lmax_by_orders", "coefs_init")}


class PerSpecies:
    """Schema of a mapping keyed by species specs (``ALL``, ``UNARY``, ``Al``, ``AlCu``, ``[Al, Cu]``...).

    ``groups`` and ``max_species`` are what Pacemaker honours in that section: bonds act on ALL/UNARY/BINARY and
    element pairs (a TERNARY bond is silently ignored), embeddings only on ALL/UNARY and single elements.
    """

    def __init__(self, block: dict, groups: frozenset[str], max_species: int, **extra: Any):
        self.block, self.groups, self.max_species, self.extra = block, groups, max_species, extra


#: Every key the generator or an expert override may put into input.yaml (python-ace 0.4).
SCHEMA: dict[str, Any] = {
    "seed": ANY,
    "metadata": FREE_MAPPING,
    "potential": {
        "deltaSplineBins": ANY,
        "elements": ANY,
        "embeddings": PerSpecies(EMBEDDING_SCHEMA, frozenset({"ALL", "UNARY"}), 1),
        "bonds": PerSpecies(BOND_SCHEMA, frozenset({"ALL", "UNARY", "BINARY"}), 2),
        "functions": PerSpecies(FUNCTION_SCHEMA, SPECIES_GROUPS, 5, number_of_functions_per_element=ANY),
    },
    "data": {
        "filename": ANY,
        "test_filename": ANY,
        "test_size": ANY,
        "ignore_weights": ANY,
        "aug_factor": ANY,
    },
    "fit": {
        "loss": {k: ANY for k in ("kappa", "L1_coeffs", "L2_coeffs", "w0_rad", "w1_rad", "w2_rad", "w_orth")},
        "weighting": FREE_MAPPING,
        "optimizer": ANY,
        "options": FREE_MAPPING,
        "maxiter": ANY,
        "repulsion": ANY,
        "trainable_parameters": ANY,
        "fit_cycles": ANY,
        "noise_relative_sigma": ANY,
        "noise_absolute_sigma": ANY,
        "ladder_step": ANY,
        "ladder_type": ANY,
        "min_relative_train_loss_per_iter": ANY,
        "min_relative_test_loss_per_iter": ANY,
        "early_stopping_patience": ANY,
        "randomize_func_coeffs": ANY,
    },
    "backend": {
        "evaluator": ANY,
        "batch_size": ANY,
        "batch_size_reduction": ANY,
        "batch_size_reduction_factor": ANY,
        "display_step": ANY,
        "gpu_config": {"gpu_ind": ANY, "mem_limit": ANY},
    },
}

#: Keys the plugin manages itself (file names, element list): overriding them would break the calculation.
MANAGED_KEYS = {
    ("potential", "elements"): "set 'elements' in SystemConfig instead",
    ("data", "filename"): "the training data file is written by the plugin",
    ("data", "test_filename"): "pass a test set instead",
    ("data", "reference_energy"): "set 'reference_energies' in TrainingConfig instead",
    ("data", "datapath"): "the plugin writes the data into the working directory",
    ("potential", "initial_potential"): "pass an initial potential instead",
    ("fit", "callbacks"): "callbacks import arbitrary Python code and are not allowed",
}
#: Parts of key names whose string values Pacemaker opens as files (``filename``, ``filename_or_df``, ``datapath``).
PATH_KEY_PARTS = ("file", "path", "dir")
NUMPY_OPTIMIZERS = ("BFGS", "L-BFGS-B", "CG")
TF_OPTIMIZERS = ("Adam", "SGD")


class ConfigError(ValueError):
    """An expert override or a generated value that Pacemaker would ignore or reject."""


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` onto a copy of ``base``; mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def blocks_per_element(num_elements: int) -> int:
    """Basis blocks per element of Pacemaker's default (ALL) basis: each element with every subset of the others.

    Pacemaker shares ``number_of_functions_per_element`` out over these blocks with integer division, so a value
    below this number gives blocks (with 4 elements: every block) without any function.
    """
    return 2 ** (max(num_elements, 1) - 1)


def number_of_functions_per_element(num_structures: int, num_atoms: int, num_elements: int, maximum: int = 300) -> int:
    """Basis size that the data can support, to avoid over-fitting small datasets.

    Rule: the number of fitted values (one energy per structure + three force components per atom) must be at least
    ``OBSERVATIONS_PER_COEFFICIENT`` (10) times the number of coefficients (``ndensity`` = 2 per function), i.e.
    ``n = (num_structures + 3 num_atoms) / (10 * 2 * num_elements)``, clipped to ``[5, maximum]`` and rounded down
    to a multiple of the blocks per element (at least one function per block, see :func:`blocks_per_element`).
    """
    observations = num_structures + 3 * num_atoms
    n = math.floor(observations / (OBSERVATIONS_PER_COEFFICIENT * DEFAULT_NDENSITY * max(num_elements, 1)))
    n = min(max(n, MIN_FUNCTIONS_PER_ELEMENT), maximum)
    blocks = blocks_per_element(num_elements)
    return int(max(n // blocks, 1) * blocks)


def _is_species_key(key: Any, schema: PerSpecies) -> bool:
    """A group Pacemaker honours here, or up to ``max_species`` elements: ``Al``, ``AlCu``, ``Al Cu``, ``[Al, Cu]``."""
    from aiida_autopipec.config import ELEMENT_SYMBOLS

    if isinstance(key, (list, tuple)):
        symbols = list(key)
    elif isinstance(key, str):
        if key in schema.groups:
            return True
        compact = re.sub(r"[\s,()\[\]]", "", key)
        symbols = re.findall(r"[A-Z][a-z]?", compact)
        if "".join(symbols) != compact:
            return False
    else:
        return False
    return 0 < len(symbols) <= schema.max_species and all(symbol in ELEMENT_SYMBOLS for symbol in symbols)


def check_against_schema(config: Mapping[str, Any], schema: Mapping[str, Any] = SCHEMA, path: str = "") -> None:
    """Raise :class:`ConfigError` for keys Pacemaker would silently ignore, suggesting the closest known key."""
    for key, value in config.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(schema, PerSpecies):
            if key in schema.extra:
                sub_schema: Any = schema.extra[key]
            elif _is_species_key(key, schema):
                sub_schema = schema.block
            else:
                # block keys (rcut, ndensity, ...) belong one level down, under ALL or a species key
                hint = f"; put '{key}' under ALL or a species key" if key in schema.block else ""
                raise ConfigError(
                    f"{where}: '{key}' is not honoured here: use one of {sorted(schema.groups)} or up to "
                    f"{schema.max_species} element(s){hint}"
                )
        elif key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {sorted(map(str, schema))}"
            raise ConfigError(f"{where}: unknown key '{key}' (Pacemaker would silently ignore it){hint}")
        else:
            sub_schema = schema[key]
        if sub_schema is ANY or sub_schema == FREE_MAPPING:
            if sub_schema == FREE_MAPPING and not isinstance(value, Mapping):
                raise ConfigError(f"{where}: expected a mapping, got {value!r}")
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        check_against_schema(value, sub_schema, where)


def check_override_paths(overrides: Mapping[str, Any], path: str = "") -> None:
    """Raise :class:`ConfigError` for an override that would make Pacemaker read or write outside its working
    directory (absolute paths, ``..``, ``~``) or unpickle a file (``ExternalWeightingPolicy`` loads a pickle)."""
    for key, value in overrides.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, Mapping):
            if key == "weighting" and value.get("type") == "ExternalWeightingPolicy":
                raise ConfigError(
                    f"{where}.type: ExternalWeightingPolicy loads a pickled file, which can execute code; not allowed"
                )
            check_override_paths(value, where)
        elif isinstance(value, str) and any(part in str(key).lower() for part in PATH_KEY_PARTS):
            parts = re.split(r"[\\/]+", value)
            if value.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", value) or ".." in parts:
                raise ConfigError(
                    f"{where}: {value!r} points outside the working directory; only plain relative names are allowed"
                )


def _positive(value: Any, where: str, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check_values(config: Mapping[str, Any]) -> None:
    """Check the values that Pacemaker would otherwise only reject (or misuse) minutes into a fit."""
    fit, backend, potential = config.get("fit", {}), config.get("backend", {}), config.get("potential", {})
    _positive(fit.get("maxiter", 1), "fit.maxiter", integer=True)
    _positive(backend.get("batch_size", 1), "backend.batch_size", integer=True)
    _positive(backend.get("display_step", 1), "backend.display_step", integer=True)
    optimizer = fit.get("optimizer", "BFGS")
    if optimizer not in NUMPY_OPTIMIZERS + TF_OPTIMIZERS:
        raise ConfigError(f"fit.optimizer: '{optimizer}' is not one of {list(NUMPY_OPTIMIZERS + TF_OPTIMIZERS)}")
    kappa = fit.get("loss", {}).get("kappa", 0.5)
    if kappa != "auto" and (isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0 <= kappa <= 1):
        raise ConfigError(f"fit.loss.kappa: must be 'auto' or a number in [0, 1], got {kappa!r}")
    test_size = config.get("data", {}).get("test_size")
    if test_size is not None and (
        isinstance(test_size, bool)
        or not isinstance(test_size, (int, float))
        or not (0 < test_size < 1 or (isinstance(test_size, int) and test_size >= 1))
    ):
        raise ConfigError(f"data.test_size: must be a fraction in (0, 1) or a number of structures, got {test_size!r}")
    if isinstance(potential, Mapping):
        for name, bond in potential.get("bonds", {}).items():
            if "rcut" in bond:
                _positive(bond["rcut"], f"potential.bonds.{name}.rcut")
        functions = potential.get("functions", {})
        if "number_of_functions_per_element" in functions:
            _positive(functions["number_of_functions_per_element"], "number_of_functions_per_element", integer=True)


class PacemakerConfigGenerator:
    """Build a current, validated Pacemaker ``input.yaml`` from a :class:`SystemConfig` plus expert overrides."""

    def __init__(self, config: SystemConfig, overrides: Mapping[str, Any] | None = None):
        if not isinstance(config, SystemConfig):
            config = SystemConfig.model_validate(config)
        self.config = config
        self.overrides = dict(overrides or {})
        self.zbl_params: dict[str, tuple[float, float]] = {}
        for (section, key), reason in MANAGED_KEYS.items():
            if isinstance(self.overrides.get(section), Mapping) and key in self.overrides[section]:
                raise ConfigError(f"{section}.{key}: cannot be overridden ({reason})")
        if "potential" in self.overrides and not isinstance(self.overrides["potential"], Mapping):
            raise ConfigError("potential: cannot be overridden by a file name (pass an initial potential instead)")
        check_override_paths(self.overrides)
        check_against_schema(self.overrides)  # after the managed keys: most of those are not in SCHEMA

    def functions_per_element(self, num_structures: int | None, num_atoms: int | None) -> int:
        """The configured basis size, or the data-adapted one (see :func:`number_of_functions_per_element`)."""
        training = self.config.training
        if training.number_of_functions_per_element is not None:
            blocks = blocks_per_element(len(self.config.elements))
            if training.number_of_functions_per_element < blocks:
                raise ConfigError(
                    f"number_of_functions_per_element: {training.number_of_functions_per_element} is fewer than the "
                    f"{blocks} basis blocks per element of a {len(self.config.elements)}-element potential; Pacemaker "
                    f"would build blocks without functions"
                )
            return training.number_of_functions_per_element
        if num_structures is None or num_atoms is None:
            raise ConfigError("number_of_functions_per_element is automatic: the data size must be known")
        return number_of_functions_per_element(
            num_structures, num_atoms, len(self.config.elements), training.max_functions_per_element
        )

    def generate(
        self,
        dataset_path: str | os.PathLike,
        *,
        test_dataset_path: str | os.PathLike | None = None,
        initial_potential_path: str | os.PathLike | None = None,
        num_structures: int | None = None,
        num_atoms: int | None = None,
        shortest_distances: Mapping[str, float] | None = None,
        zbl_params: Mapping[str, Sequence[float]] | None = None,
        trusted: bool = False,
    ) -> dict[str, Any]:
        """The input.yaml content as a dict. Paths are written as given (relative paths stay relative).

        What the generator needs to know about the data (its size for the automatic basis, the shortest distance
        per element pair for the repulsion cutoffs, see :meth:`_get_zbl_params`) is read from ``dataset_path``
        when not given; that file is a pickle (Pacemaker's format), which can execute code when loaded, so it is
        only read with ``trusted=True`` (a file you wrote yourself).
        """
        training = self.config.training
        fresh_basis = initial_potential_path is None
        needs_size = training.number_of_functions_per_element is None and fresh_basis
        # The repulsion cutoffs are needed in every mode: 'none' is still checked against them afterwards.
        needs_distances = zbl_params is None and shortest_distances is None
        if (needs_size and (num_structures is None or num_atoms is None)) or needs_distances:
            if not trusted:
                raise ConfigError(
                    f"{dataset_path}: reading it means unpickling it, which can execute code; give num_structures, "
                    "num_atoms and shortest_distances, or trusted=True for a dataset file you wrote yourself"
                )
            structures = _read_structures(dataset_path)
            num_structures, num_atoms = len(structures), sum(len(atoms) for atoms in structures)
            if needs_distances:
                shortest_distances = shortest_pair_distances(structures, self.config.elements)
        if zbl_params is not None:  # a warm start: the cutoffs of the potential it continues (see prepare_fit)
            self.zbl_params = {key: (float(v[0]), float(v[1])) for key, v in zbl_params.items()}
        else:
            self.zbl_params = self._get_zbl_params(shortest_distances)
        if fresh_basis:
            self._check_cutoff_above_repulsion()
        data: dict[str, Any] = {"filename": str(dataset_path)}
        if test_dataset_path is not None:
            data["test_filename"] = str(test_dataset_path)
        else:
            held_out = int((num_structures or 0) * training.test_size)  # how Pacemaker rounds
            if num_structures is not None and not 0 < held_out < num_structures:
                raise ConfigError(
                    f"test_size: {training.test_size} of {num_structures} structures holds out {held_out}; "
                    f"give a larger test_size (at least {1 / num_structures:.3g}) or a separate test set"
                )
            data["test_size"] = training.test_size
        backend: dict[str, Any] = {
            "evaluator": "tensorpot",
            "batch_size": training.batch_size,
            "batch_size_reduction": training.batch_size_reduction,
            "display_step": training.display_step,
        }
        if training.device == "cpu":
            backend["gpu_config"] = {"gpu_ind": -1, "mem_limit": 0}
        elif training.device == "gpu":
            backend["gpu_config"] = {"gpu_ind": 0, "mem_limit": training.gpu_memory_limit or 0}
        config = {
            "seed": training.seed,
            "metadata": {"origin": "aiida-autopipec"},
            "potential": self._potential_section(initial_potential_path, num_structures, num_atoms),
            "data": data,
            "fit": {
                "loss": {
                    "kappa": training.kappa,
                    "L1_coeffs": training.l1_regularization,
                    "L2_coeffs": training.l2_regularization,
                },
                "optimizer": training.optimizer,
                "maxiter": training.maxiter,
            },
            "backend": backend,
        }
        overrides = self.overrides
        if initial_potential_path is not None and isinstance(overrides.get("potential"), Mapping):
            raise ConfigError("potential: overrides of the basis cannot be combined with an initial potential")
        config = deep_merge(config, overrides)
        check_against_schema(config if initial_potential_path is None else {**config, "potential": {}})
        check_values(config)
        return config

    def repulsion_cutoffs(self, shortest_distances: Mapping[str, float]) -> dict[str, tuple[float, float]]:
        """What :meth:`_get_zbl_params` gives for data with these shortest pair distances (Å), without keeping it."""
        return self._get_zbl_params(shortest_distances)

    def _get_zbl_params(self, shortest_distances: Mapping[str, float] | None = None) -> dict[str, tuple[float, float]]:
        """Per element pair ``(inner, outer)`` repulsion cutoffs in Å, keyed ``'Al-Cu'``.

        From covalent radii and the shortest distance of each pair in the training data (rule in
        :mod:`aiida_autopipec.learning.baseline`); ``TrainingConfig.zbl_cutoffs`` overrides single pairs.
        """
        params = zbl_pair_cutoffs(self.config.elements, shortest_distances or {})
        for key, value in (self.config.training.zbl_cutoffs or {}).items():
            params[pair_key(*key.split("-"))] = (float(value[0]), float(value[1]))
        return params

    def _check_cutoff_above_repulsion(self) -> None:
        """The neighbour cutoff must reach past every pair's repulsive core, or ACE would see no neighbours there."""
        cutoff = self.config.training.cutoff
        too_short = {key: outer for key, (_, outer) in self.zbl_params.items() if outer >= cutoff}
        if too_short:
            raise ConfigError(
                f"cutoff: {cutoff} Å does not reach past the repulsion cutoff of pair(s) {too_short} (Å, the "
                "covalent-radius sum or 0.9 x the shortest distance in the data): give a larger cutoff"
            )

    def _repulsion_bonds(self) -> dict[str, dict[str, Any]]:
        """Pacemaker's own ZBL core per pair: pure ZBL below ``inner``, blended into ACE up to ``outer``."""
        bonds = {}
        for key, (inner, outer) in self.zbl_params.items():
            bonds["".join(key.split("-"))] = {
                "r_in": outer,
                "delta_in": round(outer - inner, 6),
                "inner_cutoff_type": "zbl",
                "core-repulsion": [1.0, 1.0],
            }
        return bonds

    def _potential_section(self, initial_potential_path, num_structures, num_atoms) -> dict[str, Any] | str:
        if initial_potential_path is not None:
            # Warm start: Pacemaker continues from this B-basis (same basis and repulsion, previous coefficients).
            return str(initial_potential_path)
        functions: dict[str, Any] = {
            "number_of_functions_per_element": self.functions_per_element(num_structures, num_atoms),
            # Pacemaker's recommended basis shapes per number of species in a function.
            "UNARY": {"nradmax_by_orders": [15, 6, 4, 3, 2, 2], "lmax_by_orders": [0, 3, 3, 2, 2, 1]},
            "BINARY": {"nradmax_by_orders": [15, 6, 3, 2, 2, 1], "lmax_by_orders": [0, 3, 2, 1, 1, 0]},
            "TERNARY": {"nradmax_by_orders": [15, 3, 3, 2, 1], "lmax_by_orders": [0, 2, 2, 1, 1]},
            "ALL": {"nradmax_by_orders": [15, 3, 2, 1, 1], "lmax_by_orders": [0, 2, 2, 1, 1]},
        }
        return {
            "deltaSplineBins": 0.001,
            "elements": list(self.config.elements),
            "embeddings": {
                "ALL": {
                    "npot": "FinnisSinclairShiftedScaled",
                    "fs_parameters": [1, 1, 1, 0.5],
                    "ndensity": DEFAULT_NDENSITY,
                }
            },
            "bonds": {
                "ALL": {
                    "radbase": "SBessel",
                    "radparameters": [5.25],
                    "rcut": self.config.training.cutoff,
                    "dcut": 0.01,
                    "NameOfCutoffFunction": "cos",
                },
                **(self._repulsion_bonds() if self.config.training.baseline == "core_repulsion" else {}),
            },
            "functions": functions,
        }

    def write(self, path: str | os.PathLike, config: Mapping[str, Any]) -> Path:
        """Write ``config`` as YAML (plain types only, loadable with a safe loader)."""
        path = Path(path)
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        return path


def _read_structures(dataset_path: str | os.PathLike) -> list:
    """Structures of a Pacemaker dataset that this plugin wrote (a pickle: never call this on a user's file)."""
    import pandas as pd

    from aiida_autopipec.learning.readers import pickle_compression

    return list(pd.read_pickle(dataset_path, compression=pickle_compression(dataset_path))["ase_atoms"])
