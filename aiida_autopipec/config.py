"""User-facing settings of a fit: :class:`SystemConfig` (what is fitted) and :class:`TrainingConfig` (how).

Pacemaker silently ignores unknown or misspelt keys, so every value a user can set is validated here first,
with errors that name the offending field. Units: Å for lengths, eV/atom for energies, eV/Å for forces.
"""

from __future__ import annotations

from typing import Any, Literal

from ase.data import chemical_symbols
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["SystemConfig", "TrainingConfig", "describe_validation_error", "validate_element_symbols"]

#: Real element symbols (ASE's table without the placeholder ``X`` at index 0).
ELEMENT_SYMBOLS = frozenset(chemical_symbols[1:])


def describe_validation_error(exc: ValidationError, what: str = "") -> str:
    """One line naming every field a pydantic model refused and why; a check of the whole model (no field) is named
    ``what`` if given, else only its message."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(map(str, error["loc"])) or what
        named = not where or message.startswith(f"{where}:")  # the validator's message may name the field itself
        problems.append(message if named else f"{where}: {message}")
    return "; ".join(problems)


def validate_element_symbols(symbols: list[str], what: str = "elements") -> list[str]:
    """Return ``symbols`` if each is a real, unique chemical symbol, else raise ``ValueError`` naming the bad ones."""
    if not symbols:
        raise ValueError(f"{what}: at least one element symbol is required")
    unknown = [s for s in symbols if s not in ELEMENT_SYMBOLS]
    if unknown:
        raise ValueError(f"{what}: unknown element symbol(s) {unknown!r}")
    duplicates = sorted({s for s in symbols if symbols.count(s) > 1})
    if duplicates:
        raise ValueError(f"{what}: duplicate element symbol(s) {duplicates!r}")
    return list(symbols)


class TrainingConfig(BaseModel):
    """How to fit: basis, loss, optimiser, data split, hardware and the accuracy target."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cutoff: float = Field(5.0, gt=0, le=15.0, description="Neighbour cutoff radius in Å (all element pairs).")
    number_of_functions_per_element: int | None = Field(
        None,
        ge=1,
        description="ACE basis functions per element; None chooses it from the data size (rule in docs/concepts.md).",
    )
    max_functions_per_element: int = Field(
        300, ge=1, description="Upper bound for the automatic basis size (functions per element)."
    )
    kappa: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Weight of the force term in the loss (1 - kappa weighs energies); > 0.5 favours forces.",
    )
    l1_regularization: float = Field(1e-8, ge=0.0, description="L1 penalty on basis coefficients.")
    l2_regularization: float = Field(1e-8, ge=0.0, description="L2 penalty on basis coefficients.")
    optimizer: Literal["BFGS", "L-BFGS-B"] = Field("BFGS", description="scipy optimiser used by Pacemaker.")
    maxiter: int = Field(1000, gt=0, description="Maximum number of optimiser iterations.")
    test_size: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="Fraction of the training set held out for testing when no separate test set is given.",
    )
    seed: int = Field(42, ge=0, description="Random seed (also fixes the train/test split).")
    batch_size: int = Field(100, gt=0, description="Structures per batch in TensorFlow.")
    batch_size_reduction: bool = Field(
        True, description="Let Pacemaker shrink the batch when the device runs out of memory."
    )
    display_step: int = Field(10, gt=0, description="Iterations between two rows of the learning curve.")
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="'cpu' hides GPUs, 'gpu' requires GPU 0, 'auto' lets TensorFlow decide."
    )
    gpu_memory_limit: int | None = Field(
        None, gt=0, description="GPU memory limit in MiB for device='gpu' (None: grow as needed)."
    )
    reference_energies: Literal["fit"] | dict[str, float] = Field(
        "fit",
        description=(
            "Per-element reference energies in eV/atom subtracted before fitting and added back in the "
            "delivered potential; 'fit' determines them by least squares from the training energies."
        ),
    )
    baseline: Literal["none", "core_repulsion", "zbl_delta"] = Field(
        "core_repulsion",
        description=(
            "Short-range repulsion: 'core_repulsion' blends Pacemaker's ZBL core into ACE below each pair's data, "
            "'zbl_delta' fits ACE to the residual of a ZBL baseline (E_total = E_ZBL + E_ACE), 'none' adds nothing."
        ),
    )
    zbl_cutoffs: dict[str, tuple[float, float]] | None = Field(
        None,
        description="Per-pair (inner, outer) repulsion cutoffs in Å, keys like 'Al-Cu'; overrides the automatic rule.",
    )
    rmse_forces_threshold: float = Field(
        0.05, gt=0.0, description="Converged when the force RMSE (eV/Å, per component) is below this."
    )
    rmse_energy_threshold: float | None = Field(
        None, gt=0.0, description="Optional additional energy RMSE target in eV/atom."
    )

    @field_validator("reference_energies")
    @classmethod
    def _check_reference_energies(cls, value: Any) -> Any:
        if isinstance(value, dict):
            validate_element_symbols(list(value), "reference_energies")
            bad = {k: v for k, v in value.items() if v != v or v in (float("inf"), float("-inf"))}
            if bad:
                raise ValueError(f"reference_energies: values must be finite numbers, got {bad!r}")
        return value

    @field_validator("zbl_cutoffs")
    @classmethod
    def _check_zbl_cutoffs(cls, value: dict | None) -> dict | None:
        for key, (inner, outer) in (value or {}).items():
            if key.count("-") != 1:
                raise ValueError(f"zbl_cutoffs: key '{key}' must name a pair like 'Al-Cu'")
            first, second = key.split("-")
            validate_element_symbols([first], f"zbl_cutoffs key '{key}'")
            validate_element_symbols([second], f"zbl_cutoffs key '{key}'")
            if not 0 < inner <= outer:
                raise ValueError(f"zbl_cutoffs: '{key}' needs 0 < inner <= outer (Å), got ({inner}, {outer})")
        return value

    @model_validator(mode="after")
    def _check_gpu_options(self) -> TrainingConfig:
        if self.gpu_memory_limit is not None and self.device != "gpu":
            raise ValueError("gpu_memory_limit: only allowed together with device='gpu'")
        return self


