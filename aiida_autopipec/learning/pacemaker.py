"""Run Pacemaker without AiiDA: write the data and input.yaml, fit, convert to ``.yace``.

The shell steps after the fit (:func:`post_fit_script`) are shared with the AiiDA CalcJob, so both record the exit
code the same way and convert on the same side as the fit.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ase import Atoms

from aiida_autopipec.config import TrainingConfig
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.dataset import (
    DatasetError,
    StructureArrays,
    fit_reference_energies,
    write_pacemaker_dataset,
)
from aiida_autopipec.learning.metrics import LogParser, TrainingMetrics
from aiida_autopipec.learning.potential import set_reference_energies

__all__ = ["PacemakerError", "PacemakerRunner", "post_fit_script", "resolve_reference_energies"]

#: Written next to the potential: the per-element reference energies (eV/atom) used for ``energy_corrected``.
REFERENCE_ENERGIES_JSON = "reference_energies.json"


class PacemakerError(RuntimeError):
    """Pacemaker (or the ``.yace`` conversion) failed; the message carries the tail of its error output and log."""


def post_fit_script(yaml2yace: str = "pace_yaml2yace") -> str:
    """Shell lines run right after ``pacemaker``: keep its exit code, then convert the potential to ``.yace``."""
    return "\n".join(
        [
            f"echo $? > {files.EXIT_STATUS}",
            f"if [ -f {files.OUTPUT_POTENTIAL_YAML} ]; then",
            f"  {shlex.quote(yaml2yace)} -o {files.OUTPUT_POTENTIAL_YACE} {files.OUTPUT_POTENTIAL_YAML}"
            f" > {files.YAML2YACE_LOG} 2>&1",
            "fi",
        ]
    )


def resolve_reference_energies(
    training: TrainingConfig,
    arrays: StructureArrays,
    elements: Sequence[str],
    previous: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Reference energies (eV/atom) for every element: given by the user, inherited from a warm start, or fitted.

    A warm start must reuse the references of the potential it continues, or its energies would shift.
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
        return {element: float(previous[element]) for element in elements}
    return fit_reference_energies(arrays, elements)


def tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"({path.name} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PacemakerRunner:
    """Fit a potential with the ``pacemaker`` executable in ``work_dir`` and return the ``.yace`` path."""

    def __init__(
        self,
        config_generator: PacemakerConfigGenerator,
        work_dir: str | os.PathLike,
        executable: str = "pacemaker",
        yaml2yace: str = "pace_yaml2yace",
    ):
        self.config_generator = config_generator
        self.work_dir = Path(work_dir)
        self.executable = executable
        self.yaml2yace = yaml2yace
        self.reference_energies: dict[str, float] = {}

    @property
    def elements(self) -> list[str]:
        return self.config_generator.config.elements

    def prepare(
        self,
        dataset: Sequence[Atoms] | StructureArrays,
        test_dataset: Sequence[Atoms] | StructureArrays | None = None,
        initial_potential: str | os.PathLike | None = None,
        initial_reference_energies: Mapping[str, float] | None = None,
    ) -> Path:
        """Validate the data, then write the datasets and input.yaml; returns the input.yaml path."""
        arrays = dataset if isinstance(dataset, StructureArrays) else StructureArrays.from_atoms(dataset)
        arrays.check_elements(self.elements)
        test_arrays = None
        if test_dataset is not None:
            test_arrays = (
                test_dataset if isinstance(test_dataset, StructureArrays) else StructureArrays.from_atoms(test_dataset)
            )
            test_arrays.check_elements(self.elements)
        training = self.config_generator.config.training
        self.reference_energies = resolve_reference_energies(
            training, arrays, self.elements, initial_reference_energies
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_pacemaker_dataset(self.work_dir / files.TRAINING_DATA, arrays, self.reference_energies)
        if test_arrays is not None:
            write_pacemaker_dataset(self.work_dir / files.TEST_DATA, test_arrays, self.reference_energies)
        if initial_potential is not None:
            (self.work_dir / files.INITIAL_POTENTIAL).write_bytes(Path(initial_potential).read_bytes())
        config = self.config_generator.generate(
            files.TRAINING_DATA,
            test_dataset_path=files.TEST_DATA if test_arrays is not None else None,
            initial_potential_path=files.INITIAL_POTENTIAL if initial_potential is not None else None,
            num_structures=arrays.num_structures,
            num_atoms=arrays.num_atoms,
        )
        (self.work_dir / REFERENCE_ENERGIES_JSON).write_text(json.dumps(self.reference_energies, indent=2))
        return self.config_generator.write(self.work_dir / files.INPUT_YAML, config)

    def train(
        self,
        dataset: Sequence[Atoms] | StructureArrays,
        test_dataset: Sequence[Atoms] | StructureArrays | None = None,
        initial_potential: str | os.PathLike | None = None,
        initial_reference_energies: Mapping[str, float] | None = None,
    ) -> Path:
        """Fit and return the ``.yace`` (absolute energies: reference energies written into ``E0``)."""
        self.prepare(dataset, test_dataset, initial_potential, initial_reference_energies)
        script = (
            f"{shlex.quote(self.executable)} {files.INPUT_YAML} > {files.STDOUT} 2> {files.STDERR}\n"
            + post_fit_script(self.yaml2yace)
        )
        subprocess.run(["bash", "-c", script], cwd=self.work_dir, check=False)
        exit_status = int((self.work_dir / files.EXIT_STATUS).read_text().strip() or -1)
        if exit_status != 0:
            raise PacemakerError(
                f"pacemaker exited with status {exit_status} in {self.work_dir}\n"
                f"--- {files.STDERR} (tail) ---\n{tail(self.work_dir / files.STDERR)}\n"
                f"--- {files.LOG} (tail) ---\n{tail(self.work_dir / files.LOG, 10)}"
            )
        yace = self.work_dir / files.OUTPUT_POTENTIAL_YACE
        if not yace.is_file():
            raise PacemakerError(
                f"no {yace.name} was written\n{tail(self.work_dir / files.YAML2YACE_LOG)}\n"
                f"--- {files.LOG} (tail) ---\n{tail(self.work_dir / files.LOG, 10)}"
            )
        yace.write_text(set_reference_energies(yace.read_text(), self.reference_energies))
        return yace

    def metrics(self) -> TrainingMetrics:
        """Metrics of the last fit in ``work_dir`` (thresholds from the training config)."""
        training = self.config_generator.config.training
        return LogParser(training.rmse_forces_threshold, training.rmse_energy_threshold).parse(self.work_dir)
