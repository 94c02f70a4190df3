"""Read Pacemaker's metrics (``metrics.txt``, ``test_metrics.txt``, ``log.txt``) into typed results.

Units: energies in eV/atom, forces in eV/Å. Pacemaker's force errors are per Cartesian component; its log prints
meV, which is converted here.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from aiida_autopipec.learning import files

__all__ = [
    "ErrorMetrics",
    "LearningCurve",
    "LogParser",
    "MetricsError",
    "TrainingMetrics",
    "read_metrics_table",
]

#: Columns of Pacemaker's metrics tables that form the learning curve, and our names for them.
CURVE_COLUMNS = {
    "iter_num": "iteration",
    "loss": "loss",
    "rmse_epa": "rmse_energy",
    "rmse_f_comp": "rmse_forces",
}
_SUMMARY_BLOCK = re.compile(r"-+(TEST )?Cycle last iteration:-+\n(.*?)\n-{20,}\n(.*?)\n-{20,}", re.DOTALL)
_SUMMARY_ROW = re.compile(r"^\s*(RMSE|MAE|MAX_AE):\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.MULTILINE)


class MetricsError(ValueError):
    """Pacemaker's metrics files are missing or cannot be read."""


class ErrorMetrics(BaseModel):
    """Errors of one data split: energies per atom in eV/atom, forces per component in eV/Å."""

    rmse_energy: float = Field(description="RMSE of the energy per atom, eV/atom")
    rmse_forces: float = Field(description="RMSE of the force components, eV/Å")
    mae_energy: float | None = Field(None, description="MAE of the energy per atom, eV/atom")
    mae_forces: float | None = Field(None, description="MAE of the force components, eV/Å")
    max_energy: float | None = Field(None, description="largest absolute energy error, eV/atom")
    max_forces: float | None = Field(None, description="largest absolute force-component error, eV/Å")


class LearningCurve(BaseModel):
    """Loss and RMSEs at every displayed iteration (train, and test where Pacemaker evaluated it)."""

    iteration: list[int]
    loss: list[float]
    rmse_energy: list[float]
    rmse_forces: list[float]
    test_iteration: list[int] = []
    test_loss: list[float] = []
    test_rmse_energy: list[float] = []
    test_rmse_forces: list[float] = []


class TrainingMetrics(BaseModel):
    """Final errors of a fit and whether they meet the accuracy target.

    ``rmse_energy``/``rmse_forces`` are those convergence is judged on: the test split, or train without one.
    """

    train: ErrorMetrics
    test: ErrorMetrics | None = None
    iterations: int = Field(description="optimiser iterations done")
    final_loss: float
    diverged: bool = Field(False, description="the loss became NaN or infinite")
    rmse_forces_threshold: float = 0.05
    rmse_energy_threshold: float | None = None
    learning_curve: LearningCurve | None = None
    evaluated_by: str = Field("pacemaker", description="who computed train/test: Pacemaker or the delivered model")
    pacemaker_reported: dict | None = Field(
        None, description="Pacemaker's own train/test errors (before its core repulsion), kept for comparison"
    )

    @property
    def judged_on(self) -> str:
        return "test" if self.test is not None else "train"

    @property
    def rmse_energy(self) -> float:
        return (self.test or self.train).rmse_energy

    @property
    def rmse_forces(self) -> float:
        return (self.test or self.train).rmse_forces

    @property
    def is_converged(self) -> bool:
        if self.diverged or not math.isfinite(self.rmse_forces):
            return False
        converged = self.rmse_forces < self.rmse_forces_threshold
        if self.rmse_energy_threshold is not None:
            converged = converged and self.rmse_energy < self.rmse_energy_threshold
        return converged

    def summary(self) -> dict:
        """Plain-dict form (what the parser stores): units in the keys' descriptions, see ``units``."""
        return {
            "train": self.train.model_dump(),
            "test": self.test.model_dump() if self.test else None,
            "judged_on": self.judged_on,
            "rmse_energy": self.rmse_energy,
            "rmse_forces": self.rmse_forces,
            "is_converged": self.is_converged,
            "rmse_forces_threshold": self.rmse_forces_threshold,
            "rmse_energy_threshold": self.rmse_energy_threshold,
            "iterations": self.iterations,
            "final_loss": self.final_loss,
            "diverged": self.diverged,
            "units": {"energy": "eV/atom", "forces": "eV/Å (per component)"},
            "evaluated_by": self.evaluated_by,
            "pacemaker_reported": self.pacemaker_reported,
        }

    def with_delivered_errors(self, evaluation: dict) -> TrainingMetrics:
        """These metrics with train/test errors of the delivered model (``evaluate_model``); Pacemaker's own
        numbers move to ``pacemaker_reported``."""
        reported = {"train": self.train.model_dump(), "test": self.test.model_dump() if self.test else None}
        return self.model_copy(
            update={
                "train": ErrorMetrics(**evaluation["train"]),
                "test": ErrorMetrics(**evaluation["test"]) if evaluation.get("test") else None,
                "evaluated_by": evaluation["evaluator"],
                "pacemaker_reported": reported,
            }
        )


