"""Catalogue of malformed inputs: each is refused with an error naming the problem, before anything is stored.

One row of :data:`CASES` per input. The test runs the row's action, checks the message carries the row's
excerpts, and that the database holds as many nodes as before (processes: ``aiida.engine.run`` must fail
validation, so no process node, input node or job exists). The table in ``docs/reliability.md`` is rendered from
the same rows (``python tests/test_bad_input.py`` rewrites it; ``test_docs_table_is_current`` keeps it current).
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning.dataset import UnitsWarning

RECORDED = Path(__file__).parent / "parsers" / "recorded" / "success"
DOCS = Path(__file__).parents[1] / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- bad-input-catalogue:start -->", "<!-- bad-input-catalogue:end -->"
EMT = {"import_path": "ase.calculators.emt.EMT", "kwargs": {}}
FIT = {"cutoff": 4.5, "maxiter": 5, "number_of_functions_per_element": 8, "test_size": 0.5, "device": "cpu"}


@dataclass(frozen=True)
class Case:
    """One malformed input: what was given, the excerpts its error message must contain, and who refuses it."""

    id: str
    layer: str  # "API", "process" or "CLI"
    given: str
    excerpts: tuple[str, ...]
    where: str
    action: Callable[[Any], Any]
    warning: bool = False  # a UnitsWarning (the data may be real) instead of an error


# -- building blocks -------------------------------------------------------------------------------------------
def labelled(atoms: Atoms, energy: Any = None, forces: Any = None) -> Atoms:
    """A copy of ``atoms`` carrying ``energy`` (eV) and ``forces`` (eV/Å); by default its own labels."""
    copy = atoms.copy()
    energy = atoms.get_potential_energy() if energy is None else energy
    forces = atoms.get_forces() if forces is None else forces
    copy.calc = SinglePointCalculator(copy, energy=energy, forces=np.asarray(forces, dtype=float))
    return copy


def structures(ctx, count: int = 6) -> list[Atoms]:
    return [labelled(atoms) for atoms in ctx.structures[:count]]


def first_with(ctx, **labels) -> list[Atoms]:
    """The structures with the first one relabelled."""
    data = structures(ctx)
    data[0] = labelled(ctx.structures[0], **labels)
    return data


def training_set(ctx, count: int = 6, **kwargs):
    from aiida_autopipec.data import TrainingSetData

    return TrainingSetData.from_ase(structures(ctx, count), **kwargs)


def unlabelled_set(ctx, count: int = 6):
    from aiida_autopipec.data import TrainingSetData

    return TrainingSetData.from_ase(structures(ctx, count), labelled=False)


def iron_set(labelled_data: bool = True):
    from aiida_autopipec.data import TrainingSetData
    from aiida_autopipec.learning.reference_data import emt_dataset

    iron = bulk("Fe", "bcc", a=2.87, cubic=True)
    iron.calc = SinglePointCalculator(iron, energy=-8.0, forces=np.zeros((len(iron), 3)))
    return TrainingSetData.from_ase([*emt_dataset(2, seed=5), iron], labelled=labelled_data)


def iron_only_in_held_out_part(ctx):
    """Al-Cu structures and one Fe cell, placed where the loop's default held-out split takes it."""
    from aiida_autopipec.data import TrainingSetData
    from aiida_autopipec.workflows.active_learning import ConvergenceConfig
    from aiida_autopipec.workflows.functions import held_out_indices

    defaults = ConvergenceConfig()
    held_out, _ = held_out_indices(11, defaults.test_fraction, defaults.seed)
    iron = bulk("Fe", "bcc", a=2.87, cubic=True)
    iron.calc = SinglePointCalculator(iron, energy=-8.0, forces=np.zeros((len(iron), 3)))
    structures = list(ctx.structures[:10])
    structures.insert(held_out[0], iron)
    return TrainingSetData.from_ase(structures)


def write_text(ctx, name: str, text: str | bytes) -> Path:
    path = ctx.tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def extxyz(ctx, name: str = "data.extxyz", keep: float = 1.0) -> Path:
    from aiida_autopipec.learning.dataset import write_extxyz

    path = write_extxyz(ctx.tmp_path / name, structures(ctx))
    text = path.read_text()
    path.write_text(text[: int(len(text) * keep)])
    return path


def ase_db(ctx, name: str = "data.db", rows: list[Atoms] | None = None) -> Path:
    import ase.db

    path = ctx.tmp_path / name
    with ase.db.connect(path) as database:
        for atoms in structures(ctx) if rows is None else rows:
            database.write(atoms, config="train")
    return path


def generator(overrides: dict | None = None, **training):
    from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator

    return PacemakerConfigGenerator(SystemConfig(elements=["Al", "Cu"], **training), overrides)


def generate(overrides: dict | None = None, **training):
    return generator(overrides, **training).generate(
        "training_data.pckl.gzip", num_structures=20, num_atoms=160, shortest_distances={}
    )


def recorded_potential():
    from aiida_autopipec.data import PotentialData

    references = json.loads((RECORDED / "reference_energies.json").read_text())
    return PotentialData(
        yace=RECORDED / "output_potential.yace", yaml=RECORDED / "output_potential.yaml", reference_energies=references
    )


def run_pacemaker(ctx, parameters: dict | None = None, **inputs):
    from aiida import orm
    from aiida.engine import run

    from aiida_autopipec.calculations.pacemaker import PacemakerCalculation

    inputs.setdefault("training_set", training_set(ctx))
    return run(
        PacemakerCalculation, code=ctx.pacemaker_code, parameters=orm.Dict({**FIT, **(parameters or {})}), **inputs
    )


def run_base(ctx, parameters: dict, **inputs):
    from aiida import orm
    from aiida.engine import run

    from aiida_autopipec.workflows.base import PacemakerBaseWorkChain

    pacemaker = {"code": ctx.pacemaker_code, "training_set": training_set(ctx), "parameters": orm.Dict(parameters)}
    return run(PacemakerBaseWorkChain, pacemaker=pacemaker, **inputs)


