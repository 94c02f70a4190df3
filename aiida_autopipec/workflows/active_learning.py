"""``ActiveLearningWorkChain``: train, evaluate, select by extrapolation grade, label, merge, and train again.

One submitted workflow returns a potential that meets the accuracy target (or the best one it reached), with every
iteration's fit, selection, labelling and merged training set linked in provenance.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ToContext, WorkChain, append_, if_, while_
from aiida.plugins import CalculationFactory
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aiida_autopipec.calculations.ase_label import check_importable_here, validate_calculator
from aiida_autopipec.calculations.pacemaker import validate_inputs as validate_fit_inputs
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.workflows.base import PacemakerBaseWorkChain
from aiida_autopipec.workflows.functions import merge_new_structures, remove_candidates, split_held_out

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

    @model_validator(mode="after")
    def _check_trust_levels(self) -> ConvergenceConfig:
        if self.gamma_lower >= self.gamma_upper:
            raise ValueError(f"gamma_lower ({self.gamma_lower}) must be below gamma_upper ({self.gamma_upper})")
        return self


def validate_inputs(inputs: dict, _: Any) -> str | None:
    """Reject bad convergence settings and unusable data before anything is stored."""
    try:
        ConvergenceConfig(**(inputs["convergence"].get_dict() if "convergence" in inputs else {}))
    except ValidationError as exc:
        return "convergence: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if not inputs["training_set"].labelled:
        return "training_set: is unlabelled; label it first (autopipec.ase_label)"
    if "candidates" in inputs and not inputs["candidates"].base.attributes.get("num_structures", 0):
        return "candidates: the pool is empty"
    # The first fit's checks, now rather than after the workflow has started (the held-out set stands in if absent).
    fit = {key: inputs[key] for key in ("training_set", "test_set", "parameters") if key in inputs}
    fit.setdefault("test_set", inputs["training_set"])
    problem = validate_fit_inputs(fit, None)
    if problem:
        return problem
    if "candidates" in inputs:
        for port in ("selection.code", "labeling.code", "labeling.calculator"):
            namespace, name = port.split(".")
            if inputs.get(namespace, {}).get(name) is None:
                return f"{port}: needed to select and label candidates"
        parameters = inputs["parameters"].get_dict() if "parameters" in inputs else {}
        data_elements = set(fit["training_set"].elements) | set(fit["test_set"].elements)
        covered = parameters.get("elements") or sorted(data_elements)
        foreign = sorted(set(inputs["candidates"].elements) - set(covered))
        if foreign:
            return f"candidates: contain element(s) {foreign} that the potential will not cover ({covered})"
        calculator = inputs["labeling"]["calculator"].get_dict()
        problem = validate_calculator(calculator) or check_importable_here(
            calculator["import_path"], inputs["labeling"]["code"]
        )
        if problem:
            return f"labeling.{problem}"
    return None


class ActiveLearningWorkChain(WorkChain):
    """Grow the training set with the candidates the current potential extrapolates on most, until converged."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
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
            "gamma_lower, gamma_upper, test_fraction, seed.",
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
        self.ctx.iteration = 0
        self.ctx.history = []
        self.ctx.converged = False
        self.ctx.stop = None  # exit code that ends the loop
        self.ctx.best = None  # (test force RMSE, workchain node) of the best fit so far

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
            }
        )
        if self.ctx.converged:
            self.report(self._line("converged"))
        elif self.ctx.iteration >= self.ctx.convergence.max_iterations:
            self.report(self._line("last iteration"))
        return None

    def should_grow(self) -> bool:
        if self.ctx.converged or self.ctx.iteration >= self.ctx.convergence.max_iterations:
            return False
        if self.ctx.pool is None:
            self.ctx.stop = self.exit_codes.ERROR_CANDIDATES_EXHAUSTED.format(why="no candidates were given")
            self.report(self._line("no candidates left"))
            return False
        return True

    def select(self):
        convergence = self.ctx.convergence
        inputs = {
            "code": self.inputs.selection.code,
            "potential": self.ctx.fits[-1].outputs.potential,
            "training_set": self.ctx.training_set,
            "candidates": self.ctx.pool,
            "parameters": orm.Dict(
                {
                    "max_new_structures": convergence.max_new_structures,
                    "gamma_lower": convergence.gamma_lower,
                    "gamma_upper": convergence.gamma_upper,
                }
            ),
            "metadata": {"options": dict(self.inputs.selection.get("options", {}))},
        }
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
        inputs = {
            "code": self.inputs.labeling.code,
            "structures": self.ctx.selection.outputs.selected,
            "calculator": self.inputs.labeling.calculator,
            "metadata": {"options": dict(self.inputs.labeling.get("options", {}))},
        }
        return ToContext(labelling=self.submit(CalculationFactory("autopipec.ase_label"), **inputs))

    def inspect_labelling(self):
        node = self.ctx.labelling
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_LABELLING_FAILED.format(
                iteration=self.ctx.iteration, message=f"{node.process_label}<{node.pk}> [{node.exit_status}]"
            )
        self.ctx.history[-1]["labelling_failures"] = len(node.outputs.failures.get_dict().get("failures", []))
        return None

    def merge(self) -> None:
        merged = merge_new_structures(self.ctx.training_set, self.ctx.labelling.outputs.labelled)
        self.ctx.training_set = merged["training_set"]
        remaining = remove_candidates(self.ctx.pool, self.ctx.selection.outputs.selected_indices)
        self.ctx.pool = remaining.get("candidates")
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
        text += f"(target {self.ctx.convergence.rmse_forces}), {outcome}"
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
)
