"""Run Pacemaker without AiiDA: write the data and input.yaml, fit, convert to ``.yace``.

The shell steps after the fit (:func:`post_fit_script`) are shared with the AiiDA CalcJob, so both record the exit
code the same way and convert on the same side as the fit.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from aiida_autopipec.config import SystemConfig, TrainingConfig
from aiida_autopipec.learning import files
from aiida_autopipec.learning.baseline import check_dimer_curves, shortest_pair_distances
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.dataset import (
    DatasetError,
    StructureArrays,
    fit_reference_energies,
    structure_weight_columns,
    write_pacemaker_dataset,
)
from aiida_autopipec.learning.metrics import LogParser, TrainingMetrics
from aiida_autopipec.learning.potential import potential_info, set_reference_energies, set_repulsion_cutoffs

__all__ = [
    "PacemakerError",
    "PacemakerRunner",
    "post_fit_script",
    "resolve_reference_energies",
    "warm_start_repulsion",
]

#: Written next to the potential: the per-element reference energies (eV/atom) used for ``energy_corrected``.
REFERENCE_ENERGIES_JSON = "reference_energies.json"


class PacemakerError(RuntimeError):
    """Pacemaker (or the ``.yace`` conversion) failed; the message carries the tail of its error output and log."""


def post_fit_script(yaml2yace: str | None = "pace_yaml2yace", python: str | None = None) -> str:
    """Shell lines run right after ``pacemaker``: keep its exit code, convert the potential to ``.yace`` and, with
    ``python`` (the interpreter of the pacemaker installation), evaluate the delivered model (``evaluate_model``).

    With ``python`` and no ``yaml2yace`` the evaluation script also does the conversion (what ``pace_yaml2yace``
    does, through the same pyace call): one interpreter start and pyace import fewer, ~0.6 s per fit.
    """
    lines = [f"echo $? > {files.EXIT_STATUS}"]
    if yaml2yace is not None or python is None:
        lines += [
            f"if [ -f {files.OUTPUT_POTENTIAL_YAML} ]; then",
            f"  {shlex.quote(yaml2yace or 'pace_yaml2yace')} -o {files.OUTPUT_POTENTIAL_YACE}"
            f" {files.OUTPUT_POTENTIAL_YAML} > {files.YAML2YACE_LOG} 2>&1",
            "fi",
        ]
    if python is not None:
        needs = files.OUTPUT_POTENTIAL_YACE if yaml2yace is not None else files.OUTPUT_POTENTIAL_YAML
        lines += [
            f"if [ -f {needs} ]; then",
            f"  {shlex.quote(python)} {files.EVALUATION_SCRIPT} {files.EVALUATION_INPUT} > {files.EVALUATION_LOG} 2>&1",
            "fi",
        ]
    return "\n".join(lines)


def evaluation_files() -> dict[str, str]:
    """Source of the standalone evaluation script and the ZBL module it needs, keyed by their file names there."""
    from aiida_autopipec.learning import evaluate_model, zbl

    return {
        files.EVALUATION_SCRIPT: Path(evaluate_model.__file__).read_text(),
        files.EVALUATION_ZBL_MODULE: Path(zbl.__file__).read_text(),
    }


def evaluation_settings(
    config: SystemConfig, zbl_params: Mapping[str, Sequence[float]], cutoff: float
) -> dict[str, Any]:
    """Input of ``evaluate_model``: what to evaluate, and the repulsion each pair must show (for the dimer check)."""
    pair_cutoffs = {key: [float(v) for v in value] for key, value in zbl_params.items()}
    delta = config.training.baseline == "zbl_delta"
    return {
        "potential": files.OUTPUT_POTENTIAL_YACE,
        # Made from the B-basis first when the job has no separate pace_yaml2yace step (post_fit_script).
        "convert": {"yaml": files.OUTPUT_POTENTIAL_YAML, "log": files.YAML2YACE_LOG},
        "datasets": {"train": files.FITTING_DATA_INFO, "test": files.TEST_DATA_INFO},
        "elements": list(config.elements),
        "cutoff": float(cutoff),
        "baseline": {"type": "zbl", "pair_cutoffs": pair_cutoffs} if delta else None,
        "mode": config.training.baseline,
        "pair_cutoffs": pair_cutoffs,
        "output": files.EVALUATION_OUTPUT,
    }


def resolve_reference_energies(
    training: TrainingConfig,
    arrays: StructureArrays,
    elements: Sequence[str],
    previous: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Reference energies (eV/atom) for every element, first of: given by the user (a dict in the parameters),
    inherited from a warm start, recorded with the data (``arrays.reference_energies``: 0 for energies that are
    already corrected, so nothing is subtracted twice), or fitted by least squares.

    A warm start must reuse the references of the potential it continues, or its energies would shift; it cannot
    continue with already-corrected energies if that potential subtracted non-zero references.
    """
    if isinstance(training.reference_energies, dict):
        missing = sorted(set(elements) - set(training.reference_energies))
        if missing:
            raise DatasetError(f"reference_energies: no value for element(s) {missing}")
        return {element: float(training.reference_energies[element]) for element in elements}
    if previous:
        missing = sorted(set(elements) - set(previous))
        if missing:
            raise DatasetError(f"initial potential has no reference energy for element(s) {missing}")
        if arrays.energies_corrected and any(float(previous[element]) != 0.0 for element in elements):
            raise DatasetError(
                "the training energies are already corrected (reference energies 0) but the initial potential "
                f"subtracts {dict(previous)} eV/atom: its energies would be shifted; give reference_energies "
                "explicitly, or warm-start from a potential fitted on corrected energies"
            )
        return {element: float(previous[element]) for element in elements}
    recorded = arrays.reference_energies
    if recorded is not None:  # elements without data (and so without a recorded value) get 0, as a fit gives them
        return {element: float(recorded.get(element, 0.0)) for element in elements}
    return fit_reference_energies(arrays, elements)


