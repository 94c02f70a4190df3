"""``ActiveLearningWorkChain``: train, evaluate, select by extrapolation grade, label, merge, and train again.

One submitted workflow returns a potential that meets the accuracy target (or the best one it reached), with every
iteration's fit, selection, labelling and merged training set linked in provenance.
"""

from __future__ import annotations

from typing import Any, Literal

from aiida import orm
from aiida.engine import ToContext, WorkChain, append_, if_, while_
from aiida.plugins import CalculationFactory
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aiida_autopipec.calculations.ase_label import check_importable_here, validate_calculator
from aiida_autopipec.calculations.common import limit_label_length
from aiida_autopipec.calculations.pacemaker import system_config_from_inputs
from aiida_autopipec.calculations.pacemaker import validate_inputs as validate_fit_inputs
from aiida_autopipec.config import describe_validation_error
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning.config_gen import ConfigError, PacemakerConfigGenerator
from aiida_autopipec.learning.potential import potential_info
from aiida_autopipec.learning.select_structures import active_set_shortfall
from aiida_autopipec.workflows.base import PacemakerBaseWorkChain
from aiida_autopipec.workflows.functions import held_out_indices, merge_new_structures, split_held_out
from aiida_autopipec.workflows.labeling import (
    FAILURES_OUTPUT,
    LABELLED_OUTPUT,
    STRUCTURES_INPUT,
    check_labeling_workflow,
    load_labeling_workflow,
)

__all__ = ["ActiveLearningWorkChain", "ConvergenceConfig"]


class ConvergenceConfig(BaseModel):
    """When to stop, how much to add per iteration, and which candidates are worth labelling."""

    model_config = ConfigDict(extra="forbid")

    rmse_forces: float = Field(0.05, gt=0, description="target force RMSE on the held-out set, eV/Å")
    rmse_energy: float | None = Field(None, gt=0, description="optional energy RMSE target, eV/atom")
    max_iterations: int = Field(5, ge=1, description="fits at most (the first one included)")
    max_new_structures: int = Field(10, gt=0, description="structures labelled per iteration at most")
    gamma_lower: float = Field(1.5, gt=0, description="candidates below this extrapolation grade are not selected")
    gamma_upper: float = Field(25.0, gt=0, description="candidates above it are treated as unphysical and skipped")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share carved from the data without test_set")
    seed: int = Field(42, ge=0, description="seed of that split")
    selection: Literal["max_gamma", "d_optimal"] = Field(
        "max_gamma",
        description="among the candidates in the trust window: highest γ first, or a D-optimal set (pace_select)",
    )
    forgetting_tolerance: float = Field(
        0.1,
        ge=0,
        description="relative rise of the force RMSE on the original data, from one fit to the next, that triggers "
        "the forgetting guard (0.1: more than 10 %)",
    )
    forgetting_weight_factor: float = Field(
        2.0, gt=1, description="the guard multiplies the weight of the original data in the next fit by this"
    )
    max_original_weight: float = Field(
        16.0, ge=1, description="cap of that weight, relative to 1 for the data the loop added"
    )

    @model_validator(mode="after")
    def _check_trust_levels(self) -> ConvergenceConfig:
        if self.gamma_lower >= self.gamma_upper:
            raise ValueError(f"gamma_lower ({self.gamma_lower}) must be below gamma_upper ({self.gamma_upper})")
        return self