def run_loop(ctx, convergence: dict | None = None, calculator: dict | None = None, **change):
    from aiida import orm
    from aiida.engine import run

    from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain

    inputs = {
        "training_set": training_set(ctx),
        "candidates": unlabelled_set(ctx),
        "parameters": orm.Dict(FIT),
        "convergence": orm.Dict(convergence or {}),
        "pacemaker": {"code": ctx.pacemaker_code},
        "selection": {"code": ctx.python_code},
        "labeling": {"code": ctx.python_code, "calculator": orm.Dict(calculator or EMT)},
    }
    inputs.update(change)
    return run(ActiveLearningWorkChain, **inputs)


def run_label(ctx, calculator: dict | None = None, structures_set=None):
    from aiida import orm
    from aiida.engine import run

    from aiida_autopipec.calculations.ase_label import AseLabelCalculation

    structures_set = unlabelled_set(ctx, 2) if structures_set is None else structures_set
    return run(
        AseLabelCalculation, code=ctx.python_code, structures=structures_set, calculator=orm.Dict(calculator or EMT)
    )


def run_select(ctx, parameters: dict | None = None, **change):
    from aiida import orm
    from aiida.engine import run

    from aiida_autopipec.calculations.select import SelectionCalculation

    inputs = {
        "code": ctx.python_code,
        "potential": recorded_potential(),
        "training_set": training_set(ctx),
        "candidates": unlabelled_set(ctx),
        "parameters": orm.Dict({"max_new_structures": 2} if parameters is None else parameters),
    }
    inputs.update(change)
    return run(SelectionCalculation, **inputs)


def _from_ase(data, **kwargs):
    from aiida_autopipec.data import TrainingSetData

    return TrainingSetData.from_ase(data, **kwargs)


def _from_file(path):
    from aiida_autopipec.data import TrainingSetData

    return TrainingSetData.from_file(path)


def _from_db(path, selection=None, **kwargs):
    from aiida_autopipec.data import TrainingSetData

    return TrainingSetData.from_ase_db(path, selection, **kwargs)


def _overlapping(ctx) -> list[Atoms]:
    atoms = ctx.structures[0].copy()
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    return [labelled(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))]


