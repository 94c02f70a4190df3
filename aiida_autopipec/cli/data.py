"""``autopipec data import``: make a TrainingSetData from an extxyz file, an ASE database or a Pacemaker pickle."""

from __future__ import annotations

from pathlib import Path

import click

from aiida_autopipec.cli.main import autopipec, load_or_create_profile
from aiida_autopipec.cli.utils import training_set_summary

FORMATS = ("auto", "extxyz", "db", "pickle")
PICKLE_SUFFIXES = (".pkl", ".pckl", ".pickle", ".pkl.gz", ".pckl.gz", ".pckl.gzip", ".pkl.gzip", ".pickle.gz")
DB_SUFFIXES = (".db", ".json", ".sqlite", ".sqlite3")
#: Databases with more rows than this get a progress bar.
PROGRESS_THRESHOLD = 200


def detect_format(path: Path) -> str:
    """``extxyz``, ``db`` or ``pickle`` from the file name."""
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        return "pickle"
    if name.endswith(DB_SUFFIXES):
        return "db"
    return "extxyz"


def import_structures(path: Path, file_format: str = "auto", select: str | None = None, trust_pickle: bool = False):
    """ASE structures with labels from ``path``; a pickle is read only with ``trust_pickle`` (it can run code)."""
    from aiida_autopipec.learning.dataset import read_ase_db, read_extxyz, read_pacemaker_pickle

    file_format = detect_format(path) if file_format == "auto" else file_format
    if select is not None and file_format != "db":
        raise click.BadParameter("only applies to ASE databases", param_hint="--select")
    if file_format == "pickle":
        if not trust_pickle:
            raise click.UsageError(
                f"{path} is a pickle: loading it can execute arbitrary code. If you trust the file, import it with "
                "`autopipec data import FILE --trust-pickle` (or convert it to extxyz)."
            )
        return read_pacemaker_pickle(path)
    if file_format == "db":
        return read_ase_db(path, select, progress=_progress_bar(path))
    return read_extxyz(path)


def _progress_bar(path: Path):
    """Wraps the rows of a large database in a progress bar on stderr."""

    def progress(rows, length):
        if length <= PROGRESS_THRESHOLD:
            yield from rows
            return
        stream = click.get_text_stream("stderr")
        with click.progressbar(rows, length=length, label=f"reading {path.name}", file=stream) as bar:
            yield from bar

    return progress


def import_training_set(path: Path, file_format: str = "auto", select: str | None = None, **options):
    """A stored TrainingSetData of the structures in ``path``; bad files give a ClickException naming the problem."""
    from aiida_autopipec.data import TrainingSetData
    from aiida_autopipec.learning.dataset import DatasetError, StructureArrays

    trust_pickle = options.pop("trust_pickle", False)
    try:
        if (detect_format(path) if file_format == "auto" else file_format) == "db":  # rows straight to arrays
            arrays = StructureArrays.from_ase_db(path, select, progress=_progress_bar(path), **options)
            training_set = TrainingSetData(arrays=arrays)
        else:
            structures = import_structures(path, file_format, select, trust_pickle)
            training_set = TrainingSetData.from_ase(structures, **options)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    training_set.label = path.name
    training_set.description = f"imported from {path.resolve()}" + (f" (selection {select!r})" if select else "")
    return training_set.store()


@autopipec.group()
def data() -> None:
    """Training data: import structures with energies (eV) and forces (eV/Å)."""


@data.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "file_format",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="File format; auto: .db/.json -> ASE database, .pkl/.pckl(.gz|.gzip) -> pickle, else extxyz.",
)
@click.option("--select", default=None, help="ASE database selection, e.g. 'natoms<20,energy<0'.")
@click.option("--trust-pickle", is_flag=True, help="Allow reading a Pacemaker pickle (runs code from the file).")
@click.option("--unlabelled", is_flag=True, help="Keep only the structures (active-learning candidates).")
def import_command(source: Path, file_format: str, select: str | None, trust_pickle: bool, unlabelled: bool) -> None:
    """Store SOURCE (extxyz, ASE database or Pacemaker pickle) as a TrainingSetData and print a summary."""
    load_or_create_profile()
    training_set = import_training_set(source, file_format, select, trust_pickle=trust_pickle, labelled=not unlabelled)
    click.echo(training_set_summary(training_set))
    click.echo(f"PK {training_set.pk}  UUID {training_set.uuid}")