def validate_inputs(inputs: dict, _: Any) -> str | None:
    """Reject bad convergence settings and unusable data before anything is stored."""
    try:
        convergence = ConvergenceConfig(**(inputs["convergence"].get_dict() if "convergence" in inputs else {}))
    except ValidationError as exc:
        return f"convergence: {describe_validation_error(exc)}"
    if not inputs["training_set"].labelled:
        return "training_set: is unlabelled; label it first (autopipec.ase_label)"
    if "candidates" in inputs and not inputs["candidates"].base.attributes.get("num_structures", 0):
        return "candidates: the pool is empty"
    # The first fit's checks, now rather than after the workflow has started (the held-out set stands in if absent).
    fit = {key: inputs[key] for key in ("training_set", "test_set", "parameters") if key in inputs}
    fit.setdefault("test_set", inputs["training_set"])
    problem = validate_fit_inputs(fit, None) or check_held_out_split(inputs, convergence)
    if problem:
        return problem
    if "candidates" in inputs:
        problem = validate_selection_and_labeling(inputs)
        if problem:
            return problem
        if inputs["training_set"].energies_corrected:
            return (
                "training_set: its energies are already corrected (reference energies subtracted, e.g. Pacemaker's "
                "energy_corrected), while the labels of new structures are total energies: the two cannot be merged. "
                "Import the data with total energies (an `energy` column) for active learning"
            )
        parameters = inputs["parameters"].get_dict() if "parameters" in inputs else {}
        data_elements = set(fit["training_set"].elements) | set(fit["test_set"].elements)
        covered = parameters.get("elements") or sorted(data_elements)
        foreign = sorted(set(inputs["candidates"].elements) - set(covered))
        if foreign:
            return f"candidates: contain element(s) {foreign} that the potential will not cover ({covered})"
        problem = check_active_set_size(inputs, convergence)
        if problem:
            return problem
        if "workflow" not in inputs["labeling"]:  # the ASE labeller (a labelling workflow checks its own inputs)
            calculator = inputs["labeling"]["calculator"].get_dict()
            problem = validate_calculator(calculator) or check_importable_here(
                calculator["import_path"], inputs["labeling"]["code"]
            )
            if problem:
                return f"labeling.{problem}"
    return None


def check_held_out_split(inputs: dict, convergence: ConvergenceConfig) -> str | None:
    """Without a test_set the loop holds out part of the data: the part it trains on must keep every element."""
    if "test_set" in inputs:
        return None
    training = inputs["training_set"].get_arrays()
    _, rest = held_out_indices(training.num_structures, convergence.test_fraction, convergence.seed)
    lost = sorted(set(training.elements) - set(training.take(rest).elements))
    if lost:
        return (
            f"training_set: holding out {convergence.test_fraction:g} of it (seed {convergence.seed}) leaves no atoms "
            f"of {lost} to train on; give a test_set, more structures with them, or another convergence.seed"
        )
    return None


def check_active_set_size(inputs: dict, convergence: ConvergenceConfig) -> str | None:
    """γ selection builds an active set per element from the first fit's training structures: they need at least as
    many atoms of each element as the potential will have functions per element."""
    parameters = inputs["parameters"].get_dict() if "parameters" in inputs else {}
    training = inputs["training_set"].get_arrays()
    if "test_set" not in inputs:  # the part the first fit trains on
        _, rest = held_out_indices(training.num_structures, convergence.test_fraction, convergence.seed)
        training = training.take(rest)
    config = system_config_from_inputs(parameters, inputs["training_set"], inputs.get("test_set"))
    try:
        functions = PacemakerConfigGenerator(config).functions_per_element(training.num_structures, training.num_atoms)
    except ConfigError:  # reported by the fit's own checks
        return None
    problem = active_set_shortfall(training.atoms_per_element(), dict.fromkeys(config.elements, functions))
    return f"training_set: {problem}" if problem else None


def validate_selection_and_labeling(inputs: dict) -> str | None:
    """A selection code, and either the ASE labeller (code + calculator) or a labelling workflow that fits the
    contract of :mod:`aiida_autopipec.workflows.labeling`."""
    if inputs.get("selection", {}).get("code") is None:
        return "selection.code: needed to select candidates"
    labeling = inputs.get("labeling", {})
    if "workflow" not in labeling:
        for name in ("code", "calculator"):
            if labeling.get(name) is None:
                return f"labeling.{name}: needed to label candidates (or give labeling.workflow)"
        return None
    if labeling.get("code") is not None or labeling.get("calculator") is not None:
        return "labeling: give either labeling.workflow or the ASE labeller's code and calculator, not both"
    try:
        process_class = load_labeling_workflow(labeling["workflow"].value)
    except ValueError as exc:
        return f"labeling.workflow: {exc}"
    problem = check_labeling_workflow(process_class, labeling.get("workflow_inputs", {}))
    return f"labeling.workflow: {problem}" if problem else None


