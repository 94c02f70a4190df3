"""Labelling by another AiiDA workflow: the contract the active-learning loop relies on, and a reference adapter.

``ActiveLearningWorkChain`` labels the selected structures either with the built-in ASE labeller
(``labeling.code`` + ``labeling.calculator``) or with any workflow named by ``labeling.workflow`` (an
``aiida.workflows`` entry point). Such a labelling workflow must

* take the structures to label as an input ``structures`` (:class:`TrainingSetData`, unlabelled) next to its own
  inputs, which the loop passes on unchanged from ``labeling.workflow_inputs``;
* return the structures it could label as an output ``training_set`` (:class:`TrainingSetData`, labelled: energies
  in eV, forces in eV/Å), and may return ``failures`` (``Dict`` with a list ``failures`` of ``{index, error}``) for
  those it left out; it fails (non-zero exit status) only when nothing could be labelled.

:class:`AseLabelWorkChain` is the smallest such adapter: it wraps ``AseLabelCalculation``. A DFT adapter (e.g. one
``PwBaseWorkChain`` per structure, then ``TrainingSetData.from_structures``) is sketched in docs/active_learning.md.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.exceptions import EntryPointError
from aiida.engine import Process, ToContext, WorkChain
from aiida.plugins import CalculationFactory, WorkflowFactory

from aiida_autopipec.data import TrainingSetData

__all__ = ["AseLabelWorkChain", "check_labeling_workflow", "load_labeling_workflow"]

#: Input and output names of the labelling contract.
STRUCTURES_INPUT = "structures"
LABELLED_OUTPUT = "training_set"
FAILURES_OUTPUT = "failures"


def _accepts(port, value_type: type) -> bool:
    valid_type = port.valid_type
    if valid_type is None:
        return True
    types = valid_type if isinstance(valid_type, tuple) else (valid_type,)
    return any(issubclass(value_type, candidate) for candidate in types)


def check_labeling_workflow(process_class: type[Process], inputs: dict[str, Any] | None = None) -> str | None:
    """Why ``process_class`` cannot label for the active-learning loop with ``inputs``, or None when it can."""
    spec = process_class.spec()
    name = process_class.__name__
    if STRUCTURES_INPUT not in spec.inputs or not _accepts(spec.inputs[STRUCTURES_INPUT], TrainingSetData):
        return f"{name} has no input `{STRUCTURES_INPUT}` that accepts a TrainingSetData"
    if LABELLED_OUTPUT not in spec.outputs or not _accepts(spec.outputs[LABELLED_OUTPUT], TrainingSetData):
        return f"{name} has no output `{LABELLED_OUTPUT}` (a labelled TrainingSetData)"
    inputs = dict(inputs or {})
    if STRUCTURES_INPUT in inputs:
        return f"`{STRUCTURES_INPUT}` is set by the loop (the selected structures); leave it out of workflow_inputs"
    if not spec.inputs.dynamic:
        unknown = sorted(set(inputs) - set(spec.inputs))
        if unknown:
            return f"{name} has no input(s) {unknown}; it takes {sorted(set(spec.inputs) - {'metadata'})}"
    missing = sorted(
        key
        for key, port in spec.inputs.items()
        if port.required and key not in inputs and key not in (STRUCTURES_INPUT, "metadata")
    )
    if missing:
        return f"{name} needs input(s) {missing}"
    return None


def load_labeling_workflow(entry_point: str) -> type[Process]:
    """The process class of an ``aiida.workflows`` entry point; ValueError naming the problem if there is none."""
    try:
        return WorkflowFactory(entry_point)
    except EntryPointError as exc:
        raise ValueError(f"no aiida.workflows entry point '{entry_point}' ({exc})") from exc


class AseLabelWorkChain(WorkChain):
    """Reference labelling adapter: label ``structures`` with an ASE calculator (``AseLabelCalculation``)."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(STRUCTURES_INPUT, valid_type=TrainingSetData, help="Structures to label (labels are ignored).")
        spec.input("code", valid_type=orm.AbstractCode, help="A Python with ASE and the calculator.")
        spec.input(
            "calculator",
            valid_type=orm.Dict,
            help='The ASE calculator: {"import_path": "ase.calculators.emt.EMT", "kwargs": {}}.',
        )
        spec.input(
            "options",
            valid_type=orm.Dict,
            required=False,
            help="metadata.options of the labelling calculation (resources, walltime, ...).",
        )
        spec.outline(cls.label, cls.results)
        spec.output(LABELLED_OUTPUT, valid_type=TrainingSetData, help="The labelled structures (eV, eV/Å).")
        spec.output(FAILURES_OUTPUT, valid_type=orm.Dict, required=False, help="Structures left out, and why.")
        spec.exit_code(
            400,
            "ERROR_LABELLING_FAILED",
            message="the labelling calculation failed: {process} [{exit_status}] {message}",
        )

    def label(self):
        inputs = {
            "code": self.inputs.code,
            "structures": self.inputs.structures,
            "calculator": self.inputs.calculator,
            "metadata": {"options": self.inputs.options.get_dict() if "options" in self.inputs else {}},
        }
        return ToContext(calculation=self.submit(CalculationFactory("autopipec.ase_label"), **inputs))

    def results(self):
        node = self.ctx.calculation
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_LABELLING_FAILED.format(
                process=f"{node.process_label}<{node.pk}>", exit_status=node.exit_status, message=node.exit_message
            )
        self.out(LABELLED_OUTPUT, node.outputs.labelled)
        if FAILURES_OUTPUT in node.outputs:
            self.out(FAILURES_OUTPUT, node.outputs.failures)
        return None
