"""The ```python blocks of README.md and docs/*.md run as written, as a user runs them, so the docs cannot drift.

Convention (also in docs/index.md, "Contributing to the docs"):

* The ```python blocks of one Markdown file are the cells of one script, like a notebook: they run in order, in one
  ``python`` process (``load_profile()`` is the doc's own business), in a working directory of their own. A later
  block may use the names an earlier block of the same file defined, and nothing else: every other name is
  imported or defined in the doc.
* The profile is the one a new user has: ``verdi presto`` in a fresh ``AIIDA_PATH`` (what ``autopipec quickstart``
  runs), then ``autopipec setup`` (the local codes). No daemon, no aiida-core pytest fixture; one profile for the
  module, so a doc whose reader needs earlier results (provenance queries, plotting a fit) runs after the doc that
  makes them (``DocSpec.after``, what its reader would have run before).
* The files a doc names (``train.extxyz``, ``dft.db``, ...) are written into its working directory by this module
  with small EMT-labelled Al-Cu data (``FILES``); the doc says what they hold, next to the block.
* The code runs exactly as written except for the sizes in ``SHRINK``: ``"maxiter": N`` / ``maxiter=N`` becomes
  ``MAXITER`` and ``"max_iterations": N`` becomes ``MAX_ITERATIONS``, so that the fits take seconds.
* A block that cannot run here (a remote cluster, a code that is not a dependency) has
  ``<!-- not run: the reason -->`` as the last non-blank line before its fence; each one is reported as a skipped
  test with its reason. Every other ```python block runs; a marker that does not precede a ```python block fails.
* Besides exiting 0, each doc must print what it promises (``DocSpec.prints``), leave the files it says it writes
  (``DocSpec.writes``), and every AiiDA process it started must have finished with exit status 0 (an active-learning
  loop may also stop with 501/502: not converged within the shrunk budget, or nothing left to select).

``bash``/``console`` blocks are not run here (the command line has its own user tests).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.user.conftest import UserShell

pytestmark = [pytest.mark.user, pytest.mark.pacemaker]

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: The only changes made to the code of a doc: the sizes that would make it slow.
MAXITER = 10
MAX_ITERATIONS = 2
SHRINK = (
    (re.compile(r"""(["']maxiter["']\s*:\s*|\bmaxiter\s*=\s*)\d+"""), rf"\g<1>{MAXITER}"),
    (re.compile(r"""(["']max_iterations["']\s*:\s*|\bmax_iterations\s*=\s*)\d+"""), rf"\g<1>{MAX_ITERATIONS}"),
)

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`{]*)")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->\s*$")
ANY_NOT_RUN = re.compile(r"^\s*<!--\s*not[ -]run", re.IGNORECASE)  # a marker line, well formed or not
PYTHON_INFO = {"python", "py", "python3"}

#: Exit statuses, besides 0, that a process started by a doc may end with (the budget is shrunk by ``SHRINK``).
ALLOWED_EXIT_STATUS = {"ActiveLearningWorkChain": {501, 502}}


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    source: str
    not_run: str | None  # the reason of a `<!-- not run: ... -->` marker


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(path: Path) -> list[tuple[int, str, str, str | None]]:
    """``(line, info, source, previous non-blank line)`` of every fenced block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence = opening["fence"]
        end = index + 1
        while end < len(lines) and not re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[end]):
            end += 1
        previous = next((line for line in reversed(lines[:index]) if line.strip()), None)
        source = textwrap.dedent("\n".join(lines[index + 1 : end]))
        blocks.append((index + 1, opening["info"].lower(), source, previous))
        index = end + 1
    return blocks


def python_blocks(path: Path) -> list[Block]:
    blocks = []
    for line, info, source, previous in fenced_blocks(path):
        if info in PYTHON_INFO:
            marker = NOT_RUN.match(previous or "")
            blocks.append(Block(relative(path), line, source, marker["reason"] if marker else None))
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in python_blocks(path)]
RUN_DOCS = sorted({block.doc for block in ALL_BLOCKS if block.not_run is None})
NOT_RUN_BLOCKS = [block for block in ALL_BLOCKS if block.not_run is not None]


def script_of(doc: str) -> tuple[str, list[str]]:
    """The doc's runnable blocks as one script (each block headed by its place in the doc), and what was shrunk."""
    parts, shrunk = [], []
    for block in ALL_BLOCKS:
        if block.doc != doc or block.not_run is not None:
            continue
        source = block.source
        for pattern, replacement in SHRINK:
            for match in pattern.finditer(source):
                shrunk.append(f"{doc}:{block.line}: {match.group(0)} -> {pattern.sub(replacement, match.group(0))}")
            source = pattern.sub(replacement, source)
        parts.append(f"# --- {doc}, block at line {block.line} ---\n{source}\n")
    return "\n".join(parts), shrunk


# -- the files the docs name ---------------------------------------------------------------------------------------
def _write_extxyz(path: Path, num: int, seed: int, rattle: float = 0.08, labelled: bool = True) -> None:
    from aiida_autopipec.learning.dataset import write_extxyz
    from aiida_autopipec.learning.reference_data import emt_dataset

    write_extxyz(path, emt_dataset(num, seed=seed, rattle=rattle, labelled=labelled))


def _write_dft_db(path: Path) -> None:
    """An ASE database of labelled structures; rows carry ``config`` = ``train`` or ``held_out``."""
    from ase.db import connect

    from aiida_autopipec.learning.reference_data import emt_dataset

    with connect(path) as database:
        for atoms in emt_dataset(12, seed=1):
            database.write(atoms, config="train")
        for atoms in emt_dataset(4, seed=2):
            database.write(atoms, config="held_out")


#: Small EMT-labelled Al-Cu sets (8-atom fcc cells); what each doc says its file holds.
FILES = {
    "train.extxyz": lambda path: _write_extxyz(path, 12, seed=1),
    "test.extxyz": lambda path: _write_extxyz(path, 4, seed=2),
    "dft.db": _write_dft_db,
    "initial.extxyz": lambda path: _write_extxyz(path, 6, seed=1, rattle=0.03),
    "held_out.extxyz": lambda path: _write_extxyz(path, 4, seed=2),
    "pool.extxyz": lambda path: _write_extxyz(path, 20, seed=3, labelled=False),
}

FLOAT = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class DocSpec:
    files: tuple[str, ...] = ()  # keys of FILES written into the doc's working directory
    after: tuple[str, ...] = ()  # docs whose results this doc's reader has in the profile
    prints: tuple[str, ...] = ()  # regular expressions (multiline) the output must match
    writes: tuple[str, ...] = ()  # files the doc says it writes, relative to its working directory


DOCS = {
    "README.md": DocSpec(
        files=("train.extxyz", "dft.db"),
        prints=(
            rf"'rmse_forces': {FLOAT}",  # the tour's test metrics
            rf"^{FLOAT} (True|False)$",  # PacemakerRunner: force RMSE, converged?
            rf"^0 {FLOAT}$",  # PacemakerBaseWorkChain: exit status 0, test force RMSE
            r"^4 \[0, 1, 2, 3\]$",  # AseLabelCalculation labelled all 4 candidates, in order
        ),
        writes=("export/potential.yace", "export/potential.yaml", "export/lammps.in", "fit/output_potential.yace"),
    ),
    "docs/quickstart.md": DocSpec(files=("train.extxyz",), prints=(rf"'rmse_forces': {FLOAT}",)),
    "docs/cli.md": DocSpec(files=("train.extxyz", "test.extxyz"), prints=(rf"'maxiter': {MAXITER}\b",)),
    "docs/tutorial.md": DocSpec(
        prints=(rf"^NVE drift {FLOAT} eV/atom$", r"'test_rmse_forces'"), writes=("tutorial_export/potential.yace",)
    ),
    "docs/active_learning.md": DocSpec(
        files=("initial.extxyz", "held_out.extxyz", "pool.extxyz"),
        prints=(rf"^(0|501|502) {FLOAT}$", r"^fit \d+: \d+ structures, potential \S+, test F-RMSE"),
    ),
    "docs/provenance.md": DocSpec(after=("docs/tutorial.md",), prints=(rf"^1 \d+ \S+ {FLOAT}$",)),
    "docs/zbl.md": DocSpec(after=("docs/quickstart.md",), writes=("dimer_curves.png",)),
}

PROCESSES_SINCE = """
import datetime, json, os
from aiida import load_profile, orm

load_profile()
since = datetime.datetime.fromtimestamp(float(os.environ["SINCE"]), tz=datetime.timezone.utc)
query = orm.QueryBuilder().append(
    orm.ProcessNode,
    filters={"ctime": {">": since}},
    project=["id", "attributes.process_label", "attributes.process_state", "attributes.exit_status"],
)
print(json.dumps(query.all()))
"""


@dataclass
class DocRun:
    output: str
    workdir: Path
    seconds: float


class DocRunner:
    """Runs each doc once in the module's profile (a doc named in ``after`` first); remembers results and failures."""

    def __init__(self, shell: UserShell):
        self.shell = shell
        self.done: dict[str, DocRun | str] = {}

    def run(self, doc: str) -> DocRun:
        if doc not in self.done:
            try:
                self.done[doc] = self._run(doc)
            except BaseException as exc:  # pytest.fail raises an exception outside Exception
                self.done[doc] = f"{doc} failed:\n{exc}"
                raise
        outcome = self.done[doc]
        if isinstance(outcome, str):
            pytest.fail(outcome, pytrace=False)
        return outcome

    def _run(self, doc: str) -> DocRun:
        spec = DOCS.get(doc, DocSpec())
        for earlier in spec.after:
            self.run(earlier)
        workdir = self.shell.workdir / doc.replace("/", "_").removesuffix(".md")
        workdir.mkdir()
        shell = UserShell(workdir, self.shell.env)
        for name in spec.files:
            FILES[name](workdir / name)
        source, shrunk = script_of(doc)
        script = workdir / (Path(doc).stem + "_blocks.py")
        script.write_text(source)
        since = time.time()
        result = shell.run(f"{shlex.quote(sys.executable)} {shlex.quote(script.name)}", check=False)
        seconds = time.time() - since
        script.with_suffix(".out").write_text(result.output)
        context = f"{doc} ({script}; shrunk: {shrunk or 'nothing'}), exit {result.returncode}:\n{result.output}"
        if result.returncode != 0:
            pytest.fail(context, pytrace=False)

        processes = json.loads(shell.python(PROCESSES_SINCE, SINCE=str(since)).output.strip().splitlines()[-1])
        for pk, label, state, exit_status in processes:
            allowed = {0} | ALLOWED_EXIT_STATUS.get(label, set())
            assert state == "finished" and exit_status in allowed, f"{label}<{pk}> {state} [{exit_status}]\n{context}"
        for pattern in spec.prints:
            assert re.search(pattern, result.output, re.MULTILINE), f"no line matching {pattern!r}\n{context}"
        for name in spec.writes:
            assert (workdir / name).is_file() and (workdir / name).stat().st_size > 0, f"no {name}\n{context}"
        print(f"{doc}: {seconds:.0f} s, {len(processes)} processes; shrunk: {shrunk or 'nothing'}")
        return DocRun(result.output, workdir, seconds)


@pytest.fixture(scope="module")
def doc_runner(user_shell):
    """One `verdi presto` profile for the module, with the local codes, as after the README's install step."""
    user_shell.run("verdi presto")
    user_shell.run("autopipec setup")
    return DocRunner(user_shell)


def test_markers_and_specs_are_consistent():
    """Every `not run` marker precedes a ```python block and gives a reason; every DocSpec names a doc that runs."""
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        python_fences = {block.line for block in python_blocks(path)}
        for number, line in enumerate(lines, start=1):
            if not ANY_NOT_RUN.search(line):
                continue
            assert NOT_RUN.match(line), f"{relative(path)}:{number}: write `<!-- not run: the reason -->`"
            following = next((n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None)
            assert following in python_fences, f"{relative(path)}:{number}: the marker precedes no ```python block"
    assert set(DOCS) <= set(RUN_DOCS), f"specs for docs without runnable blocks: {set(DOCS) - set(RUN_DOCS)}"
    for spec in DOCS.values():
        assert set(spec.files) <= set(FILES) and set(spec.after) <= set(RUN_DOCS), spec


@pytest.mark.parametrize("block", NOT_RUN_BLOCKS, ids=lambda block: f"{block.doc}:{block.line}")
def test_block_not_run(block):
    """Reported, not run: each block marked `<!-- not run: reason -->`."""
    pytest.skip(f"{block.doc}:{block.line} not run: {block.not_run}")


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_doc_runs(doc, doc_runner):
    run = doc_runner.run(doc)
    if doc == "docs/tutorial.md":  # what the tutorial promises of its MD: forces are the gradient of the energy
        drift = float(re.search(rf"^NVE drift ({FLOAT}) eV/atom$", run.output, re.MULTILINE).group(1))
        assert drift < 5e-3, f"NVE drift {drift} eV/atom: the potential's forces do not conserve its energy"