class ActiveLearningWorkChain(WorkChain):
    """Grow the training set with the candidates the current potential extrapolates on most, until converged."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        limit_label_length(spec)
        spec.input("training_set", valid_type=TrainingSetData, help="Initial labelled structures.")
        spec.input(
            "test_set",
            valid_type=TrainingSetData,
            required=False,
            help="Fixed held-out set; without it `test_fraction` of the data is carved out once, deterministically.",
        )
        spec.input(
            "candidates",
            valid_type=TrainingSetData,
            required=False,
            help="Pool of structures to select from; any labels they carry are ignored.",
        )
        spec.input("parameters", valid_type=orm.Dict, default=lambda: orm.Dict({}), help="TrainingConfig fields.")
        spec.input(
            "convergence",
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            help="ConvergenceConfig: rmse_forces (eV/Å), rmse_energy (eV/atom), max_iterations, max_new_structures, "
            "gamma_lower, gamma_upper, test_fraction, seed, selection ('max_gamma' | 'd_optimal'), "
            "forgetting_tolerance, forgetting_weight_factor, max_original_weight.",
        )
        for namespace, what in (
            ("pacemaker", "the `pacemaker` code"),
            ("selection", "a Python with pyace (next to pacemaker) computing extrapolation grades"),
            ("labeling", "a Python with ASE and the labelling calculator"),
        ):
            spec.input_namespace(namespace, help=f"Where {what} runs.")
            spec.input(
                f"{namespace}.code",
                valid_type=orm.AbstractCode,
                required=namespace == "pacemaker",
                help=f"Code of {what}" + ("." if namespace == "pacemaker" else " (needed with candidates)."),
            )
            spec.input(f"{namespace}.options", valid_type=dict, non_db=True, required=False, help="metadata.options")
        spec.input(
            "labeling.calculator",
            valid_type=orm.Dict,
            required=False,
            help='{"import_path": "ase.calculators.emt.EMT", "kwargs": {}}',
        )
        spec.input(
            "labeling.workflow",
            valid_type=orm.Str,
            required=False,
            help="Instead of the ASE labeller: an aiida.workflows entry point (e.g. 'autopipec.label.ase') that takes "
            "`structures` and returns a labelled `training_set` (see aiida_autopipec.workflows.labeling).",
        )
        spec.input_namespace(
            "labeling.workflow_inputs",
            dynamic=True,
            required=False,
            help="Inputs of labeling.workflow other than `structures`, passed on unchanged.",
        )
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.should_train)(
                cls.train,
                cls.inspect_training,
                if_(cls.should_grow)(
                    cls.select,
                    cls.inspect_selection,
                    if_(cls.has_selection)(
                        cls.label,
                        cls.inspect_labelling,
                        cls.merge,
                    ),
                ),
            ),
            cls.results,
        )
        spec.output("potential", valid_type=PotentialData, help="The converged potential, or the best one reached.")
        spec.output("metrics", valid_type=orm.Dict, help="Metrics of that potential.")
        spec.output("training_set", valid_type=TrainingSetData, help="The final merged training set.")
        spec.output("history", valid_type=orm.List, help="Per iteration: structures, errors, selection, wall time.")
        spec.exit_code(
            501,
            "ERROR_NOT_CONVERGED",
            message="not converged within {iterations} iterations; best "
            "test force RMSE {rmse:.4f} eV/Å (target {target} eV/Å); the best potential is attached",
        )
        spec.exit_code(502, "ERROR_CANDIDATES_EXHAUSTED", message="not converged and no candidate left to add: {why}")
        spec.exit_code(503, "ERROR_TRAINING_FAILED", message="training failed in iteration {iteration}: {message}")
        spec.exit_code(504, "ERROR_SELECTION_FAILED", message="selection failed in iteration {iteration}: {message}")
        spec.exit_code(505, "ERROR_LABELLING_FAILED", message="labelling failed in iteration {iteration}: {message}")

    # --------------------------------------------------------------------------------------------------- steps
    def setup(self) -> None:
        self.ctx.convergence = ConvergenceConfig(**self.inputs.convergence.get_dict())
        if "test_set" in self.inputs:
            self.ctx.training_set, self.ctx.test_set = self.inputs.training_set, self.inputs.test_set
        else:
            split = split_held_out(
                self.inputs.training_set,
                orm.Float(self.ctx.convergence.test_fraction),
                orm.Int(self.ctx.convergence.seed),
            )
            self.ctx.training_set, self.ctx.test_set = split["training_set"], split["test_set"]
        self.ctx.pool = self.inputs.candidates if "candidates" in self.inputs else None  # labels are ignored
        self.ctx.used = []  # indices of the pool already selected: the pool is stored once, never re-stored
        self.ctx.iteration = 0
        self.ctx.history = []
        self.ctx.converged = False
        self.ctx.stop = None  # exit code that ends the loop
        self.ctx.best = None  # (test force RMSE, workchain node) of the best fit so far
        self.ctx.num_original = self.ctx.training_set.num_structures  # merges append: these stay first
        self.ctx.original_weight = 1.0  # raised by the forgetting guard

    def should_train(self) -> bool:
        return (
            not self.ctx.converged
            and self.ctx.stop is None
            and self.ctx.iteration < self.ctx.convergence.max_iterations
        )

    def train(self):
        self.ctx.iteration += 1
        convergence = self.ctx.convergence
        parameters = {
            **self.inputs.parameters.get_dict(),
            "rmse_forces_threshold": convergence.rmse_forces,
            "rmse_energy_threshold": convergence.rmse_energy,
        }
        pacemaker = {
            "code": self.inputs.pacemaker.code,
            "training_set": self.ctx.training_set,
            "test_set": self.ctx.test_set,
            "parameters": orm.Dict(parameters),
            "metadata": {"options": dict(self.inputs.pacemaker.get("options", {}))},
        }
        if self.ctx.iteration > 1:  # warm start from the previous potential: same basis, more data
            pacemaker["initial_potential"] = self.ctx.fits[-1].outputs.potential
        # The forgetting guard watches the errors on the original data and weighs them up when they rise.
        pacemaker["evaluation_subsets"] = orm.Dict({"original": list(range(self.ctx.num_original))})
        if self.ctx.original_weight != 1.0:
            added = self.ctx.training_set.num_structures - self.ctx.num_original
            pacemaker["structure_weights"] = orm.List(
                [self.ctx.original_weight] * self.ctx.num_original + [1.0] * added
            )
        future = self.submit(PacemakerBaseWorkChain, pacemaker=pacemaker)
        return ToContext(fits=append_(future))

    def inspect_training(self):
        node = self.ctx.fits[-1]
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(
                iteration=self.ctx.iteration, message=f"{node.process_label}<{node.pk}> [{node.exit_status}]"
            )
        metrics = node.outputs.metrics.get_dict()
        self.ctx.converged = bool(metrics["is_converged"])
        if self.ctx.best is None or metrics["rmse_forces"] < self.ctx.best[0]:
            self.ctx.best = (metrics["rmse_forces"], node.pk)
        self.ctx.history.append(
            {
                "iteration": self.ctx.iteration,
                "num_structures": self.ctx.training_set.num_structures,
                "train": metrics["train"],
                "test": metrics["test"],
                "is_converged": self.ctx.converged,
                "fit": node.uuid,
                "fit_wall_time_s": (node.mtime - node.ctime).total_seconds(),
                "original": metrics.get("subsets", {}).get("original"),
                "original_weight": self.ctx.original_weight,
            }
        )
        if self.ctx.converged:
            self.report(self._line("converged"))
        elif self.ctx.iteration >= self.ctx.convergence.max_iterations:
            self.report(self._line("last iteration"))
        else:
            self._guard_against_forgetting()
        return None

    def _guard_against_forgetting(self) -> None:
        """Raise the weight of the original data in the next fit when its force RMSE rose by more than the
        tolerance since the previous fit: new data must not make the model forget what it had learnt."""
        if len(self.ctx.history) < 2:
            return
        previous, current = self.ctx.history[-2].get("original"), self.ctx.history[-1].get("original")
        if not previous or not current:
            return
        convergence = self.ctx.convergence
        before, now = previous["rmse_forces"], current["rmse_forces"]
        if now <= before * (1 + convergence.forgetting_tolerance):
            return
        weight = self.ctx.original_weight
        raised = min(weight * convergence.forgetting_weight_factor, convergence.max_original_weight)
        what = (
            f"iter {self.ctx.iteration}: forgetting guard: force RMSE on the {self.ctx.num_original} original "
            f"structures rose from {before:.4f} to {now:.4f} eV/Å (more than {convergence.forgetting_tolerance:.0%})"
        )
        if raised > weight:
            self.report(f"{what}; their weight in the next fit: {weight:g} -> {raised:g}")
        else:
            self.report(f"{what}; their weight stays at its cap {weight:g} (max_original_weight)")
        self.ctx.history[-1]["forgetting_guard"] = {"rmse_forces_before": before, "weight_next": raised}
        self.ctx.original_weight = raised

    def should_grow(self) -> bool:
        if self.ctx.converged or self.ctx.iteration >= self.ctx.convergence.max_iterations:
            return False
        if self.ctx.pool is None:
            self.ctx.stop = self.exit_codes.ERROR_CANDIDATES_EXHAUSTED.format(why="no candidates were given")
            self.report(self._line("no candidates given"))
            return False
        if len(self.ctx.used) >= self.ctx.pool.num_structures:
            why = f"all {self.ctx.pool.num_structures} candidates have been selected in earlier iterations"
            self.ctx.stop = self.exit_codes.ERROR_CANDIDATES_EXHAUSTED.format(why=why)
            self.report(self._line("no candidates left"))
            return False
        return True

    def select(self):
        convergence = self.ctx.convergence
        potential = self.ctx.fits[-1].outputs.potential
        functions = potential_info(potential.get_yaml())["functions_per_element"]
        problem = active_set_shortfall(self.ctx.training_set.get_arrays().atoms_per_element(), functions)
        if problem:  # checked up front for the first fit; a basis given otherwise could still be too large
            return self.exit_codes.ERROR_SELECTION_FAILED.format(iteration=self.ctx.iteration, message=problem)
        inputs = {
            "code": self.inputs.selection.code,
            "potential": potential,
            "training_set": self.ctx.training_set,
            "candidates": self.ctx.pool,
            "parameters": orm.Dict(
                {
                    "max_new_structures": convergence.max_new_structures,
                    "gamma_lower": convergence.gamma_lower,
                    "gamma_upper": convergence.gamma_upper,
                    "method": convergence.selection,
                }
            ),
            "metadata": {"options": dict(self.inputs.selection.get("options", {}))},
        }
        if self.ctx.used:
            inputs["exclude"] = orm.List(sorted(self.ctx.used))
        return ToContext(selection=self.submit(CalculationFactory("autopipec.select"), **inputs))

    def inspect_selection(self):
        node = self.ctx.selection
        selection = CalculationFactory("autopipec.select")
        nothing = {selection.exit_codes[label].status for label in _NOTHING_SELECTABLE}
        if node.exit_status in nothing:
            self.ctx.stop = self.exit_codes.ERROR_CANDIDATES_EXHAUSTED.format(why=node.exit_message)
            self.report(self._line(f"nothing to select ({node.exit_message})"))
            return None
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_SELECTION_FAILED.format(
                iteration=self.ctx.iteration, message=f"{node.process_label}<{node.pk}> [{node.exit_status}]"
            )
        self.ctx.history[-1]["selection"] = node.outputs.statistics.get_dict()
        return None

    def has_selection(self) -> bool:
        return self.ctx.stop is None

    def label(self):
        labeling = self.inputs.labeling
        if "workflow" in labeling:  # another AiiDA workflow, through the labelling contract
            inputs = {**labeling.get("workflow_inputs", {}), STRUCTURES_INPUT: self.ctx.selection.outputs.selected}
            return ToContext(labelling=self.submit(load_labeling_workflow(labeling.workflow.value), **inputs))
        inputs = {
            "code": labeling.code,
            "structures": self.ctx.selection.outputs.selected,
            "calculator": labeling.calculator,
            "metadata": {"options": dict(labeling.get("options", {}))},
        }
        return ToContext(labelling=self.submit(CalculationFactory("autopipec.ase_label"), **inputs))

    def inspect_labelling(self):
        node = self.ctx.labelling
        output = LABELLED_OUTPUT if "workflow" in self.inputs.labeling else "labelled"
        if not node.is_finished_ok or output not in node.outputs:
            return self.exit_codes.ERROR_LABELLING_FAILED.format(
                iteration=self.ctx.iteration,
                message=f"{node.process_label}<{node.pk}> [{node.exit_status}] {node.exit_message or ''}".strip(),
            )
        self.ctx.labelled = node.outputs[output]
        failures = node.outputs[FAILURES_OUTPUT].get_dict() if FAILURES_OUTPUT in node.outputs else {}
        self.ctx.history[-1]["labelling_failures"] = len(failures.get("failures", []))
        if failures.get("failures"):  # left out, not fatal: the others are merged
            first = failures["failures"][0]
            self.report(
                f"iter {self.ctx.iteration}: {len(failures['failures'])} selected structure(s) could not be labelled "
                f"and are left out (see {node.process_label}<{node.pk}> outputs.{FAILURES_OUTPUT}); first: "
                f"{first.get('error', '?')}"
            )
        return None

    def merge(self) -> None:
        merged = merge_new_structures(self.ctx.training_set, self.ctx.labelled)
        self.ctx.training_set = merged["training_set"]
        self.ctx.used += self.ctx.selection.outputs.selected_indices.get_list()
        entry = self.ctx.history[-1]
        entry["added"] = merged["added"].value
        self.report(self._line(f"selected {len(self.ctx.selection.outputs.selected_indices)}, added {entry['added']}"))

    def results(self):
        best = orm.load_node(self.ctx.best[1]) if self.ctx.best else None
        chosen = self.ctx.fits[-1] if self.ctx.converged else best
        if chosen is not None:
            self.out("potential", chosen.outputs.potential)
            self.out("metrics", chosen.outputs.metrics)
        self.out("training_set", self.ctx.training_set)
        self.out("history", orm.List(self.ctx.history).store())
        if self.ctx.converged:
            return None
        if self.ctx.stop is not None:
            return self.ctx.stop
        return self.exit_codes.ERROR_NOT_CONVERGED.format(
            iterations=self.ctx.iteration, rmse=self.ctx.best[0], target=self.ctx.convergence.rmse_forces
        )

    # ------------------------------------------------------------------------------------------------- helpers
    def _line(self, outcome: str) -> str:
        """``iter 3: 84 structures, test F-RMSE 0.071 eV/Å (target 0.05), <outcome>``."""
        entry = self.ctx.history[-1]
        rmse = (entry["test"] or entry["train"])["rmse_forces"]
        gamma = entry.get("selection", {}).get("max_gamma")
        text = f"iter {entry['iteration']}: {entry['num_structures']} structures, test F-RMSE {rmse:.4f} eV/Å "
        text += f"(target {self.ctx.convergence.rmse_forces}), "
        if entry.get("original") and self.ctx.num_original < entry["num_structures"]:
            text += f"original-data F-RMSE {entry['original']['rmse_forces']:.4f} eV/Å, "
        text += outcome
        return text + (f" (γ max {gamma:.1f})" if gamma is not None else "")

    @classmethod
    def get_builder_from_protocol(cls, code, training_set, protocol: str | None = None, overrides=None, **kwargs):
        """Builder for ``protocol``: fit settings from the matching Pacemaker protocol, convergence from this one.

        ``code`` runs pacemaker; ``kwargs``: ``test_set``, ``candidates``, ``selection_code``, ``labeling_code``,
        ``calculator`` (import path or ``{"import_path", "kwargs"}``), ``options``. ``overrides`` are deep-merged
        and validated. See :mod:`aiida_autopipec.protocols`.
        """
        from aiida_autopipec import protocols

        return protocols.build(cls, protocols.active_learning_inputs(code, training_set, protocol, **kwargs), overrides)


#: Exit codes of the selection that mean "nothing worth labelling" rather than a failure.
_NOTHING_SELECTABLE = (
    "ERROR_NO_EXTRAPOLATIVE_CANDIDATE",
    "ERROR_ALL_CANDIDATES_ABOVE_UPPER",
    "ERROR_NO_CANDIDATE_IN_WINDOW",
    "ERROR_NOTHING_D_OPTIMAL",
)