def _degenerate_cell(ctx) -> list[Atoms]:
    atoms = Atoms("Al2", positions=[[0, 0, 0], [1.5, 1.5, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True)
    return [labelled(atoms, energy=-1.0, forces=np.zeros((2, 3)))]


def _no_energy(ctx) -> list[Atoms]:
    atoms = ctx.structures[0].copy()
    atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    return [atoms]


def _no_forces(ctx) -> list[Atoms]:
    atoms = ctx.structures[0].copy()
    atoms.info["energy"] = -1.0
    return [atoms]


def _text_energy(ctx) -> list[Atoms]:
    atoms = ctx.structures[0].copy()
    atoms.info["energy"] = "-1.0 eV"
    atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    return [atoms]


def _nan_positions(ctx) -> list[Atoms]:
    atoms = ctx.structures[0].copy()
    atoms.positions[2] = np.nan
    atoms.info["energy"] = -1.0
    atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    return [atoms]


def _forces_in_mev(ctx) -> list[Atoms]:
    return [labelled(atoms, forces=1000 * atoms.get_forces()) for atoms in ctx.structures[:6]]


def _energies_partly_in_kj_per_mol(ctx) -> list[Atoms]:
    """DFT-like total energies (EMT's plus -3.5 eV/atom), the last three converted to kJ/mol."""
    data = [labelled(atoms, energy=atoms.get_potential_energy() - 3.5 * len(atoms)) for atoms in ctx.structures[:6]]
    return data[:3] + [labelled(atoms, energy=96.485 * atoms.get_potential_energy()) for atoms in data[3:]]


def _from_structures_mismatch(ctx):
    from aiida import orm

    from aiida_autopipec.data import TrainingSetData

    structure = orm.StructureData(ase=ctx.structures[0])
    return TrainingSetData.from_structures([structure, structure], [-1.0], [np.zeros((len(ctx.structures[0]), 3))])


def _merge(ctx, *sets):
    from aiida_autopipec.data import TrainingSetData

    return TrainingSetData.merge(list(sets))


def _restart_potential(ctx):
    from aiida import orm

    return orm.SinglefileData.from_string("this is not a potential\n", filename="interim.yaml")


def _yace_with_other_elements():
    from aiida_autopipec.data import PotentialData

    yace = (RECORDED / "output_potential.yace").read_text().replace("elements: [Al, Cu]", "elements: [Al, Ni]", 1)
    return PotentialData(yace=yace.encode(), yaml=RECORDED / "output_potential.yaml")


def _potential_without_yaml():
    from aiida_autopipec.data import PotentialData

    return PotentialData(yace=RECORDED / "output_potential.yace")


def _potential_from_text():
    from aiida_autopipec.data import PotentialData

    return PotentialData(yace=RECORDED / "output_potential.yace", yaml=b"just: [some, yaml]\n")


def _potential_bad_baseline():
    from aiida_autopipec.data import PotentialData

    return PotentialData(
        yace=RECORDED / "output_potential.yace",
        yaml=RECORDED / "output_potential.yaml",
        baseline={"type": "lennard-jones", "pair_cutoffs": {}},
    )


def _untrusted_pickle(ctx):
    path = ctx.tmp_path / "someone_elses.pckl.gzip"
    path.write_bytes(b"not read")
    return generator().generate(path)


STORED = "TrainingSetData: before storing"
DATASET = "learning/dataset.py"
READERS = "learning/readers.py"
CONFIG = "config.py (pydantic)"
GENERATOR = "learning/config_gen.py"
FIT_VALIDATOR = "PacemakerCalculation input validator"
LOOP_VALIDATOR = "ActiveLearningWorkChain input validator"

CASES: list[Case] = [
    # -- data through the Python API -------------------------------------------------------------------------
    Case(
        "data-empty",
        "API",
        "`TrainingSetData.from_ase([])`",
        ("the dataset is empty",),
        DATASET,
        lambda ctx: _from_ase([]),
    ),
    Case(
        "data-zero-atoms",
        "API",
        "a structure with no atoms",
        ("structure 0: has no atoms",),
        DATASET,
        lambda ctx: _from_ase([Atoms()]),
    ),
    Case(
        "data-not-atoms",
        "API",
        "a string in place of `ase.Atoms`",
        ("expected ase.Atoms, got str",),
        DATASET,
        lambda ctx: _from_ase(["Al"]),
    ),
    Case(
        "data-no-energy",
        "API",
        "forces but no energy",
        ("structure 0", "no energy"),
        DATASET,
        lambda ctx: _from_ase(_no_energy(ctx)),
    ),
    Case(
        "data-no-forces",
        "API",
        "energy but no forces",
        ("structure 0", "no forces"),
        DATASET,
        lambda ctx: _from_ase(_no_forces(ctx)),
    ),
    Case(
        "data-energy-nan",
        "API",
        "energy NaN",
        ("structure 0: energy contain NaN or inf",),
        DATASET,
        lambda ctx: _from_ase(first_with(ctx, energy=float("nan"))),
    ),
    Case(
        "data-energy-inf",
        "API",
        "energy +inf",
        ("structure 0: energy contain NaN or inf",),
        DATASET,
        lambda ctx: _from_ase(first_with(ctx, energy=float("inf"))),
    ),
    Case(
        "data-forces-nan",
        "API",
        "one force component NaN",
        ("structure 0: forces contain NaN or inf",),
        DATASET,
        lambda ctx: _from_ase(first_with(ctx, forces=np.where(np.eye(8, 3) > 0, np.nan, 0.0))),
    ),
    Case(
        "data-forces-inf",
        "API",
        "one force component -inf",
        ("structure 0: forces contain NaN or inf",),
        DATASET,
        lambda ctx: _from_ase(first_with(ctx, forces=np.where(np.eye(8, 3) > 0, -np.inf, 0.0))),
    ),
    Case(
        "data-energy-text",
        "API",
        "energy `'-1.0 eV'` (a string) in extxyz info",
        ("energy '-1.0 eV' is not a number",),
        DATASET,
        lambda ctx: _from_ase(_text_energy(ctx)),
    ),
    Case(
        "data-forces-shape",
        "API",
        "forces of shape (8, 2)",
        ("forces have shape (8, 2), expected (8, 3)",),
        DATASET,
        lambda ctx: _from_ase(first_with(ctx, forces=np.zeros((8, 2)))),
    ),
    Case(
        "data-forces-one-per-structure",
        "API",
        "forces of shape (3,) (one vector for the structure)",
        ("forces have shape (3,), expected (8, 3)",),
        DATASET,
        lambda ctx: _from_ase(first_with(ctx, forces=np.zeros(3))),
    ),
    Case(
        "data-positions-nan",
        "API",
        "a NaN position",
        ("structure 0: positions contain NaN or inf",),
        DATASET,
        lambda ctx: _from_ase(_nan_positions(ctx)),
    ),
    Case(
        "data-overlapping-atoms",
        "API",
        "two atoms 0.05 Å apart",
        ("atoms overlap", "0.1 Å"),
        DATASET,
        lambda ctx: _from_ase(_overlapping(ctx)),
    ),
    Case(
        "data-degenerate-cell",
        "API",
        "periodic cell with coplanar vectors",
        ("periodic cell is degenerate (zero volume)",),
        DATASET,
        lambda ctx: _from_ase(_degenerate_cell(ctx)),
    ),
    Case(
        "data-element-not-in-config",
        "API",
        "Al-Cu data with `elements=['Al']`",
        ("element(s) ['Cu'] that are not in elements ['Al']",),
        DATASET,
        lambda ctx: _from_ase(structures(ctx), elements=["Al"]),
    ),
    Case(
        "data-from-structures-count",
        "API",
        "`from_structures` with 2 structures and 1 energy",
        ("got 2 structures, 1 energies and 1 force arrays",),
        "TrainingSetData.from_structures",
        _from_structures_mismatch,
    ),
    Case(
        "data-merge-nothing",
        "API",
        "`TrainingSetData.merge([])`",
        ("nothing to merge",),
        "TrainingSetData.merge",
        lambda ctx: _merge(ctx),
    ),
    Case(
        "data-merge-mixed",
        "API",
        "merging a labelled and an unlabelled set",
        ("cannot merge labelled and unlabelled sets",),
        "TrainingSetData.merge",
        lambda ctx: _merge(ctx, training_set(ctx, 2), unlabelled_set(ctx, 2)),
    ),
    Case(
        "units-forces-mev",
        "API",
        "forces in meV/Å (1000x)",
        ("are the forces in eV/Å",),
        f"{DATASET} (UnitsWarning)",
        lambda ctx: _from_ase(_forces_in_mev(ctx)),
        warning=True,
    ),
    Case(
        "units-energies-mixed",
        "API",
        "half of the energies in kJ/mol, half in eV",
        ("are all energies in eV",),
        f"{DATASET} (UnitsWarning)",
        lambda ctx: _from_ase(_energies_partly_in_kj_per_mol(ctx)),
        warning=True,
    ),
    # -- files ----------------------------------------------------------------------------------------------
    Case(
        "extxyz-missing",
        "API",
        "`from_file` of a path that does not exist",
        ("missing.extxyz: no such file",),
        READERS,
        lambda ctx: _from_file(ctx.tmp_path / "missing.extxyz"),
    ),
    Case(
        "extxyz-corrupt",
        "API",
        "`from_file` of a text that is not extxyz",
        ("cannot be read as extxyz",),
        READERS,
        lambda ctx: _from_file(write_text(ctx, "corrupt.extxyz", "8\nthis is not = an extxyz [header\n")),
    ),
    Case(
        "extxyz-truncated",
        "API",
        "an extxyz file cut off in the middle",
        ("cannot be read as extxyz",),
        READERS,
        lambda ctx: _from_file(extxyz(ctx, "truncated.extxyz", keep=0.5)),
    ),
    Case(
        "extxyz-empty",
        "API",
        "an empty extxyz file",
        ("contains no structures",),
        READERS,
        lambda ctx: _from_file(write_text(ctx, "empty.extxyz", "")),
    ),
    Case(
        "extxyz-binary",
        "API",
        "binary garbage named .extxyz",
        ("cannot be read as extxyz",),
        READERS,
        lambda ctx: _from_file(write_text(ctx, "binary.extxyz", bytes(range(256)) * 4)),
    ),
    Case(
        "db-missing",
        "API",
        "`from_ase_db` of a path that does not exist",
        ("no such database file",),
        DATASET,
        lambda ctx: _from_db(ctx.tmp_path / "missing.db"),
    ),
    Case(
        "db-corrupt",
        "API",
        "binary garbage named .db",
        ("cannot be read as an ASE database",),
        DATASET,
        lambda ctx: _from_db(write_text(ctx, "corrupt.db", b"\x00garbage" * 64)),
    ),
    Case(
        "db-corrupt-json",
        "API",
        "a broken JSON database",
        ("cannot be read as an ASE database",),
        DATASET,
        lambda ctx: _from_db(write_text(ctx, "corrupt.json", '{"1": {broken')),
    ),
    Case(
        "db-empty",
        "API",
        "an empty (0-byte) database file",
        ("the file is empty, not an ASE database",),
        DATASET,
        lambda ctx: _from_db(write_text(ctx, "empty.db", b"")),
    ),
    Case(
        "db-no-match",
        "API",
        "a selection that matches no row",
        ("matched no rows",),
        DATASET,
        lambda ctx: _from_db(ase_db(ctx), config="test"),
    ),
    Case(
        "db-bad-selection",
        "API",
        "selection `energy>abc` (not a number)",
        ("the selection 'energy>abc' cannot be applied", "must be a number"),
        DATASET,
        lambda ctx: _from_db(ase_db(ctx), "energy>abc"),
    ),
    Case(
        "db-unknown-type",
        "API",
        "`from_ase_db` of a `.txt` file",
        ("cannot be read as an ASE database", "Unknown database type"),
        DATASET,
        lambda ctx: _from_db(write_text(ctx, "data.txt", "hello\n")),
    ),
    Case(
        "db-unlabelled",
        "API",
        "database rows without energy or forces",
        ("no energy",),
        DATASET,
        lambda ctx: _from_db(ase_db(ctx, "bare.db", [atoms.copy() for atoms in ctx.structures[:2]])),
    ),
    # -- configuration --------------------------------------------------------------------------------------
    Case(
        "config-unknown-element",
        "API",
        "`elements=['Al', 'Qq']`",
        ("unknown element symbol(s) ['Qq']",),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al", "Qq"]),
    ),
    Case(
        "config-hostile-element",
        "API",
        "`elements=['$(touch /tmp/pwned)']`",
        ("unknown element symbol(s)",),
        CONFIG,
        lambda ctx: SystemConfig(elements=["$(touch /tmp/pwned)"]),
    ),
    Case(
        "config-duplicate-element",
        "API",
        "`elements=['Al', 'Cu', 'Al']`",
        ("duplicate element symbol(s) ['Al']",),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al", "Cu", "Al"]),
    ),
    Case(
        "config-no-elements",
        "API",
        "`elements=[]`",
        ("at least one element symbol is required",),
        CONFIG,
        lambda ctx: SystemConfig(elements=[]),
    ),
    Case(
        "config-cutoff-zero",
        "API",
        "`cutoff=0`",
        ("training.cutoff", "greater than 0"),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], cutoff=0),
    ),
    Case(
        "config-cutoff-huge",
        "API",
        "`cutoff=20` (Å)",
        ("training.cutoff", "less than or equal to 15"),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], cutoff=20),
    ),
    Case(
        "config-cutoff-below-repulsion",
        "API",
        "`cutoff=1.0` Å (shorter than any Al-Cu bond)",
        ("cutoff: 1.0 Å does not reach past the repulsion cutoff",),
        GENERATOR,
        lambda ctx: generate(cutoff=1.0),
    ),
    Case(
        "config-unknown-field",
        "API",
        "misspelt field `cutof`",
        ("cutof", "Extra inputs are not permitted"),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], training={"cutof": 4}),
    ),
    Case(
        "config-wrong-type",
        "API",
        "`maxiter='many'`",
        ("training.maxiter", "valid integer"),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], maxiter="many"),
    ),
    Case(
        "config-threshold-zero",
        "API",
        "`rmse_forces_threshold=0`",
        ("training.rmse_forces_threshold", "greater than 0"),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], rmse_forces_threshold=0),
    ),
    Case(
        "config-test-size-one",
        "API",
        "`test_size=1.0`",
        ("training.test_size", "less than 1"),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], test_size=1.0),
    ),
    Case(
        "config-zbl-inverted",
        "API",
        "`zbl_cutoffs={'Al-Cu': (3.0, 2.0)}`",
        ("'Al-Cu' needs 0 < inner <= outer (Å)",),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al", "Cu"], zbl_cutoffs={"Al-Cu": (3.0, 2.0)}),
    ),
    Case(
        "config-reference-missing",
        "API",
        "reference energy for Al only, elements Al and Cu",
        ("no value for element(s) ['Cu']",),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al", "Cu"], reference_energies={"Al": -3.0}),
    ),
    Case(
        "config-reference-nan",
        "API",
        "reference energy NaN",
        ("values must be finite numbers",),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], reference_energies={"Al": float("nan")}),
    ),
    Case(
        "config-gpu-limit-on-cpu",
        "API",
        "`gpu_memory_limit` with `device='cpu'`",
        ("only allowed together with device='gpu'",),
        CONFIG,
        lambda ctx: SystemConfig(elements=["Al"], device="cpu", gpu_memory_limit=1000),
    ),
    # -- expert overrides of Pacemaker's input.yaml -----------------------------------------------------------
    Case(
        "override-typo",
        "API",
        "`{'fit': {'maxitr': 5}}`",
        ("fit.maxitr: unknown key", "did you mean 'maxiter'"),
        GENERATOR,
        lambda ctx: generator({"fit": {"maxitr": 5}}),
    ),
    Case(
        "override-managed-key",
        "API",
        "`{'data': {'filename': 'x.pckl.gzip'}}`",
        ("data.filename: cannot be overridden",),
        GENERATOR,
        lambda ctx: generator({"data": {"filename": "x"}}),
    ),
    Case(
        "override-callbacks",
        "API",
        "`{'fit': {'callbacks': ['os.system']}}`",
        ("callbacks import arbitrary Python code",),
        GENERATOR,
        lambda ctx: generator({"fit": {"callbacks": ["os.system"]}}),
    ),
    Case(
        "override-misplaced-block-key",
        "API",
        "`{'potential': {'bonds': {'rcut': 6}}}`",
        ("put 'rcut' under ALL or a species key",),
        GENERATOR,
        lambda ctx: generator({"potential": {"bonds": {"rcut": 6}}}),
    ),
    Case(
        "override-bad-optimizer",
        "API",
        "`{'fit': {'optimizer': 'FOO'}}`",
        ("fit.optimizer: 'FOO' is not one of",),
        GENERATOR,
        lambda ctx: generate({"fit": {"optimizer": "FOO"}}),
    ),
    Case(
        "override-negative-maxiter",
        "API",
        "`{'fit': {'maxiter': -1}}`",
        ("fit.maxiter: must be a positive integer",),
        GENERATOR,
        lambda ctx: generate({"fit": {"maxiter": -1}}),
    ),
    Case(
        "generator-untrusted-pickle",
        "API",
        "`generate(path)` that would have to unpickle `path`",
        ("reading it means unpickling it",),
        GENERATOR,
        _untrusted_pickle,
    ),
    # -- potentials -----------------------------------------------------------------------------------------
    Case(
        "potential-yace-only",
        "API",
        "`PotentialData(yace=...)` without the .yaml",
        ("needs both the .yace and the B-basis .yaml",),
        "PotentialData",
        lambda ctx: _potential_without_yaml(),
    ),
    Case(
        "potential-not-bbasis",
        "API",
        "a YAML that is not a B-basis potential",
        ("not a B-basis potential",),
        "learning/potential.py",
        lambda ctx: _potential_from_text(),
    ),
    Case(
        "potential-element-mismatch",
        "API",
        ".yace for Al-Ni with the .yaml of Al-Cu",
        ("differ from .yaml elements",),
        "PotentialData",
        lambda ctx: _yace_with_other_elements(),
    ),
    Case(
        "potential-bad-baseline",
        "API",
        "baseline of type 'lennard-jones'",
        ("baseline type must be 'zbl'",),
        "PotentialData",
        lambda ctx: _potential_bad_baseline(),
    ),
    # -- PacemakerCalculation -------------------------------------------------------------------------------
    Case(
        "fit-unlabelled",
        "process",
        "unlabelled training set",
        ("training_set: is unlabelled",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, training_set=unlabelled_set(ctx)),
    ),
    Case(
        "fit-empty-set",
        "process",
        "an empty `TrainingSetData()`",
        ("training_set: the set is empty",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, training_set=_from_empty()),
    ),
    Case(
        "fit-unknown-parameter",
        "process",
        "parameters `{'cutof': 4}`",
        ("parameters:", "cutof", "Extra inputs are not permitted"),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"cutof": 4}),
    ),
    Case(
        "fit-parameter-type",
        "process",
        "parameters `{'cutoff': 'five'}`",
        ("parameters: training.cutoff", "valid number"),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"cutoff": "five"}),
    ),
    Case(
        "fit-kappa-out-of-range",
        "process",
        "parameters `{'kappa': 2}`",
        ("parameters: training.kappa", "less than or equal to 1"),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"kappa": 2}),
    ),
    Case(
        "fit-elements-of-data-not-in-config",
        "process",
        "Al-Cu data with parameters `{'elements': ['Al']}`",
        ("training_set: contains element(s) ['Cu'] that are not in elements ['Al']",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"elements": ["Al"]}),
    ),
    Case(
        "fit-settings-unknown",
        "process",
        "settings `{'retrieve': True}`",
        ("settings: unknown key(s) ['retrieve']",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, settings=_dict({"retrieve": True})),
    ),
    Case(
        "fit-settings-override-typo",
        "process",
        "settings.pacemaker `{'fit': {'maxitr': 5}}`",
        ("settings.pacemaker: fit.maxitr: unknown key",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, settings=_dict({"pacemaker": {"fit": {"maxitr": 5}}})),
    ),
    Case(
        "fit-settings-override-value",
        "process",
        "settings.pacemaker `{'fit': {'maxiter': -1}}`",
        ("fit.maxiter: must be a positive integer",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, settings=_dict({"pacemaker": {"fit": {"maxiter": -1}}})),
    ),
    Case(
        "fit-test-split-empty",
        "process",
        "`test_size=0.01` of 6 structures",
        ("holds out 0",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"test_size": 0.01}),
    ),
    Case(
        "fit-too-few-functions",
        "process",
        "3 functions per element for 3 elements (4 blocks each)",
        ("fewer than the 4 basis blocks",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"elements": ["Al", "Cu", "Ni"], "number_of_functions_per_element": 3}),
    ),
    Case(
        "fit-cutoff-below-repulsion",
        "process",
        "`cutoff=1.0` Å",
        ("does not reach past the repulsion cutoff",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"cutoff": 1.0}),
    ),
    Case(
        "fit-append-text",
        "process",
        "`metadata.options.append_text`",
        ("append_text: not supported",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, metadata={"options": {"append_text": "echo hi"}}),
    ),
    Case(
        "fit-restart-not-potential",
        "process",
        "restart_potential that is not a B-basis .yaml",
        ("restart_potential: not a Pacemaker B-basis .yaml",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, restart_potential=_restart_potential(ctx)),
    ),
    Case(
        "fit-initial-and-restart",
        "process",
        "both initial_potential and restart_potential",
        ("give at most one",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(
            ctx, initial_potential=recorded_potential(), restart_potential=_restart_potential(ctx)
        ),
    ),
    Case(
        "fit-initial-other-elements",
        "process",
        "Al-Cu initial potential for Al-Cu-Ni elements",
        ("initial_potential: covers ['Al', 'Cu'] but the fit needs ['Al', 'Cu', 'Ni']",),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"elements": ["Al", "Cu", "Ni"]}, initial_potential=recorded_potential()),
    ),
    Case(
        "fit-element-without-data",
        "process",
        "`elements` [Al, Cu, Ni] for Al-Cu training data",
        ("training_set: has no atoms of ['Ni']", "parameters.elements names them"),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, {"elements": ["Al", "Cu", "Ni"]}),
    ),
    Case(
        "fit-test-set-widens-elements",
        "process",
        "a test set with Fe for Al-Cu training data",
        ("training_set: has no atoms of ['Fe']", "the test_set names them"),
        FIT_VALIDATOR,
        lambda ctx: run_pacemaker(ctx, test_set=iron_set()),
    ),
    Case(
        "fit-label-too-long",
        "process",
        "a 300-character `metadata.label`",
        ("metadata.label: 300 characters, at most 255",),
        "label port validator (calculations/common.py)",
        lambda ctx: run_pacemaker(ctx, metadata={"label": "x" * 300}),
    ),
    Case(
        "fit-wrong-node-type",
        "process",
        "a `StructureData` as training_set",
        ("training_set",),
        "port type check",
        lambda ctx: run_pacemaker(ctx, training_set=_structure(ctx)),
    ),
    # -- PacemakerBaseWorkChain -----------------------------------------------------------------------------
    Case(
        "base-bad-parameters",
        "process",
        "pacemaker.parameters `{'maxiter': 0}`",
        ("training.maxiter", "greater than 0"),
        "PacemakerCalculation validator (exposed)",
        lambda ctx: run_base(ctx, {**FIT, "maxiter": 0}),
    ),
    Case(
        "base-max-iterations-zero",
        "process",
        "`max_iterations=0`",
        ("max_iterations: must be at least 1",),
        "PacemakerBaseWorkChain port validator",
        lambda ctx: run_base(ctx, FIT, max_iterations=_int(0)),
    ),
    # -- ActiveLearningWorkChain ----------------------------------------------------------------------------
    Case(
        "loop-label-too-long",
        "process",
        "a 300-character `metadata.label`",
        ("metadata.label: 300 characters, at most 255",),
        "label port validator (calculations/common.py)",
        lambda ctx: run_loop(ctx, metadata={"label": "x" * 300}),
    ),
    Case(
        "loop-split-loses-an-element",
        "process",
        "no test_set, and the only Fe cell falls into the held-out part",
        ("leaves no atoms of ['Fe'] to train on",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, training_set=iron_only_in_held_out_part(ctx)),
    ),
    Case(
        "loop-max-iterations-zero",
        "process",
        "convergence `{'max_iterations': 0}`",
        ("convergence: max_iterations", "greater than or equal to 1"),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, {"max_iterations": 0}),
    ),
    Case(
        "loop-threshold-negative",
        "process",
        "convergence `{'rmse_forces': -0.1}`",
        ("convergence: rmse_forces", "greater than 0"),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, {"rmse_forces": -0.1}),
    ),
    Case(
        "loop-energy-threshold-zero",
        "process",
        "convergence `{'rmse_energy': 0}`",
        ("convergence: rmse_energy", "greater than 0"),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, {"rmse_energy": 0}),
    ),
    Case(
        "loop-trust-levels-inverted",
        "process",
        "convergence `gamma_lower=5, gamma_upper=2`",
        ("gamma_lower (5.0) must be below gamma_upper (2.0)",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, {"gamma_lower": 5, "gamma_upper": 2}),
    ),
    Case(
        "loop-convergence-typo",
        "process",
        "convergence `{'max_new_structurs': 3}`",
        ("max_new_structurs", "Extra inputs are not permitted"),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, {"max_new_structurs": 3}),
    ),
    Case(
        "loop-empty-candidates",
        "process",
        "an empty candidates pool",
        ("candidates: the pool is empty",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, candidates=_from_empty()),
    ),
    Case(
        "loop-unlabelled-training",
        "process",
        "unlabelled training set",
        ("training_set: is unlabelled",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, training_set=unlabelled_set(ctx)),
    ),
    Case(
        "loop-unlabelled-test-set",
        "process",
        "unlabelled test set",
        ("test_set: is unlabelled",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, test_set=unlabelled_set(ctx)),
    ),
    Case(
        "loop-bad-parameters",
        "process",
        "parameters `{'cutoff': -1}`",
        ("parameters: training.cutoff",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, parameters=_dict({"cutoff": -1})),
    ),
    Case(
        "loop-elements-of-data-not-in-config",
        "process",
        "Al-Cu data with parameters `{'elements': ['Cu']}`",
        ("contains element(s) ['Al'] that are not in elements ['Cu']",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, parameters=_dict({**FIT, "elements": ["Cu"]})),
    ),
    Case(
        "loop-candidates-foreign-element",
        "process",
        "candidates containing Fe for an Al-Cu potential",
        ("candidates: contain element(s) ['Fe'] that the potential will not cover",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, candidates=iron_set(labelled_data=False)),
    ),
    Case(
        "loop-no-labelling-code",
        "process",
        "candidates without `labeling.code`",
        ("labeling.code: needed to",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, labeling={}),
    ),
    Case(
        "loop-labeller-missing-module",
        "process",
        "labeller `ase.calculators.nosuch.Calc`",
        ("labeling.calculator.import_path", "cannot be imported", "No module named 'ase.calculators.nosuch'"),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, calculator={"import_path": "ase.calculators.nosuch.Calc"}),
    ),
    Case(
        "loop-labeller-missing-class",
        "process",
        "labeller `ase.calculators.emt.NoSuchCalculator`",
        ("has no attribute 'NoSuchCalculator'",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, calculator={"import_path": "ase.calculators.emt.NoSuchCalculator"}),
    ),
    Case(
        "loop-labeller-malformed",
        "process",
        "labeller import path `EMT`",
        ("labeling.calculator.import_path: 'EMT' is not of the form",),
        LOOP_VALIDATOR,
        lambda ctx: run_loop(ctx, calculator={"import_path": "EMT"}),
    ),
    # -- AseLabelCalculation --------------------------------------------------------------------------------
    Case(
        "label-empty",
        "process",
        "an empty structure set",
        ("structures: the set is empty",),
        "AseLabelCalculation input validator",
        lambda ctx: run_label(ctx, structures_set=_from_empty()),
    ),
    Case(
        "label-unknown-key",
        "process",
        "calculator `{'command': 'rm -rf /'}`",
        ("unknown key(s) ['command']",),
        "AseLabelCalculation input validator",
        lambda ctx: run_label(ctx, {**EMT, "command": "rm -rf /"}),
    ),
    Case(
        "label-import-path-code",
        "process",
        "import path `os.system('touch /tmp/pwned')`",
        ("is not of the form 'module.sub.ClassName'",),
        "AseLabelCalculation input validator",
        lambda ctx: run_label(ctx, {"import_path": "os.system('touch /tmp/pwned')"}),
    ),
    Case(
        "label-kwargs-nan",
        "process",
        "calculator kwargs `{'x': nan}`",
        ("not JSON-serialisable",),
        "AseLabelCalculation input validator",
        lambda ctx: run_label(ctx, {**EMT, "kwargs": {"x": float("nan")}}),
    ),
    # -- SelectionCalculation -------------------------------------------------------------------------------
    Case(
        "select-max-new-zero",
        "process",
        "`max_new_structures=0`",
        ("max_new_structures: required, an integer > 0",),
        "SelectionCalculation input validator",
        lambda ctx: run_select(ctx, {"max_new_structures": 0}),
    ),
    Case(
        "select-threshold-zero",
        "process",
        "`gamma_lower=0`",
        ("need 0 < gamma_lower < gamma_upper",),
        "SelectionCalculation input validator",
        lambda ctx: run_select(ctx, {"max_new_structures": 2, "gamma_lower": 0}),
    ),
    Case(
        "select-unknown-method",
        "process",
        "`method='random'`",
        ("parameters.method: 'random' is not one of",),
        "SelectionCalculation input validator",
        lambda ctx: run_select(ctx, {"max_new_structures": 2, "method": "random"}),
    ),
    Case(
        "select-empty-candidates",
        "process",
        "an empty candidates set",
        ("candidates: the set is empty",),
        "SelectionCalculation input validator",
        lambda ctx: run_select(ctx, candidates=_from_empty()),
    ),
    Case(
        "select-foreign-candidates",
        "process",
        "Fe candidates for an Al-Cu potential",
        ("candidates: element(s) ['Fe'] are not in the potential's elements",),
        "SelectionCalculation input validator",
        lambda ctx: run_select(ctx, candidates=iron_set(False)),
    ),
    Case(
        "select-unlabelled-training",
        "process",
        "unlabelled training set",
        ("training_set: must be the labelled set",),
        "SelectionCalculation input validator",
        lambda ctx: run_select(ctx, training_set=unlabelled_set(ctx)),
    ),
]


