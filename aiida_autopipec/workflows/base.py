"""``PacemakerBaseWorkChain``: run a :class:`PacemakerCalculation` and recover from the ways real Pacemaker fits fail.

Each handler acts on one exit code of the calculation (see ``tests/parsers/recorded`` for real runs that end so):

* out of memory (302): halve ``batch_size`` (the memory of a step scales with it);
* killed (301) or out of walltime (120): continue from the interim potential the run left behind, with ``maxiter``
  reduced by the iterations already done, so the fit ends where one uninterrupted run would have;
* loss NaN/inf (303): once, with a more robust optimiser (L-BFGS-B) and 100x the L2 regularisation, from the last
  interim potential if its coefficients are finite, else from scratch;
* potential not repulsive at short range (340): stop, since a CPU fit is deterministic and would give the same model;
* anything else: one plain retry (e.g. a node failure), then stop.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_autopipec.calculations.common import limit_label_length
from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.config import TrainingConfig

__all__ = ["PacemakerBaseWorkChain", "is_finite_potential"]

_DEFAULTS = TrainingConfig.model_fields
#: What a diverged fit is retried with: an optimiser with bounded line searches and a stronger L2 penalty.
STABLE_OPTIMIZER = "L-BFGS-B"
L2_FACTOR = 100.0
_NON_FINITE_TEXT = re.compile(r"^[+-]?\.?(nan|inf|infinity)$", re.IGNORECASE)
_CALC_EXIT_CODES = PacemakerCalculation.exit_codes


def _default(field: str) -> Any:
    return _DEFAULTS[field].default


def _summary(node: orm.ProcessNode) -> str:
    """First line of a node's exit message (the parser puts stderr tails after it)."""
    lines = (node.exit_message or "").strip().splitlines()
    return lines[0] if lines else "no message"


def is_finite_potential(bbasis_yaml: str) -> bool:
    """Whether every number in a B-basis ``.yaml`` is finite (a diverged fit may have written NaN coefficients).

    YAML spells them ``.nan``/``.inf`` (parsed as floats) but a plain ``nan`` is read as a string: both count.
    """
    try:
        content = yaml.safe_load(bbasis_yaml)
    except yaml.YAMLError:
        return False

    def finite(value: Any) -> bool:
        if isinstance(value, dict):
            return all(finite(item) for item in value.values())
        if isinstance(value, list):
            return all(finite(item) for item in value)
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, str):
            return not _NON_FINITE_TEXT.match(value.strip())
        return True

    return isinstance(content, dict) and "species" in content and finite(content["species"])


def _validate_max_iterations(value: orm.Int, _: Any) -> str | None:
    """At least one calculation must be allowed, or the work chain would end without running anything."""
    if value is not None and value.value < 1:
        return f"max_iterations: must be at least 1 (calculations to try), got {value.value}"
    return None


