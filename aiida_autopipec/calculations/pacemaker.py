"""``PacemakerCalculation``: fit an ACE potential with the real ``pacemaker`` on any AiiDA computer."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob
from pydantic import ValidationError

from aiida_autopipec.calculations.common import serial_job_defaults
from aiida_autopipec.calculations.gpus import add_gpu_option, gpu_scheduler_commands, validate_gpu_request
from aiida_autopipec.config import SystemConfig, describe_validation_error
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import ConfigError, PacemakerConfigGenerator
from aiida_autopipec.learning.dataset import DatasetError
from aiida_autopipec.learning.pacemaker import post_fit_script, prepare_fit
from aiida_autopipec.learning.potential import PotentialFileError, potential_info

__all__ = ["PacemakerCalculation", "system_config_from_inputs"]

#: Keys accepted in the ``settings`` input.
SETTINGS_KEYS = {
    "pacemaker": "expert overrides deep-merged into Pacemaker's input.yaml (checked against its schema)",
    "retrieve_predictions": "let Pacemaker predict the training and test sets after the fit (by default it does "
    "not: the evaluation of the delivered model gives its errors) and retrieve its prediction pickles (several MB)",
    "yaml2yace_executable": "run this pace_yaml2yace for the .yace conversion (default: the evaluation's Python "
    "converts with pyace, as pace_yaml2yace does)",
    "python_executable": "Python with pyace on the computer, runs the evaluation (default: next to pacemaker)",
}


def system_config_from_inputs(parameters: dict, training_set: TrainingSetData, test_set=None) -> SystemConfig:
    """The SystemConfig of a calculation: ``parameters`` (TrainingConfig fields, optional ``elements``).

    Without ``elements`` the potential covers the elements present in the training (and test) data.
    """
    parameters = dict(parameters)
    elements = parameters.pop("elements", None)
    if elements is None:
        elements = sorted(set(training_set.elements) | set(test_set.elements if test_set is not None else []))
    return SystemConfig(elements=elements, training=parameters)


def validate_inputs(inputs: dict, _: Any) -> str | None:
    """Reject bad parameters, settings and data before anything is submitted."""
    training_set = inputs.get("training_set")
    test_set = inputs.get("test_set")
    for label, data in (("training_set", training_set), ("test_set", test_set)):
        if data is not None and not data.base.attributes.get("num_structures", 0):
            return f"{label}: the set is empty; give at least one structure"
        if data is not None and not data.labelled:
            return (
                f"{label}: is unlabelled (no energies or forces) and cannot be fitted; label it first "
                "(`autopipec learn` labels candidates; in Python: AseLabelCalculation)"
            )
    parameters = inputs["parameters"].get_dict() if "parameters" in inputs else {}
    try:
        config = system_config_from_inputs(parameters, training_set, test_set)
    except ValidationError as exc:
        return f"parameters: {describe_validation_error(exc, 'parameters')}"
    settings = inputs["settings"].get_dict() if "settings" in inputs else {}
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        return f"settings: unknown key(s) {unknown}; known: {sorted(SETTINGS_KEYS)}"
    try:
        generator = PacemakerConfigGenerator(config, settings.get("pacemaker"))
    except ConfigError as exc:
        return f"settings.pacemaker: {exc}"
    for label, data in (("training_set", training_set), ("test_set", test_set)):
        if data is not None:
            missing = sorted(set(data.elements) - set(config.elements))
            if missing:
                return f"{label}: contains element(s) {missing} that are not in elements {config.elements}"
    message = _validate_weights_and_subsets(inputs, settings) or _validate_reference_state(inputs, config)
    if message:
        return message
    message = validate_gpu_request(inputs, config.training.device)
    if message:
        return message
    options = inputs.get("metadata", {}).get("options", {})
    if options.get("append_text"):
        return (
            "metadata.options.append_text: not supported, it would run before pacemaker's exit code is recorded; "
            "use prepend_text, or the append text of the code or computer"
        )
    initial = inputs.get("initial_potential")
    restart = inputs.get("restart_potential")
    if initial is not None and restart is not None:
        return (
            "initial_potential and restart_potential: give at most one (restart_potential continues an interrupted "
            "fit of the same data, initial_potential warm-starts a new fit)"
        )
    if (initial is not None or restart is not None) and "potential" in (settings.get("pacemaker") or {}):
        which = "initial_potential" if initial is not None else "restart_potential"
        return f"settings.pacemaker.potential: the basis comes from {which}, it cannot be overridden"
    if restart is not None:
        try:
            restart_elements = potential_info(restart.get_content())["elements"]
        except (PotentialFileError, UnicodeDecodeError, AttributeError) as exc:
            return f"restart_potential: not a Pacemaker B-basis .yaml: {exc}"
        if sorted(restart_elements) != sorted(config.elements):
            return f"restart_potential: covers {restart_elements} but the fit needs {config.elements}"
    if initial is not None and sorted(initial.elements) != sorted(config.elements):
        return f"initial_potential: covers {initial.elements} but the fit needs {config.elements}"
    if (
        initial is not None
        and (initial.short_range or {}).get("mode", config.training.baseline) != config.training.baseline
    ):
        return (
            f"initial_potential: was fitted with baseline '{initial.short_range['mode']}', "
            f"cannot continue it with baseline '{config.training.baseline}'"
        )
    try:  # the values Pacemaker would reject only minutes into the fit (test split, basis blocks, cutoffs, ...)
        generator.generate(
            files.TRAINING_DATA,
            test_dataset_path=files.TEST_DATA if test_set is not None else None,
            initial_potential_path=files.INITIAL_POTENTIAL if initial is not None or restart is not None else None,
            num_structures=training_set.num_structures,
            num_atoms=training_set.num_atoms,
            shortest_distances={},  # the covalent-radius rule; the data's distances only lower the repulsion cutoffs
        )
    except ConfigError as exc:
        return f"parameters/settings: {exc}"
    return _validate_every_element_trained(training_set, config, "elements" in parameters)


def _validate_every_element_trained(training_set, config: SystemConfig, named: bool) -> str | None:
    """Each element of the potential needs atoms in the training set (else its functions stay unfitted)."""
    unfitted = sorted(set(config.elements) - set(training_set.elements)) if training_set is not None else []
    if not unfitted:
        return None
    return (
        f"training_set: has no atoms of {unfitted}, which the potential would cover "
        f"({'parameters.elements' if named else 'the test_set'} names them): it could not learn them; add training "
        "structures with them or leave them out"
    )


def _validate_reference_state(inputs: dict, config: SystemConfig) -> str | None:
    """Training and test energies on the same scale; a warm start from a potential that subtracted non-zero
    references cannot continue on energies that are already corrected (unless references are given)."""
    training_set, test_set = inputs.get("training_set"), inputs.get("test_set")
    corrected = training_set is not None and training_set.energies_corrected
    if test_set is not None and test_set.energies_corrected != corrected:
        which = ("training_set", "test_set") if corrected else ("test_set", "training_set")
        return (
            f"{which[0]}: its energies are already corrected (reference energies 0) but those of {which[1]} are "
            "total energies; import both the same way"
        )
    initial = inputs.get("initial_potential")
    references = (initial.reference_energies or {}) if initial is not None else {}
    if corrected and not isinstance(config.training.reference_energies, dict) and any(references.values()):
        return (
            "initial_potential: subtracts reference energies "
            f"{references} eV/atom but the training energies are already corrected (reference energies 0); give "
            "parameters.reference_energies explicitly or warm-start from a potential fitted on corrected energies"
        )
    return None


def _validate_weights_and_subsets(inputs: dict, settings: dict) -> str | None:
    """``structure_weights``: one finite weight > 0 per training structure, not mixed with a Pacemaker weighting
    policy; ``evaluation_subsets``: non-empty lists of valid training structure indices."""
    training_set = inputs.get("training_set")
    count = training_set.num_structures if training_set is not None else 0
    weights = inputs.get("structure_weights")
    pacemaker = settings.get("pacemaker") or {}
    if (
        weights is None
        and training_set is not None
        and training_set.base.attributes.get("has_weights", False)
        and "weighting" in (pacemaker.get("fit") or {})
        and not (pacemaker.get("data") or {}).get("ignore_weights")
    ):
        return (
            "settings.pacemaker.fit.weighting: the training set carries weights (w_energy/w_forces), which Pacemaker "
            "would use instead; set settings.pacemaker.data.ignore_weights to apply the policy, or drop it"
        )
    if weights is not None:
        values = weights.get_list()
        if len(values) != count:
            return f"structure_weights: got {len(values)} weights for {count} training structures; give one each"
        for index, value in enumerate(values):
            if not _is_number(value) or value <= 0:
                return f"structure_weights: weight {index} is {value!r}; weights must be finite numbers > 0"
        pacemaker = settings.get("pacemaker") or {}
        if "weighting" in (pacemaker.get("fit") or {}) or (pacemaker.get("data") or {}).get("ignore_weights"):
            return (
                "structure_weights: cannot be combined with settings.pacemaker fit.weighting or "
                "data.ignore_weights (Pacemaker would ignore one of them)"
            )
    subsets = inputs.get("evaluation_subsets")
    for name, indices in (subsets.get_dict() if subsets is not None else {}).items():
        if (
            not isinstance(indices, list)
            or not indices
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in indices)
        ):
            return f"evaluation_subsets.{name}: must be a non-empty list of structure indices in 0..{count - 1}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class PacemakerCalculation(CalcJob):
    """Fit an ACE potential with Pacemaker; the ``.yace`` is made on the compute side, next to pacemaker."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("training_set", valid_type=TrainingSetData, help="Structures with energies and forces.")
        spec.input(
            "test_set",
            valid_type=TrainingSetData,
            required=False,
            help="Held-out structures; without it Pacemaker holds out `test_size` of the training set.",
        )
        spec.input(
            "parameters",
            valid_type=orm.Dict,
            required=False,
            default=lambda: orm.Dict({}),
            help="TrainingConfig fields (cutoff in Å, maxiter, kappa, ...) and optionally `elements`.",
        )
        spec.input(
            "initial_potential",
            valid_type=PotentialData,
            required=False,
            help="Continue from this potential (warm start: same basis, previous coefficients).",
        )
        spec.input(
            "restart_potential",
            valid_type=orm.SinglefileData,
            required=False,
            help=(
                "Continue an interrupted fit of the same data from this bare B-basis .yaml (e.g. the "
                "`interim_potential` of a killed run); reference energies and repulsion cutoffs are recomputed from "
                "the data, which gives the same values. Not together with `initial_potential`."
            ),
        )
        spec.input(
            "settings",
            valid_type=orm.Dict,
            required=False,
            help=f"Expert settings: {', '.join(f'`{k}`: {v}' for k, v in SETTINGS_KEYS.items())}.",
        )
        spec.input(
            "structure_weights",
            valid_type=orm.List,
            required=False,
            help=(
                "One weight (finite, > 0) per training structure, for its energy and every one of its forces "
                "(Pacemaker's w_energy/w_forces); only relative values matter. Without it the weights stored with "
                "the training set (imported w_energy/w_forces) are used, else all weigh the same."
            ),
        )
        spec.input(
            "evaluation_subsets",
            valid_type=orm.Dict,
            required=False,
            help=(
                "Named lists of training structure indices whose errors the delivered model reports separately, "
                "in `metrics.subsets.<name>` (e.g. the original data of an active-learning run)."
            ),
        )
        spec.inputs.validator = validate_inputs
        serial_job_defaults(spec, "autopipec.pacemaker")
        add_gpu_option(spec)

        spec.output("potential", valid_type=PotentialData, help="The fitted potential (.yace + B-basis .yaml).")
        spec.output(
            "metrics",
            valid_type=orm.Dict,
            help="Final errors: `train`/`test` RMSE and MAE of energy (eV/atom) and forces (eV/Å), `is_converged`.",
        )
        spec.output(
            "learning_curve",
            valid_type=orm.ArrayData,
            required=False,
            help="Loss and RMSEs per displayed iteration (train and test).",
        )
        spec.output(
            "dimer_curves",
            valid_type=orm.ArrayData,
            required=False,
            help="Energy (eV) and force (eV/Å) of every element pair as a dimer, 0.3 Å to the cutoff.",
        )
        spec.output(
            "interim_potential",
            valid_type=orm.SinglefileData,
            required=False,
            help=(
                "Pacemaker's last interim_potential_0.yaml of a failed run (B-basis), to continue the fit with "
                "`restart_potential`."
            ),
        )
        spec.default_output_node = "metrics"

        spec.exit_code(
            300, "ERROR_PACEMAKER_FAILED", message="pacemaker exited with status {exit_status}: {stderr_tail}"
        )
        spec.exit_code(
            301,
            "ERROR_PACEMAKER_KILLED",
            message="pacemaker was killed before it finished ({reason}); the interim potential was retrieved",
        )
        spec.exit_code(
            302,
            "ERROR_OUT_OF_MEMORY",
            message="pacemaker ran out of memory (TensorFlow ResourceExhaustedError): reduce batch_size",
        )
        spec.exit_code(303, "ERROR_LOSS_DIVERGED", message="the loss became NaN or infinite at iteration {iteration}")
        spec.exit_code(310, "ERROR_NO_POTENTIAL", message="pacemaker exited normally but wrote no {filename}")
        spec.exit_code(311, "ERROR_YACE_CONVERSION", message="converting the potential to .yace failed: {log_tail}")
        spec.exit_code(320, "ERROR_METRICS_MISSING", message="the fit metrics are missing or unreadable: {error}")
        spec.exit_code(330, "ERROR_EVALUATION_FAILED", message="evaluating the delivered model failed: {log_tail}")
        spec.exit_code(
            340,
            "ERROR_UNSAFE_SHORT_RANGE",
            message="the potential is not repulsive at short range (dimer check): {details}",
        )

    def _setup_metadata(self, metadata: dict) -> None:
        """Record the options; a GPU request becomes the scheduler's directive in ``custom_scheduler_commands``."""
        options = dict(metadata.get("options", {}))
        super()._setup_metadata(metadata)
        computer = self.inputs.metadata.get("computer") or self.inputs.code.computer
        commands = gpu_scheduler_commands(options, computer.scheduler_type)
        if commands is not None:
            self.node.set_option("custom_scheduler_commands", commands)

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        """Write the datasets (Pacemaker pickle, only here), input.yaml, reference energies and evaluation input."""
        training_set = self.inputs.training_set
        test_set = self.inputs.get("test_set")
        initial = self.inputs.get("initial_potential")
        restart = self.inputs.get("restart_potential")
        # A restart is a bare B-basis: references and cutoffs are recomputed from the same data (deterministic).
        initial_yaml = initial.get_yaml() if initial is not None else None
        if restart is not None:
            initial_yaml = restart.get_content()
        settings = self.inputs.settings.get_dict() if "settings" in self.inputs else {}
        config = system_config_from_inputs(self.inputs.parameters.get_dict(), training_set, test_set)
        try:
            prepared = prepare_fit(
                folder.abspath,
                PacemakerConfigGenerator(config, settings.get("pacemaker")),
                training_set.get_arrays(),
                test_set.get_arrays() if test_set is not None else None,
                initial_yaml,
                initial.reference_energies if initial is not None else None,
                (initial.short_range or {}).get("pair_cutoffs") if initial is not None else None,
                self.inputs.structure_weights.get_list() if "structure_weights" in self.inputs else None,
                self.inputs.evaluation_subsets.get_dict() if "evaluation_subsets" in self.inputs else None,
            )
        except (ConfigError, DatasetError) as exc:  # should have been caught by the validator
            raise ValueError(str(exc)) from exc
        for pair, cutoffs in prepared["lowered"].items():
            self.report(
                f"warm start: the new data bring {pair} closer than the repulsive core of the initial potential "
                f"allows; its (inner, outer) cutoffs go from {cutoffs['was']} to {cutoffs['now']} Å"
            )

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        # Pacemaker's own predictions only when they are kept: the evaluation covers the delivered model's errors.
        codeinfo.cmdline_params = files.pacemaker_arguments(predictions=bool(settings.get("retrieve_predictions")))
        codeinfo.stdout_name = files.STDOUT
        codeinfo.stderr_name = files.STDERR

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        # Right after the code line: `$?` is pacemaker's exit code; then convert and evaluate on the compute side.
        calcinfo.append_text = post_fit_script(
            settings.get("yaml2yace_executable"),  # default: the evaluation script converts (one Python fewer)
            settings.get("python_executable") or self._next_to_pacemaker("python"),
        )
        calcinfo.retrieve_list = list(files.RETRIEVE_LIST)
        calcinfo.retrieve_temporary_list = list(files.RETRIEVE_TEMPORARY_LIST)
        if settings.get("retrieve_predictions"):
            calcinfo.retrieve_list += [files.TRAIN_PREDICTIONS, files.TEST_PREDICTIONS]
        # The pickles duplicate the stored TrainingSetData: keep them out of the provenance repository.
        calcinfo.provenance_exclude_list = [files.TRAINING_DATA, files.TEST_DATA]
        return calcinfo

    def _next_to_pacemaker(self, name: str) -> str:
        """``name`` (``pace_yaml2yace``, ``python``) from the installation of the code's ``pacemaker``."""
        executable = getattr(self.inputs.code, "filepath_executable", None)
        if executable is not None and PurePosixPath(str(executable)).is_absolute():
            return str(PurePosixPath(str(executable)).parent / name)
        return name

    @classmethod
    def get_builder_from_protocol(cls, code, training_set, protocol: str | None = None, overrides=None, **kwargs):
        """Builder for ``protocol`` (fast, moderate, precise): basis and batch size follow the training set's size.

        ``overrides`` (plain dicts, e.g. ``{"parameters": {"maxiter": 50}}``) are deep-merged and validated;
        ``kwargs``: ``test_set``, ``options`` (metadata.options). See :mod:`aiida_autopipec.protocols`.
        """
        from aiida_autopipec import protocols

        return protocols.build(cls, protocols.pacemaker_inputs(code, training_set, protocol, **kwargs), overrides)