def cli(*arguments: str) -> str:
    """Run ``autopipec`` with ``arguments``; a failure becomes a ValueError carrying what the user saw."""
    from click.testing import CliRunner

    from aiida_autopipec.cli import autopipec

    result = CliRunner().invoke(autopipec, [str(argument) for argument in arguments])
    if result.exit_code != 0:
        raise ValueError(result.output)
    return result.output


def _nan_energy_extxyz(ctx) -> Path:
    from aiida_autopipec.learning.dataset import write_extxyz

    data = structures(ctx, 2)
    data[1] = labelled(ctx.structures[1], energy=float("nan"))
    return write_extxyz(ctx.tmp_path / "nan.extxyz", data)


CLI = "`autopipec data import`"
CASES += [
    Case(
        "cli-missing-file",
        "CLI",
        "`autopipec data import missing.extxyz`",
        ("does not exist",),
        f"{CLI} (click)",
        lambda ctx: cli("data", "import", ctx.tmp_path / "missing.extxyz"),
    ),
    Case(
        "cli-corrupt-extxyz",
        "CLI",
        "a corrupt extxyz file",
        ("Error:", "cannot be read as extxyz"),
        CLI,
        lambda ctx: cli("data", "import", write_text(ctx, "bad.extxyz", "8\nnot = extxyz [\n")),
    ),
    Case(
        "cli-nan-energy",
        "CLI",
        "an extxyz file with `energy=nan`",
        ("structure 1: energy contain NaN or inf",),
        CLI,
        lambda ctx: cli("data", "import", _nan_energy_extxyz(ctx)),
    ),
    Case(
        "cli-untrusted-pickle",
        "CLI",
        "a `.pckl.gzip` file without `--trust-pickle`",
        ("is a pickle: loading it can execute arbitrary code",),
        CLI,
        lambda ctx: cli("data", "import", write_text(ctx, "data.pckl.gzip", b"never read")),
    ),
    Case(
        "cli-select-on-extxyz",
        "CLI",
        "`--select` on an extxyz file",
        ("only applies to ASE databases",),
        CLI,
        lambda ctx: cli("data", "import", extxyz(ctx), "--select", "natoms<4"),
    ),
    Case(
        "cli-corrupt-db",
        "CLI",
        "a corrupt `.db` file",
        ("cannot be read as an ASE database",),
        CLI,
        lambda ctx: cli("data", "import", write_text(ctx, "bad.db", b"\x00garbage" * 64)),
    ),
]