class PacemakerBaseWorkChain(BaseRestartWorkChain):
    """Fit an ACE potential with Pacemaker, restarting the fit when it is killed, runs out of memory or diverges."""

    _process_class = PacemakerCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        limit_label_length(spec)
        spec.expose_inputs(PacemakerCalculation, namespace="pacemaker")
        spec.inputs["max_iterations"].default = lambda: orm.Int(3)
        spec.inputs["max_iterations"].validator = _validate_max_iterations
        spec.expose_outputs(PacemakerCalculation, exclude=("interim_potential",))
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.exit_code(
            410,
            "ERROR_OUT_OF_MEMORY_AT_BATCH_SIZE_ONE",
            message="pacemaker ran out of memory with batch_size 1: nothing left to reduce, use a larger machine",
        )
        spec.exit_code(
            411,
            "ERROR_LOSS_DIVERGED_AGAIN",
            message=(
                "the loss became NaN/inf again with optimizer {optimizer} and l2_regularization {l2}: check the data "
                "for overlapping atoms or non-finite energies/forces"
            ),
        )
        spec.exit_code(
            412,
            "ERROR_UNSAFE_SHORT_RANGE",
            message=(
                "the fitted potential is not repulsive at short range; the fit is deterministic, so it is not "
                "repeated: adjust `zbl_cutoffs` or `baseline` ({details})"
            ),
        )
        spec.exit_code(
            420,
            "ERROR_UNRECOVERABLE_FAILURE",
            message="PacemakerCalculation failed again after a plain retry (exit status {exit_status}: {message})",
        )

    def setup(self) -> None:
        """Collect the calculation's inputs; ``parameters`` and ``settings`` become plain dicts the handlers edit."""
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(PacemakerCalculation, "pacemaker"))
        self.ctx.inputs.parameters = self.ctx.inputs.parameters.get_dict() if "parameters" in self.ctx.inputs else {}
        if "settings" in self.ctx.inputs:
            self.ctx.inputs.settings = self.ctx.inputs.settings.get_dict()
        self.ctx.maxiter = int(self.ctx.inputs.parameters.get("maxiter", _default("maxiter")))
        self.ctx.iterations_done = 0  # optimiser iterations of the fit so far, over continued runs
        self.ctx.plain_retries = 0
        self.ctx.divergence_handled = False

    # ------------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _iterations_of(node: orm.CalcJobNode) -> int:
        """Optimiser iterations a run got through (last row of its learning curve; 0 if it recorded none)."""
        if "learning_curve" not in node.outputs:
            return 0
        iterations = node.outputs.learning_curve.get_array("iteration")
        return int(iterations.max()) if len(iterations) else 0

    def _continue_from(self, interim: orm.SinglefileData, node: orm.CalcJobNode) -> str:
        """Set the inputs to continue ``node``'s fit from its interim potential; returns what was changed."""
        inputs, parameters = self.ctx.inputs, self.ctx.inputs.parameters
        changes = []
        initial = inputs.pop("initial_potential", None)
        if initial is not None:
            # A warm start took its reference energies and repulsion cutoffs from the initial potential; the restart
            # recomputes them from the parameters and data, so pin the values the interrupted run used.
            if initial.reference_energies and not isinstance(parameters.get("reference_energies"), dict):
                parameters["reference_energies"] = dict(initial.reference_energies)
                changes.append("reference_energies pinned to those of the initial potential")
            pair_cutoffs = (initial.short_range or {}).get("pair_cutoffs")
            if pair_cutoffs:
                parameters["zbl_cutoffs"] = {pair: [float(v) for v in value] for pair, value in pair_cutoffs.items()}
                changes.append("zbl_cutoffs pinned to those of the initial potential")
        overrides = (inputs.get("settings") or {}).get("pacemaker") or {}
        if "potential" in overrides:  # the basis now comes from the interim potential
            inputs.settings = {**inputs.settings, "pacemaker": {k: v for k, v in overrides.items() if k != "potential"}}
            changes.append("basis overrides in settings.pacemaker.potential dropped (the basis is in the restart)")
        inputs.restart_potential = interim
        done = self._iterations_of(node)
        self.ctx.iterations_done += done
        # Pacemaker counts maxiter from 0 again on a restart: ask only for what is left of the requested total.
        remaining = max(self.ctx.maxiter - self.ctx.iterations_done, 1)
        parameters["maxiter"] = remaining
        changes.insert(0, f"maxiter {remaining} ({self.ctx.iterations_done} of {self.ctx.maxiter} done)")
        return ", ".join(changes)

    def _start_over(self) -> None:
        """Set the inputs to fit from the beginning (from the user's initial potential, if one was given)."""
        self.ctx.inputs.pop("restart_potential", None)
        if "initial_potential" in self.inputs.pacemaker:
            self.ctx.inputs.initial_potential = self.inputs.pacemaker.initial_potential
        self.ctx.iterations_done = 0
        self.ctx.inputs.parameters["maxiter"] = self.ctx.maxiter

    def _retry_once(self, node: orm.CalcJobNode, why: str) -> ProcessHandlerReport:
        """Run the same inputs once more (transient failures: a lost node, a full disk); stop the second time."""
        if self.ctx.plain_retries >= 1:
            self.report(f"{self.ctx.process_name}<{node.pk}> {why}; it was already retried once: giving up")
            exit_code = self.exit_codes.ERROR_UNRECOVERABLE_FAILURE.format(
                exit_status=node.exit_status, message=_summary(node)
            )
            return ProcessHandlerReport(True, exit_code)
        self.ctx.plain_retries += 1
        self.report(f"{self.ctx.process_name}<{node.pk}> {why}; retrying once with the same inputs")
        return ProcessHandlerReport(True)

    # ----------------------------------------------------------------------------------------------- handlers

    @process_handler(priority=500, exit_codes=[_CALC_EXIT_CODES.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Out of memory: halve ``batch_size``, since the tensors of one step grow with the structures per batch."""
        parameters = self.ctx.inputs.parameters
        batch_size = int(parameters.get("batch_size", _default("batch_size")))
        if batch_size <= 1:
            self.report(f"{self.ctx.process_name}<{node.pk}> ran out of memory with batch_size 1: giving up")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_OUT_OF_MEMORY_AT_BATCH_SIZE_ONE)
        parameters["batch_size"] = max(batch_size // 2, 1)
        self.report(
            f"{self.ctx.process_name}<{node.pk}> ran out of memory: restarting with batch_size "
            f"{batch_size} -> {parameters['batch_size']}"
        )
        return ProcessHandlerReport(True)

    @process_handler(
        priority=400,
        exit_codes=[_CALC_EXIT_CODES.ERROR_PACEMAKER_KILLED, _CALC_EXIT_CODES.ERROR_SCHEDULER_OUT_OF_WALLTIME],
    )
    def handle_killed(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Killed or out of walltime: continue from the interim potential, which resumes at the same loss."""
        if "interim_potential" not in node.outputs:
            return self._retry_once(node, "was killed before its first iteration (no interim potential)")
        interim = node.outputs.interim_potential
        changes = self._continue_from(interim, node)
        self.report(
            f"{self.ctx.process_name}<{node.pk}> was killed ({_summary(node)}): continuing the fit from its "
            f"interim potential<{interim.pk}> with {changes}"
        )
        return ProcessHandlerReport(True)

    @process_handler(priority=300, exit_codes=[_CALC_EXIT_CODES.ERROR_LOSS_DIVERGED])
    def handle_loss_diverged(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Loss NaN/inf: once, switch to L-BFGS-B and 100x the L2 penalty, from the last finite interim potential."""
        parameters = self.ctx.inputs.parameters
        optimizer = parameters.get("optimizer", _default("optimizer"))
        l2 = float(parameters.get("l2_regularization", _default("l2_regularization")))
        if self.ctx.divergence_handled:
            self.report(
                f"{self.ctx.process_name}<{node.pk}>: the loss diverged again with optimizer {optimizer} and "
                f"l2_regularization {l2:g}: giving up"
            )
            exit_code = self.exit_codes.ERROR_LOSS_DIVERGED_AGAIN.format(optimizer=optimizer, l2=f"{l2:g}")
            return ProcessHandlerReport(True, exit_code)
        self.ctx.divergence_handled = True
        parameters["optimizer"] = STABLE_OPTIMIZER
        parameters["l2_regularization"] = l2 * L2_FACTOR if l2 > 0 else _default("l2_regularization") * L2_FACTOR
        settings = f"optimizer {optimizer} -> {STABLE_OPTIMIZER}, l2_regularization {l2:g} -> "
        settings += f"{parameters['l2_regularization']:g}"

        interim = node.outputs.interim_potential if "interim_potential" in node.outputs else None
        if interim is not None and is_finite_potential(interim.get_content()):
            changes = self._continue_from(interim, node)
            where = f"continuing from its last interim potential<{interim.pk}> (finite coefficients; {changes})"
        else:
            self._start_over()
            reason = "no interim potential" if interim is None else "the interim potential is not finite"
            where = f"starting the fit over ({reason})"
        fit_overrides = ((self.ctx.inputs.get("settings") or {}).get("pacemaker") or {}).get("fit") or {}
        if "optimizer" in fit_overrides or "L2_coeffs" in (fit_overrides.get("loss") or {}):
            settings += " (but settings.pacemaker.fit overrides the optimizer or L2_coeffs, which takes precedence)"
        self.report(
            f"{self.ctx.process_name}<{node.pk}>: the loss became NaN/inf ({_summary(node)}): {where}, {settings}"
        )
        return ProcessHandlerReport(True)

    @process_handler(priority=200, exit_codes=[_CALC_EXIT_CODES.ERROR_UNSAFE_SHORT_RANGE])
    def handle_unsafe_short_range(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Not repulsive at short range: stop; a repeated fit of the same data and settings gives the same model."""
        self.report(f"{self.ctx.process_name}<{node.pk}> delivered a potential that fails the dimer check: stopping")
        details = (node.exit_message or "").split(": ", 1)[-1]
        return ProcessHandlerReport(True, self.exit_codes.ERROR_UNSAFE_SHORT_RANGE.format(details=details))

    @process_handler(priority=0)
    def handle_other_failure(self, node: orm.CalcJobNode) -> ProcessHandlerReport | None:
        """Any other failure: one plain retry (it may have been the machine, not the fit), then stop."""
        if not node.is_failed:
            return None
        return self._retry_once(node, f"failed with exit status {node.exit_status} ({_summary(node)})")

    @classmethod
    def get_builder_from_protocol(cls, code, training_set, protocol: str | None = None, overrides=None, **kwargs):
        """Builder for ``protocol``: the calculation's protocol inputs under ``pacemaker`` plus the restart budget.

        ``overrides`` are deep-merged and validated (e.g. ``{"pacemaker": {"parameters": {"maxiter": 50}}}``);
        ``kwargs``: ``test_set``, ``options``. See :mod:`aiida_autopipec.protocols`.
        """
        from aiida_autopipec import protocols

        return protocols.build(cls, protocols.base_workchain_inputs(code, training_set, protocol, **kwargs), overrides)