def check_reference_state(arrays: StructureArrays, test_arrays: StructureArrays | None) -> None:
    """Training and test energies on the same scale (both total, or both already corrected), and every structure
    fully periodic or not periodic at all (Pacemaker's neighbour lists support nothing else)."""
    if test_arrays is not None and test_arrays.energies_corrected != arrays.energies_corrected:
        which = ("training", "test") if arrays.energies_corrected else ("test", "training")
        raise DatasetError(
            f"the {which[0]} energies are already corrected (reference energies 0) but the {which[1]} energies "
            "are total energies: errors on the test set would be meaningless; import both the same way"
        )
    for label, data in (("training", arrays), ("test", test_arrays)):
        partial = np.flatnonzero(data.pbc.any(axis=1) & ~data.pbc.all(axis=1)) if data is not None else []
        if len(partial):
            raise DatasetError(
                f"{label} structure {int(partial[0])}: periodic along some axes only (pbc "
                f"{data.pbc[partial[0]].tolist()}); Pacemaker supports fully periodic or non-periodic structures"
            )


def fit_weights(
    arrays: StructureArrays, test_arrays: StructureArrays | None, structure_weights: Sequence[float] | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pacemaker's weight columns for the training and test frames: from ``structure_weights`` (one per training
    structure; wins), else the weights stored with the data (per structure and per atom), else none.

    When the training frame has weights the test frame gets its own stored ones or 1 (Pacemaker joins the frames:
    weights missing in one would be NaN); they do not enter the fit.
    """
    if structure_weights is not None:
        energy_weights, force_weights = structure_weight_columns(arrays, structure_weights)
    elif arrays.energy_weights is not None:
        energy_weights, force_weights = arrays.energy_weights, arrays.force_weights
    else:
        return {}, {}
    weights = {"energy_weights": energy_weights, "force_weights": force_weights}
    if test_arrays is None:
        return weights, {}
    if test_arrays.energy_weights is not None:
        return weights, {"energy_weights": test_arrays.energy_weights, "force_weights": test_arrays.force_weights}
    energy_weights, force_weights = structure_weight_columns(test_arrays, np.ones(test_arrays.num_structures))
    return weights, {"energy_weights": energy_weights, "force_weights": force_weights}


def tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"({path.name} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def error_summary(stderr: str, lines: int = 15) -> str:
    """The last exception line of Pacemaker's stderr (e.g. ``ValueError: Unknown optimizer``), then its tail.

    TensorFlow prints warnings after the traceback, so the tail alone often misses the error itself.
    """
    text = stderr.strip().splitlines()
    errors = [line.strip() for line in text if re.match(r"^\s*[\w.]*(Error|Exception|Exhausted\w*)\b.*:", line)]
    head = f"{errors[-1]}\n" if errors else ""
    return head + "\n".join(text[-lines:])


def _no_partial_files(prepare):
    """If writing a fit's inputs fails (e.g. a full disk), remove what this call wrote and say where it failed:
    a truncated dataset next to a complete input.yaml would otherwise be fitted on later without complaint."""

    @functools.wraps(prepare)
    def wrapper(folder, *args, **kwargs):
        folder = Path(folder)
        existing = set(folder.iterdir()) if folder.is_dir() else set()
        try:
            return prepare(folder, *args, **kwargs)
        except OSError as exc:
            written = sorted(p for p in set(folder.iterdir()) - existing if p.is_file()) if folder.is_dir() else []
            for path in written:
                path.unlink(missing_ok=True)
            names = ", ".join(path.name for path in written) or "nothing"
            raise OSError(
                exc.errno, f"cannot write the fit's input files into {folder}: {exc.strerror or exc} (removed: {names})"
            ) from exc

    return wrapper


@_no_partial_files
def prepare_fit(
    folder: str | os.PathLike,
    generator: PacemakerConfigGenerator,
    arrays: StructureArrays,
    test_arrays: StructureArrays | None = None,
    initial_potential_yaml: str | None = None,
    initial_reference_energies: Mapping[str, float] | None = None,
    initial_zbl_params: Mapping[str, Sequence[float]] | None = None,
    structure_weights: Sequence[float] | None = None,
    evaluation_subsets: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Write everything a fit needs into ``folder``: datasets, input.yaml, reference energies, evaluation input.

    The one place that prepares a fit, for the plain runner and the AiiDA CalcJob alike. A warm start reuses the
    reference energies and repulsion cutoffs of the potential it continues, lowering the cutoffs of pairs that the
    new data bring closer (:func:`warm_start_repulsion`; the returned ``lowered`` says which).
    ``structure_weights`` (one per training structure) become Pacemaker's weight columns (without them, the
    weights stored with the data, if any: :func:`fit_weights`); reference energies: :func:`resolve_reference_energies`;
    ``evaluation_subsets``
    (name -> training structure indices) are evaluated separately with the delivered model. Returns the evaluation
    settings.
    """
    folder = Path(folder)
    config = generator.config
    arrays.check_elements(config.elements)
    if test_arrays is not None:
        test_arrays.check_elements(config.elements)
    check_reference_state(arrays, test_arrays)
    references = resolve_reference_energies(config.training, arrays, config.elements, initial_reference_energies)
    shortest = shortest_pair_distances(arrays.to_atoms(with_labels=False), config.elements)
    lowered: dict[str, dict[str, list[float]]] = {}
    if initial_zbl_params is not None:
        initial_zbl_params, lowered = warm_start_repulsion(generator, initial_zbl_params, shortest)
        if lowered and initial_potential_yaml is not None:
            changed = {pair: cutoffs["now"] for pair, cutoffs in lowered.items()}
            initial_potential_yaml = set_repulsion_cutoffs(initial_potential_yaml, changed)
    input_yaml = generator.generate(
        files.TRAINING_DATA,
        test_dataset_path=files.TEST_DATA if test_arrays is not None else None,
        initial_potential_path=files.INITIAL_POTENTIAL if initial_potential_yaml is not None else None,
        num_structures=arrays.num_structures,
        num_atoms=arrays.num_atoms,
        shortest_distances=shortest,
        zbl_params=initial_zbl_params,
    )
    delta = generator.zbl_params if config.training.baseline == "zbl_delta" else None
    weights, test_weights = fit_weights(arrays, test_arrays, structure_weights)
    write_pacemaker_dataset(folder / files.TRAINING_DATA, arrays, references, baseline_cutoffs=delta, **weights)
    if test_arrays is not None:
        write_pacemaker_dataset(
            folder / files.TEST_DATA, test_arrays, references, baseline_cutoffs=delta, **test_weights
        )
    if initial_potential_yaml is not None:
        (folder / files.INITIAL_POTENTIAL).write_text(initial_potential_yaml)
        cutoff = potential_info(initial_potential_yaml)["cutoff"]
    else:
        cutoff = max(bond["rcut"] for bond in input_yaml["potential"]["bonds"].values() if "rcut" in bond)
    generator.write(folder / files.INPUT_YAML, input_yaml)
    (folder / REFERENCE_ENERGIES_JSON).write_text(json.dumps(references, indent=2))
    settings = evaluation_settings(config, generator.zbl_params, cutoff)
    if evaluation_subsets:
        for name, indices in evaluation_subsets.items():
            if not indices or min(indices) < 0 or max(indices) >= arrays.num_structures:
                raise DatasetError(f"evaluation subset '{name}': indices must lie in 0..{arrays.num_structures - 1}")
        settings["subsets"] = {
            name: {"dataset": files.TRAINING_DATA, "indices": [int(i) for i in indices]}
            for name, indices in evaluation_subsets.items()
        }
    (folder / files.EVALUATION_INPUT).write_text(json.dumps(settings, indent=2))
    for name, source in evaluation_files().items():
        (folder / name).write_text(source)
    return {"reference_energies": references, "evaluation": settings, "input_yaml": input_yaml, "lowered": lowered}