TRAIN = "`autopipec train` / `learn`"
CASES += [
    Case(
        "cli-train-missing-file",
        "CLI",
        "`autopipec train missing.extxyz`",
        ("missing.extxyz: no such file",),
        TRAIN,
        lambda ctx: train(ctx, ctx.tmp_path / "missing.extxyz"),
    ),
    Case(
        "cli-train-element-missing",
        "CLI",
        "`-p 'elements=[Cu]'` on Al-Cu data (the file is not stored either)",
        ("contains element(s) ['Al'] that are not in elements ['Cu']",),
        TRAIN,
        lambda ctx: train(ctx, extxyz(ctx), "-p", "elements=[Cu]"),
    ),
    Case(
        "cli-train-unknown-element",
        "CLI",
        "`-p 'elements=[Al, Cu, Xx]'`",
        ("elements: unknown element symbol(s) ['Xx']",),
        TRAIN,
        lambda ctx: train(ctx, extxyz(ctx), "-p", "elements=[Al, Cu, Xx]"),
    ),
    Case(
        "cli-learn-calculator-typo",
        "CLI",
        "`autopipec learn --calculator ase.calculators.emt.EMTT` (labeller on this machine)",
        ("'ase.calculators.emt.EMTT' cannot be imported",),
        TRAIN,
        lambda ctx: cli(
            "learn",
            extxyz(ctx),
            "--candidates",
            extxyz(ctx, "pool.extxyz"),
            "--code",
            ctx.pacemaker_code.full_label,
            "--python-code",
            ctx.python_code.full_label,
            "--calculator",
            "ase.calculators.emt.EMTT",
        ),
    ),
    Case(
        "cli-daemon-not-running",
        "CLI",
        "`autopipec train --daemon` with no daemon running",
        ("without --daemon",),
        TRAIN,
        lambda ctx: train(ctx, extxyz(ctx), "--daemon"),
    ),
]


