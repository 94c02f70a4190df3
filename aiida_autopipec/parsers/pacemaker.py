"""``PacemakerParser``: potential, metrics and learning curve of a Pacemaker run; a distinct exit code per failure.

Pacemaker writes errors to stderr only (never to log.txt) and may exit non-zero after writing a potential, so the
exit code recorded by the job script decides success; stderr and the metrics tables tell which failure it was.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_autopipec.data import PotentialData
from aiida_autopipec.learning import files
from aiida_autopipec.learning.baseline import check_dimer_curves
from aiida_autopipec.learning.device import training_device
from aiida_autopipec.learning.metrics import LogParser, MetricsError, TrainingMetrics, read_metrics_table
from aiida_autopipec.learning.pacemaker import REFERENCE_ENERGIES_JSON, error_summary
from aiida_autopipec.learning.potential import PotentialFileError, potential_info, set_reference_energies
from aiida_autopipec.parsers.common import files_to_parse

__all__ = ["PacemakerParser"]

#: What TensorFlow prints when a tensor allocation fails (CPU or GPU).
OUT_OF_MEMORY_MARKERS = ("ResourceExhaustedError", "OOM when allocating", "std::bad_alloc", "MemoryError")
#: Exit codes of a process ended by a signal: timeout(1), SIGKILL (also ``ulimit -t`` at the hard limit),
#: SIGTERM, SIGXCPU (CPU-time soft limit: ``ulimit -S -t``, batch systems' CPU-time limits).
KILLED_EXIT_STATUSES = {124: "timeout", 137: "SIGKILL", 143: "SIGTERM", 152: "SIGXCPU"}


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class PacemakerParser(Parser):
    """Turn the retrieved files of a :class:`PacemakerCalculation` into outputs."""

    def parse(self, **kwargs) -> ExitCode | None:
        with files_to_parse(self, kwargs.get("retrieved_temporary_folder")) as folder:
            exit_code = self._parse_folder(folder)
            if exit_code is not None and exit_code.status != 0:
                # A failed run hands on where it got to, so a restart can continue it (and provenance shows from what).
                self._attach_interim_potential(folder)
            return exit_code

    def _attach_interim_potential(self, folder: Path) -> None:
        """Output Pacemaker's ``interim_potential_0.yaml`` if it is complete (its writes are not atomic)."""
        path = folder / files.INTERIM_POTENTIAL
        if not path.is_file():
            return
        problem = self._interim_problem(folder, path.read_text(errors="replace"))
        if problem:
            self.logger.warning(f"{files.INTERIM_POTENTIAL} is not attached: {problem}")
            return
        self.out("interim_potential", orm.SinglefileData(path, filename=files.INTERIM_POTENTIAL))

    @staticmethod
    def _interim_problem(folder: Path, text: str) -> str | None:
        """Why the interim potential is unusable: not a B-basis, or fewer functions than the fit had (cut off)."""
        try:
            num_functions = potential_info(text)["num_functions"]
        except (ValueError, TypeError, AttributeError) as exc:  # PotentialFileError, or cut off inside a block
            return str(exc)
        try:
            fitted = read_metrics_table(folder / files.TRAIN_METRICS).get("nfuncs")
        except (MetricsError, OSError):
            fitted = None
        if fitted is not None and len(fitted) and int(fitted[-1]) != num_functions:
            return f"it has {num_functions} basis functions but the fit had {int(fitted[-1])} (cut off by the kill?)"
        return None

    def _parse_folder(self, folder: Path) -> ExitCode | None:
        exit_codes = self.exit_codes
        stderr = self._read(folder / files.STDERR)
        exit_status_text = self._read(folder / files.EXIT_STATUS).strip()
        exit_status = int(exit_status_text) if exit_status_text.lstrip("-").isdigit() else None

        metrics, metrics_error = self._parse_metrics(folder)
        if metrics is not None and metrics.learning_curve is not None:
            self.out("learning_curve", self._learning_curve(metrics))

        if metrics is not None and metrics.diverged:
            return exit_codes.ERROR_LOSS_DIVERGED.format(iteration=self._first_nan_iteration(metrics))
        scheduler_status = self.node.exit_status
        if scheduler_status == exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status:
            return exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
        if exit_status is None or exit_status in KILLED_EXIT_STATUSES:
            reason = KILLED_EXIT_STATUSES.get(exit_status, "no exit status recorded: the job ended before it did")
            return exit_codes.ERROR_PACEMAKER_KILLED.format(reason=reason)
        if exit_status != 0:
            # Out-of-memory text with exit status 0 means Pacemaker recovered by shrinking the batch.
            if any(marker in stderr for marker in OUT_OF_MEMORY_MARKERS):
                return exit_codes.ERROR_OUT_OF_MEMORY
            return exit_codes.ERROR_PACEMAKER_FAILED.format(
                exit_status=exit_status, stderr_tail=error_summary(stderr) or "(stderr empty)"
            )
        if not (folder / files.OUTPUT_POTENTIAL_YAML).is_file():
            return exit_codes.ERROR_NO_POTENTIAL.format(filename=files.OUTPUT_POTENTIAL_YAML)
        if not (folder / files.OUTPUT_POTENTIAL_YACE).is_file():
            log = self._read(folder / files.YAML2YACE_LOG) or self._read(folder / files.EVALUATION_LOG)
            return exit_codes.ERROR_YACE_CONVERSION.format(log_tail=_tail(log) or "(no output)")
        if metrics is None:
            return exit_codes.ERROR_METRICS_MISSING.format(error=metrics_error)
        evaluation_path = folder / files.EVALUATION_OUTPUT
        if not evaluation_path.is_file():
            return exit_codes.ERROR_EVALUATION_FAILED.format(
                log_tail=_tail(self._read(folder / files.EVALUATION_LOG)) or "(no output)"
            )
        evaluation = json.loads(evaluation_path.read_text())
        settings = json.loads(self.node.base.repository.get_object_content(files.EVALUATION_INPUT))
        try:
            self.out("potential", self._potential(folder, settings))
        except PotentialFileError as exc:
            return exit_codes.ERROR_YACE_CONVERSION.format(log_tail=str(exc))

        # The errors users see are those of the delivered model; Pacemaker's own stay in `pacemaker_reported`.
        summary = metrics.with_delivered_errors(evaluation).summary()
        if evaluation.get("subsets"):  # errors on named parts of the training data (`evaluation_subsets`)
            summary["subsets"] = evaluation["subsets"]
        # Which device trained: "cpu" or "gpu:<index>" (TensorFlow's messages in stderr), details in device_info.
        device = training_device(stderr, self._parameters().get("device", "auto"))
        summary["device"] = device.pop("device")
        summary["device_info"] = device
        violations = check_dimer_curves(evaluation["dimers"], settings["pair_cutoffs"])
        summary["short_range"] = {
            "mode": settings["mode"],
            "safe": not violations,
            "violations": violations,
            "pair_cutoffs": settings["pair_cutoffs"],
        }
        self.out("metrics", orm.Dict(summary))
        self.out("dimer_curves", self._dimer_curves(evaluation["dimers"], settings["pair_cutoffs"]))
        if violations:
            details = "; ".join(f"{pair}: {', '.join(problems)}" for pair, problems in violations.items())
            if settings["mode"] != "none":
                return exit_codes.ERROR_UNSAFE_SHORT_RANGE.format(details=details)
            self.logger.warning(f"baseline 'none': the model is not repulsive at short range ({details})")
        return None

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text(errors="replace") if path.is_file() else ""

    def _parameters(self) -> dict:
        return self.node.inputs.parameters.get_dict() if "parameters" in self.node.inputs else {}

    def _parse_metrics(self, folder: Path) -> tuple[TrainingMetrics | None, str]:
        parameters = self._parameters()
        log_parser = LogParser(parameters.get("rmse_forces_threshold", 0.05), parameters.get("rmse_energy_threshold"))
        try:
            return log_parser.parse(folder), ""
        except (MetricsError, OSError, ValueError) as exc:
            return None, str(exc)

    def _potential(self, folder: Path, settings: dict) -> PotentialData:
        references = json.loads(self.node.base.repository.get_object_content(REFERENCE_ENERGIES_JSON))
        yace = set_reference_energies((folder / files.OUTPUT_POTENTIAL_YACE).read_text(), references)
        return PotentialData(
            yace=yace,
            yaml=(folder / files.OUTPUT_POTENTIAL_YAML).read_text(),
            reference_energies=references,
            baseline=settings["baseline"],
            short_range={"mode": settings["mode"], "pair_cutoffs": settings["pair_cutoffs"]},
        )

    @staticmethod
    def _dimer_curves(curves: dict, pair_cutoffs: dict) -> orm.ArrayData:
        """Per pair ``<pair>_r`` (Å), ``<pair>_energy`` (eV, 0 for separated atoms), ``<pair>_force`` (eV/Å, > 0
        pushes the atoms apart)."""
        data = orm.ArrayData()
        for pair, curve in curves.items():
            for quantity in ("r", "energy", "force"):
                data.set_array(f"{pair.replace('-', '_')}_{quantity}", np.asarray(curve[quantity], dtype=float))
        data.base.attributes.set("pairs", sorted(curves))
        data.base.attributes.set("pair_cutoffs", pair_cutoffs)
        data.base.attributes.set("units", {"r": "Å", "energy": "eV", "force": "eV/Å"})
        return data

    @staticmethod
    def _learning_curve(metrics: TrainingMetrics) -> orm.ArrayData:
        curve = orm.ArrayData()
        for name, values in metrics.learning_curve.model_dump().items():
            if values:
                curve.set_array(name, np.asarray(values, dtype=float))
        curve.base.attributes.set("units", {"loss": "dimensionless", "rmse_energy": "eV/atom", "rmse_forces": "eV/Å"})
        return curve

    @staticmethod
    def _first_nan_iteration(metrics: TrainingMetrics) -> int:
        curve = metrics.learning_curve
        for iteration, loss in zip(curve.iteration, curve.loss, strict=True):
            if not math.isfinite(loss):
                return iteration
        return metrics.iterations