def read_metrics_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A whitespace table with a header row (Pacemaker's ``metrics.txt`` family) as columns of floats."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise MetricsError(f"{path}: empty")
    header, rows = lines[0], lines[1:]
    rows = [row for row in rows if len(row) == len(header)]  # a row cut off by a kill is dropped
    try:
        values = np.array(rows, dtype=float).reshape(len(rows), len(header))
    except ValueError as exc:
        raise MetricsError(f"{path}: not a numeric table: {exc}") from exc
    return {name: values[:, i] for i, name in enumerate(header)}


def _summaries_from_log(text: str) -> dict[str, ErrorMetrics]:
    """The last 'Cycle last iteration' (train) and 'TEST Cycle last iteration' blocks of log.txt, in eV."""
    found: dict[str, ErrorMetrics] = {}
    for match in _SUMMARY_BLOCK.finditer(text):
        split = "test" if match.group(1) else "train"
        rows = {
            m.group(1): [float(v) / 1000.0 for v in m.group(2, 3, 4, 5)] for m in _SUMMARY_ROW.finditer(match.group(3))
        }
        if "RMSE" not in rows:
            continue
        found[split] = ErrorMetrics(
            rmse_energy=rows["RMSE"][0],
            rmse_forces=rows["RMSE"][2],
            mae_energy=rows.get("MAE", [None] * 4)[0],
            mae_forces=rows.get("MAE", [None] * 4)[2],
            max_energy=rows.get("MAX_AE", [None] * 4)[0],
            max_forces=rows.get("MAX_AE", [None] * 4)[2],
        )
    return found


def _from_table(table: dict[str, np.ndarray]) -> ErrorMetrics:
    """Errors from the last row of a metrics table (no energy MAE there)."""
    return ErrorMetrics(
        rmse_energy=float(table["rmse_epa"][-1]),
        rmse_forces=float(table["rmse_f_comp"][-1]),
        mae_forces=float(table["mae_f_comp"][-1]) if "mae_f_comp" in table else None,
    )


def _combine(table: ErrorMetrics, log: ErrorMetrics | None) -> ErrorMetrics:
    if log is None:
        return table
    extra = {k: getattr(log, k) for k in ("mae_energy", "max_energy", "max_forces")}
    return table.model_copy(update={k: v for k, v in extra.items() if v is not None})


class LogParser:
    """Parse the outputs of one Pacemaker run into :class:`TrainingMetrics`."""

    def __init__(self, rmse_forces_threshold: float = 0.05, rmse_energy_threshold: float | None = None):
        self.rmse_forces_threshold = rmse_forces_threshold
        self.rmse_energy_threshold = rmse_energy_threshold

    def parse(self, path: str | os.PathLike) -> TrainingMetrics:
        """``path`` is the working directory or any file in it (e.g. ``log.txt``)."""
        folder = Path(path)
        folder = folder if folder.is_dir() else folder.parent
        train_path = folder / files.TRAIN_METRICS
        if not train_path.is_file():
            raise MetricsError(f"{train_path}: missing (Pacemaker did not start fitting)")
        train_table = read_metrics_table(train_path)
        if not len(train_table.get("iter_num", [])):
            raise MetricsError(f"{train_path}: no iterations recorded")
        test_path = folder / files.TEST_METRICS
        test_table = read_metrics_table(test_path) if test_path.is_file() else None
        if test_table is not None and not len(test_table.get("iter_num", [])):
            test_table = None

        log_path = folder / files.LOG
        summaries = _summaries_from_log(log_path.read_text(errors="replace")) if log_path.is_file() else {}
        # Full-precision RMSEs from the tables; the log (rounded to 0.01 meV) adds energy MAE and maxima.
        train = _combine(_from_table(train_table), summaries.get("train"))
        test = _combine(_from_table(test_table), summaries.get("test")) if test_table is not None else None

        losses = np.concatenate([train_table["loss"], test_table["loss"] if test_table is not None else []])
        diverged = not np.isfinite(losses).all() or not math.isfinite(train.rmse_forces)
        curve = LearningCurve(
            **{ours: train_table[theirs].tolist() for theirs, ours in CURVE_COLUMNS.items()},
            **(
                {f"test_{ours}": test_table[theirs].tolist() for theirs, ours in CURVE_COLUMNS.items()}
                if test_table is not None
                else {}
            ),
        )
        return TrainingMetrics(
            train=train,
            test=test,
            iterations=int(train_table["iter_num"].max()),
            final_loss=float(train_table["loss"][-1]),
            diverged=diverged,
            rmse_forces_threshold=self.rmse_forces_threshold,
            rmse_energy_threshold=self.rmse_energy_threshold,
            learning_curve=curve,
        )