def train(ctx, data, *options: str) -> str:
    """``autopipec train DATA --code <the test's pacemaker> OPTIONS``."""
    return cli("train", data, "--code", ctx.pacemaker_code.full_label, *options)


def _from_empty():
    from aiida_autopipec.data import TrainingSetData

    return TrainingSetData()


def _dict(value: dict):
    from aiida import orm

    return orm.Dict(value)


def _int(value: int):
    from aiida import orm

    return orm.Int(value)


def _structure(ctx):
    from aiida import orm

    return orm.StructureData(ase=ctx.structures[0])


# -- the test ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def python_code(local_computer):
    """This Python (ASE, pyace) on the local computer, for the labelling and selection calculations."""
    from aiida import orm

    return orm.InstalledCode(label="python-bad-input", computer=local_computer, filepath_executable=sys.executable)


@pytest.fixture
def ctx(tmp_path, emt_structures, pacemaker_code, python_code):
    python_code.store()
    return SimpleNamespace(
        tmp_path=tmp_path, structures=emt_structures, pacemaker_code=pacemaker_code, python_code=python_code
    )


def _node_count() -> int:
    from aiida import orm

    return orm.QueryBuilder().append(orm.Node).count()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_before_anything_is_stored(case: Case, ctx):
    before = _node_count()
    if case.warning:
        with pytest.warns(UnitsWarning) as record:
            case.action(ctx)
        message = "\n".join(str(warning.message) for warning in record if warning.category is UnitsWarning)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnitsWarning)  # errors must not hide behind a units hint
            with pytest.raises(ValueError) as error:
                case.action(ctx)
        message = str(error.value)
    for excerpt in case.excerpts:
        assert excerpt in message, f"{case.id}: {excerpt!r} not in {message!r}"
    assert _node_count() == before, f"{case.id}: nodes were stored"