class SystemConfig(BaseModel):
    """What to fit: the elements of the potential plus the :class:`TrainingConfig`.

    Fields of ``TrainingConfig`` may be given at the top level as a shorthand,
    e.g. ``SystemConfig(elements=['Fe', 'C'], cutoff=4.5)``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    elements: list[str] = Field(..., description="Chemical symbols the potential covers.")
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="before")
    @classmethod
    def _move_training_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        shorthand = {key: data[key] for key in data if key in TrainingConfig.model_fields}
        if not shorthand:
            return data
        data = {key: value for key, value in data.items() if key not in shorthand}
        training = data.get("training", {})
        if isinstance(training, TrainingConfig):
            training = training.model_dump(exclude_unset=True)
        both = sorted(set(shorthand) & set(training))
        if both:
            raise ValueError(f"{both} given both at the top level and in 'training'; give each once")
        data["training"] = {**training, **shorthand}
        return data

    @field_validator("elements")
    @classmethod
    def _check_elements(cls, value: list[str]) -> list[str]:
        return validate_element_symbols(value)

    @model_validator(mode="after")
    def _check_reference_energies_cover_elements(self) -> SystemConfig:
        for key in self.training.zbl_cutoffs or {}:
            unknown = sorted(set(key.split("-")) - set(self.elements))
            if unknown:
                raise ValueError(f"training.zbl_cutoffs: '{key}' names element(s) {unknown} not in elements")
        references = self.training.reference_energies
        if isinstance(references, dict):
            missing = sorted(set(self.elements) - set(references))
            if missing:
                raise ValueError(f"training.reference_energies: no value for element(s) {missing}")
        return self