def warm_start_repulsion(
    generator: PacemakerConfigGenerator,
    kept: Mapping[str, Sequence[float]],
    shortest: Mapping[str, float],
) -> tuple[dict[str, tuple[float, float]], dict[str, dict[str, list[float]]]]:
    """Repulsion cutoffs of a warm start: those of the potential it continues, except for pairs whose new data come
    closer than the rule allows (e.g. structures added by active learning). Those get the rule's cutoffs for the
    new data, or the repulsive core would override the data it is fitted to (the delivered model's error there
    reached 17 eV/Å while Pacemaker, which reports errors without the core, showed 0.03 eV/Å).

    Returns the cutoffs per pair and the lowered ones (``{"was": [inner, outer], "now": [inner, outer]}``).
    """
    rule = generator.repulsion_cutoffs(shortest)
    cutoffs, lowered = {}, {}
    for pair, (inner, outer) in kept.items():
        cutoffs[pair] = (float(inner), float(outer))
        if pair in rule and rule[pair][1] < float(outer):
            cutoffs[pair] = rule[pair]
            lowered[pair] = {"was": [float(inner), float(outer)], "now": list(rule[pair])}
    return cutoffs, lowered


class PacemakerRunner:
    """Fit a potential with the ``pacemaker`` executable in ``work_dir`` and return the ``.yace`` path."""

    def __init__(
        self,
        config_generator: PacemakerConfigGenerator,
        work_dir: str | os.PathLike,
        executable: str = "pacemaker",
        yaml2yace: str = "pace_yaml2yace",
        predictions: bool = False,
    ):
        self.config_generator = config_generator
        self.work_dir = Path(work_dir)
        self.executable = executable
        self.yaml2yace = yaml2yace
        #: Let Pacemaker predict both sets after the fit (prediction pickles and plots in ``work_dir``, ~2 s).
        self.predictions = predictions
        self.reference_energies: dict[str, float] = {}
        self.evaluation_settings: dict[str, Any] = {}

    @property
    def elements(self) -> list[str]:
        return self.config_generator.config.elements

    def prepare(
        self,
        dataset: Sequence[Atoms] | StructureArrays,
        test_dataset: Sequence[Atoms] | StructureArrays | None = None,
        initial_potential: str | os.PathLike | None = None,
        initial_reference_energies: Mapping[str, float] | None = None,
        initial_zbl_params: Mapping[str, Sequence[float]] | None = None,
        *,
        structure_weights: Sequence[float] | None = None,
        evaluation_subsets: Mapping[str, Sequence[int]] | None = None,
    ) -> Path:
        """Validate the data, then write the datasets and input.yaml; returns the input.yaml path."""
        arrays = dataset if isinstance(dataset, StructureArrays) else StructureArrays.from_atoms(dataset)
        test_arrays = test_dataset
        if test_dataset is not None and not isinstance(test_dataset, StructureArrays):
            test_arrays = StructureArrays.from_atoms(test_dataset)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        prepared = prepare_fit(
            self.work_dir,
            self.config_generator,
            arrays,
            test_arrays,
            Path(initial_potential).read_text() if initial_potential is not None else None,
            initial_reference_energies,
            initial_zbl_params,
            structure_weights,
            evaluation_subsets,
        )
        self.reference_energies = prepared["reference_energies"]
        self.evaluation_settings = prepared["evaluation"]
        return self.work_dir / files.INPUT_YAML

    def train(
        self,
        dataset: Sequence[Atoms] | StructureArrays,
        test_dataset: Sequence[Atoms] | StructureArrays | None = None,
        initial_potential: str | os.PathLike | None = None,
        initial_reference_energies: Mapping[str, float] | None = None,
        initial_zbl_params: Mapping[str, Sequence[float]] | None = None,
        *,
        structure_weights: Sequence[float] | None = None,
        evaluation_subsets: Mapping[str, Sequence[int]] | None = None,
    ) -> Path:
        """Fit, evaluate the delivered model and return the ``.yace`` (reference energies written into ``E0``)."""
        self.prepare(
            dataset,
            test_dataset,
            initial_potential,
            initial_reference_energies,
            initial_zbl_params,
            structure_weights=structure_weights,
            evaluation_subsets=evaluation_subsets,
        )
        script = (
            f"{shlex.join([self.executable, *files.pacemaker_arguments(self.predictions)])} "
            f"> {files.STDOUT} 2> {files.STDERR}\n" + post_fit_script(self.yaml2yace)  # evaluated in this process below
        )
        subprocess.run(["bash", "-c", script], cwd=self.work_dir, check=False)
        exit_status = int((self.work_dir / files.EXIT_STATUS).read_text().strip() or -1)
        if exit_status != 0:
            raise PacemakerError(
                f"pacemaker exited with status {exit_status} in {self.work_dir}\n"
                f"--- {files.STDERR} ---\n{error_summary((self.work_dir / files.STDERR).read_text(errors='replace'))}\n"
                f"--- {files.LOG} (tail) ---\n{tail(self.work_dir / files.LOG, 10)}"
            )
        yace = self.work_dir / files.OUTPUT_POTENTIAL_YACE
        if not yace.is_file():
            raise PacemakerError(
                f"no {yace.name} was written\n{tail(self.work_dir / files.YAML2YACE_LOG)}\n"
                f"--- {files.LOG} (tail) ---\n{tail(self.work_dir / files.LOG, 10)}"
            )
        from aiida_autopipec.learning.evaluate_model import evaluate

        evaluation = evaluate(self.work_dir, self.evaluation_settings)
        (self.work_dir / files.EVALUATION_OUTPUT).write_text(json.dumps(evaluation))
        yace.write_text(set_reference_energies(yace.read_text(), self.reference_energies))
        return yace

    def metrics(self) -> TrainingMetrics:
        """Metrics of the last fit in ``work_dir``: errors of the delivered model, Pacemaker's own kept aside."""
        training = self.config_generator.config.training
        metrics = LogParser(training.rmse_forces_threshold, training.rmse_energy_threshold).parse(self.work_dir)
        evaluation = json.loads((self.work_dir / files.EVALUATION_OUTPUT).read_text())
        return metrics.with_delivered_errors(evaluation)

    def dimer_check(self) -> dict[str, list[str]]:
        """Violations of the short-range check per element pair (empty: every pair is repulsive below its core)."""
        evaluation = json.loads((self.work_dir / files.EVALUATION_OUTPUT).read_text())
        return check_dimer_curves(evaluation["dimers"], self.evaluation_settings["pair_cutoffs"])
