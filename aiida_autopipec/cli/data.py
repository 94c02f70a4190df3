"""``autopipec data import``: make a TrainingSetData from an extxyz file, an ASE database or a Pacemaker pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import click

from aiida_autopipec.cli.main import autopipec, load_or_create_profile
from aiida_autopipec.cli.utils import add_to_group, training_set_summary

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
    from aiida_autopipec.learning.dataset import read_ase_db

    file_format = _check_format_options(path, file_format, select, trust_pickle)
    if file_format == "db":
        return read_ase_db(path, select, progress=_progress_bar(path))
    return read_file(path, file_format, trust_pickle=trust_pickle).arrays.to_atoms()


def _check_format_options(path: Path, file_format: str, select, trust_pickle: bool, keys: tuple = ()) -> str:
    """The file format; options that do not apply to it, and untrusted pickles, are usage errors."""
    file_format = detect_format(path) if file_format == "auto" else file_format
    if select is not None and file_format != "db":
        raise click.BadParameter("only applies to ASE databases", param_hint="--select")
    if any(keys) and file_format != "extxyz":
        raise click.BadParameter("only applies to extxyz files", param_hint="--energy-key/--forces-key")
    if file_format == "pickle" and not trust_pickle:
        raise click.UsageError(
            f"{path} is a pickle: loading it can execute arbitrary code. If you trust the file, import it with "
            "`autopipec data import FILE --trust-pickle` (or convert it to extxyz)."
        )
    return file_format


def read_file(path: Path, file_format: str, select: str | None = None, **options):
    """:class:`~aiida_autopipec.learning.readers.ImportedData` of ``path`` (format already checked)."""
    from aiida_autopipec.learning.dataset import StructureArrays
    from aiida_autopipec.learning.readers import ImportedData, read_extxyz_data, read_pacemaker_frame

    trust_pickle = options.pop("trust_pickle", False)
    energy_key, forces_key = options.pop("energy_key", None), options.pop("forces_key", None)
    if file_format == "pickle":
        assert trust_pickle  # checked by _check_format_options
        return read_pacemaker_frame(path, **options)
    if file_format == "db":  # rows straight to arrays
        return ImportedData(StructureArrays.from_ase_db(path, select, progress=_progress_bar(path), **options))
    return read_extxyz_data(path, energy_key=energy_key, forces_key=forces_key, **options)


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


class ImportResult(NamedTuple):
    """What :func:`import_training_set_with_status` did: the stored node, whether it already existed (same
    content: structures, labels, weights, reference energies), and the reader's notes for the user."""

    node: Any
    reused: bool
    notes: list[str]

    def message(self) -> str:
        """One line for the user when the file was already stored, else ''."""
        return f"already stored as TrainingSetData<{self.node.pk}>: reusing it" if self.reused else ""


def find_stored_training_set(training_set):
    """A stored TrainingSetData with exactly the content of ``training_set`` (same ``content_hash``, which covers
    structures, labels, stress, weights and reference energies, and the same ``labelled`` flag), or None."""
    from aiida import orm

    from aiida_autopipec.data import TrainingSetData

    query = orm.QueryBuilder().append(
        TrainingSetData, filters={"attributes.content_hash": training_set.content_hash}, project="*"
    )
    query.order_by({TrainingSetData: {"id": "asc"}})
    for (node,) in query.iterall():
        if node.labelled == training_set.labelled:
            return node
    return None


def import_training_set_with_status(
    path: Path,
    file_format: str = "auto",
    select: str | None = None,
    *,
    force_new: bool = False,
    store: bool = True,
    **options,
) -> ImportResult:
    """Store the structures of ``path`` as a TrainingSetData, or return the stored one with exactly that content
    (unless ``force_new``). Options: ``trust_pickle``, ``energy_key``/``forces_key`` (extxyz), ``labelled``,
    ``elements``. Bad files and options give a Click error before anything is stored. ``store=False``: a new node
    is returned unstored (the caller stores it once the inputs it belongs to are accepted)."""
    from aiida_autopipec.data import TrainingSetData
    from aiida_autopipec.learning.dataset import DatasetError

    keys = (options.get("energy_key"), options.get("forces_key"))
    file_format = _check_format_options(path, file_format, select, options.get("trust_pickle", False), keys)
    try:
        training_set = TrainingSetData.from_imported(read_file(path, file_format, select, **options))
    except DatasetError as exc:
        hint = ""
        if options.get("labelled", True) and str(exc).endswith(("no energy", "no forces")):
            hint = " (structures without labels are candidates for `autopipec learn`: `data import FILE --unlabelled`)"
        raise click.ClickException(f"{exc}{hint}") from exc
    existing = None if force_new else find_stored_training_set(training_set)
    if existing is not None:
        return ImportResult(existing, True, training_set.import_notes)
    training_set.label = path.name
    training_set.description = f"imported from {path.resolve()}" + (f" (selection {select!r})" if select else "")
    return ImportResult(training_set.store() if store else training_set, False, training_set.import_notes)


def import_training_set(path: Path, file_format: str = "auto", select: str | None = None, **options):
    """A stored TrainingSetData of the structures in ``path`` (the already stored one with the same content unless
    ``force_new=True``); bad files give a ClickException naming the problem. See
    :func:`import_training_set_with_status` to learn whether it was reused."""
    return import_training_set_with_status(path, file_format, select, **options).node


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
@click.option("--energy-key", default=None, help="extxyz: take the energy (eV) from atoms.info[KEY], e.g. REF_energy.")
@click.option(
    "--forces-key", default=None, help="extxyz: take the forces (eV/Å) from atoms.arrays[KEY], e.g. REF_forces."
)
@click.option("--unlabelled", is_flag=True, help="Keep only the structures (active-learning candidates).")
@click.option("--force-new", is_flag=True, help="Store a new node even if one with exactly this content exists.")
@click.option("--group", default=None, metavar="LABEL", help="Add the training set to this group (created if needed).")
def import_command(
    source: Path,
    file_format: str,
    select: str | None,
    trust_pickle: bool,
    energy_key: str | None,
    forces_key: str | None,
    unlabelled: bool,
    force_new: bool,
    group: str | None,
) -> None:
    """Store SOURCE (extxyz, ASE database or Pacemaker pickle) as a TrainingSetData and print a summary.

    Pacemaker pickles are read as Pacemaker reads them: energy_corrected without energy is stored with reference
    energies 0 (nothing is subtracted again in fits), w_energy/w_forces weights are kept and used by fits, other
    columns are ignored. Importing the same content twice returns the stored node (unless --force-new).
    """
    load_or_create_profile()
    result = import_training_set_with_status(
        source,
        file_format,
        select,
        force_new=force_new,
        trust_pickle=trust_pickle,
        energy_key=energy_key,
        forces_key=forces_key,
        labelled=not unlabelled,
    )
    if result.reused:
        click.echo(result.message())
    click.echo(training_set_summary(result.node))
    for line in _details(result):
        click.echo(f"  {line}")
    add_to_group(group, result.node)
    click.echo(f"PK {result.node.pk}  UUID {result.node.uuid}")


def _details(result: ImportResult) -> list[str]:
    """Reference energies, weights, stress and the reader's notes, for the summary."""
    node, lines = result.node, []
    if node.reference_energies is not None and not node.energies_corrected:
        text = ", ".join(f"{element} {value:.6g}" for element, value in node.reference_energies.items())
        lines.append(f"reference energies (eV/atom, subtracted by fits): {text}")
    lines += [f"note: {note}" for note in result.notes]
    return lines