def test_importing_leaves_the_source_files_untouched(ctx):
    """Reading (also failing to read) a user's file never writes to it: ase.db would add its schema to an empty one."""
    sources = [write_text(ctx, "empty.db", b""), ase_db(ctx), extxyz(ctx), write_text(ctx, "bad.db", b"\x00" * 99)]
    before = {path: path.read_bytes() for path in sources}
    for path in sources:
        with contextlib.suppress(ValueError):
            (_from_file if path.suffix == ".extxyz" else _from_db)(path)
    assert {path: path.read_bytes() for path in sources} == before
    assert sorted(path.name for path in ctx.tmp_path.iterdir()) == sorted(path.name for path in sources)


def test_catalogue_is_large_and_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


# -- the docs table ------------------------------------------------------------------------------------------------
def catalogue_markdown() -> str:
    """The catalogue as a markdown table (the section of docs/reliability.md between the markers)."""
    lines = [
        "| # | case | layer | input | error message contains | checked in |",
        "|---|---|---|---|---|---|",
    ]
    for number, case in enumerate(CASES, start=1):
        excerpts = " … ".join(f"`{excerpt}`" for excerpt in case.excerpts).replace("|", "\\|")
        kind = "warning: " if case.warning else ""
        given = case.given.replace("|", "\\|")
        lines.append(f"| {number} | `{case.id}` | {case.layer} | {given} | {kind}{excerpts} | {case.where} |")
    return "\n".join(lines)


def _docs_section(text: str) -> str:
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[start:end].strip()


def test_docs_table_is_current():
    text = DOCS.read_text()
    assert _docs_section(text) == catalogue_markdown(), "run: python tests/test_bad_input.py"
    assert f"| **{len(CASES)}** (" in text, "update the counts in docs/reliability.md"


if __name__ == "__main__":  # rewrite the table in docs/reliability.md
    text = DOCS.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOCS.write_text(text[:start] + "\n" + catalogue_markdown() + "\n" + text[end:])
    print(f"{len(CASES)} cases written to {DOCS}")
