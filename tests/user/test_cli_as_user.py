"""The README's first command and the CLI flow of docs/cli.md, typed as a new user types them.

Every command is a subprocess in a fresh ``AIIDA_PATH`` (tests/user/conftest.py): ``autopipec quickstart`` makes
the profile with ``verdi presto`` (SQLite, and the broker presto picks), nothing else is started, no daemon runs
unless a test starts it. Fits are tiny (a few optimiser iterations); what is checked is that each documented step
works and prints what it promises.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.user.conftest import one_error_line

pytestmark = [pytest.mark.user, pytest.mark.pacemaker]

#: Tiny fits: a few optimiser iterations on the CPU, Pacemaker's iteration lines every 2.
TINY = "-p maxiter=6 -p display_step=2 -p device=cpu"
#: Guard against a hanging daemon run (not a timing assertion).
DAEMON_WAIT_S = 600

DATA_SCRIPT = """
import json
from ase.io import write
from aiida_autopipec.learning.reference_data import emt_dataset

write("train.extxyz", emt_dataset(16, seed=1, rattle=0.05))
write("test.extxyz", emt_dataset(6, seed=2, rattle=0.05))
write("pool.extxyz", emt_dataset(24, seed=3, rattle=0.12, labelled=False))
"""


GAMMA_SCRIPT = """
from ase.io import read
from pyace import PyACECalculator

calculator = PyACECalculator("{folder}/potential.yaml")
calculator.set_active_set("{folder}/potential.asi")
grades = []
for atoms in (read("train.extxyz", index=0), read("train.extxyz", index=0)):
    if grades:
        atoms.set_cell(atoms.cell * 0.8, scale_atoms=True)
    atoms.calc = calculator
    atoms.get_potential_energy()
    grades.append(calculator.results["gamma"].max())
print(*grades)
"""


def pk_after(pattern: str, output: str) -> int:
    match = re.search(pattern, output)
    assert match, f"no match for {pattern!r} in:\n{output}"
    return int(match.group(1))


def count_nodes(shell, node_class: str = "ProcessNode") -> int:
    """Nodes of ``node_class`` in the user's profile, counted by a separate Python process."""
    source = "from aiida import load_profile, orm\nload_profile()\n"
    source += f"print(orm.QueryBuilder().append(orm.{node_class}).count())"
    return int(shell.python(source).output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def quickstart(user_shell):
    """`autopipec quickstart` on a machine without any AiiDA profile (small, so the test stays short)."""
    result = user_shell.run("autopipec quickstart --structures 8 --maxiter 6")
    user_shell.python(DATA_SCRIPT)
    return result


@pytest.fixture(scope="module")
def imported(user_shell, quickstart):
    result = user_shell.run("autopipec data import train.extxyz")
    return pk_after(r"PK (\d+)", result.output)


@pytest.fixture(scope="module")
def trained(user_shell, imported):
    """`autopipec train PK --protocol fast` in the foreground, with no daemon and no broker running."""
    result = user_shell.run(f"autopipec train {imported} --test-set test.extxyz --protocol fast {TINY}")
    return result, pk_after(r"Next: autopipec show (\d+)", result.output)


def test_quickstart_makes_the_profile_and_a_potential(user_shell, quickstart):
    output = quickstart.output
    assert "creating one with `verdi presto`" in output
    assert "falling back to ZeroMQ broker" in output  # the laptop default: the broker only a daemon starts
    assert "6 iterations" in output and re.search(r"^test\s+\d+\.\d{4}", output, re.MULTILINE), output
    potential_pk = pk_after(r"Potential: PotentialData<(\d+)>", output)
    process_pk = pk_after(r"verdi process show (\d+)", output)
    # The provenance commands it prints work as printed.
    for command in re.findall(r"(verdi [^|\n]+?)\s*(?:\||$)", output.split("Provenance:")[1], re.MULTILINE):
        shown = user_shell.run(command.strip())
        assert "Traceback" not in shown.output
    assert f"PotentialData<{potential_pk}>" in user_shell.run(f"autopipec show {process_pk}").output
    status = user_shell.run("verdi daemon status", check=False)
    assert status.returncode != 0 and "not running" in status.output.lower()


def normalised(line: str) -> str:
    """A printed line with numbers as ``#``, the verdict as ``converged?`` and single spaces: the shape of the line,
    not its values."""
    line = re.sub(r"\b(not )?converged\b", "converged?", re.sub(r"\d+(\.\d+)?", "#", line))
    return " ".join(line.split())


def test_quickstart_prints_what_the_docs_show(quickstart):
    """docs/quickstart.md shows the output of a default run: every line from `Labelling` on has the shape the
    command prints (numbers and PKs differ: this run is smaller)."""
    page = (Path(__file__).parents[2] / "docs" / "quickstart.md").read_text()
    shown = next(block for block in page.split("```") if "Labelling" in block)
    documented = [normalised(line) for line in shown.split("Labelling", 1)[1].splitlines()[1:] if line.strip()]
    printed = {normalised(line) for line in quickstart.output.splitlines()}
    if not shutil.which("dot"):  # the line without Graphviz differs, as documented
        documented = [line for line in documented if not line.startswith("Provenance:")]
    assert normalised("Labelling # + # Al-Cu structures with ASE's EMT calculator...") in printed
    missing = [line for line in documented if line not in printed]
    assert not missing, f"documented but not printed: {missing}\n{quickstart.output}"


def test_train_in_the_foreground_without_a_daemon(user_shell, trained):
    result, pk = trained
    output = result.output
    assert f"PacemakerBaseWorkChain<{pk}>: finished" in output
    assert re.search(r"PacemakerCalculation<\d+>: finished", output), output
    assert "pacemaker: Iteration" in output and "Loss:" in output  # Pacemaker's own lines, live
    assert f"PacemakerBaseWorkChain<{pk}>: launching PacemakerCalculation" in output  # its report
    assert "6 iterations" in output and re.search(r"^test\s+\d+\.\d{4}", output, re.MULTILINE), output
    assert "Traceback" not in output


def test_show_export_and_plot_of_the_fit(user_shell, trained, imported):
    _, pk = trained
    shown = user_shell.run(f"autopipec show {pk}").output
    assert f"PacemakerBaseWorkChain<{pk}>: finished [0]" in shown and "Learning curve" in shown
    exported = user_shell.run(f"autopipec export {pk} exported").output
    folder = user_shell.workdir / "exported"
    files = {path.name for path in folder.iterdir()}
    expected = {"potential.yace", "potential.yaml", "potential.asi", "lammps.in", "lammps_extrapolation.in"}
    assert expected | {"README.md"} <= files, exported
    assert "pair_style pace/extrapolation" in (folder / "lammps_extrapolation.in").read_text()
    # The active set gives extrapolation grades: ~1 on the training structures, far above for a squeezed cell.
    gammas = user_shell.python(GAMMA_SCRIPT.format(folder=folder)).output.split()
    on_training, squeezed = float(gammas[-2]), float(gammas[-1])
    assert 0 < on_training < 2.0 < squeezed, gammas
    user_shell.run(f"autopipec export {imported} exported-data")
    assert (user_shell.workdir / "exported-data" / "training_set.extxyz").stat().st_size > 0
    plotted = user_shell.run(f"autopipec plot {pk} --output figures").output
    for name in ("learning_curve.png", "parity.png", "dimer_curves.png"):
        assert name in plotted and (user_shell.workdir / "figures" / name).stat().st_size > 10_000


def test_learn_two_iterations_in_the_foreground(user_shell, imported):
    """Two tiny iterations against an unreachable target: the loop runs both, then says it did not converge."""
    command = (
        f"autopipec learn {imported} --test-set test.extxyz --candidates pool.extxyz --protocol fast {TINY} "
        "-c max_iterations=2 -c rmse_forces=0.001 -c max_new_structures=4 -c gamma_lower=0.5 -c gamma_upper=1000"
    )
    result = user_shell.run(command, check=False)
    assert result.returncode == 1, result.output
    assert "not converged within 2 iterations" in one_error_line(result.output)
    assert re.search(r"test set: test.extxyz is already stored as TrainingSetData<\d+>", result.output), result.output
    pk = pk_after(r"Next: autopipec show (\d+)", result.output)
    assert f"ActiveLearningWorkChain<{pk}>: finished [501]" in result.output
    # The loop's own report, one line per iteration, as it ran.
    assert re.search(rf"ActiveLearningWorkChain<{pk}>: iter 1: \d+ structures", result.output), result.output
    assert re.search(rf"ActiveLearningWorkChain<{pk}>: iter 2: \d+ structures", result.output), result.output
    shown = user_shell.run(f"autopipec show {pk}").output
    assert "Active-learning history" in shown
    rows = [line for line in shown.splitlines() if re.match(r"^\s+[12]\s+\d+\s", line)]
    assert len(rows) == 2, shown
    plotted = user_shell.run(f"autopipec plot {pk} --output al-figures").output
    assert "convergence.png" in plotted


def test_daemon_flag_without_a_daemon_says_how_to_start_it(user_shell, imported):
    before = count_nodes(user_shell)
    result = user_shell.run(f"autopipec train {imported} --protocol fast {TINY} --daemon", check=False)
    assert result.returncode != 0
    assert "verdi daemon start" in one_error_line(result.output)
    assert count_nodes(user_shell) == before  # nothing submitted that nobody would run


def test_daemon_submission_runs_on_a_started_daemon(user_shell, imported):
    user_shell.run("verdi daemon start 1")
    try:
        result = user_shell.run(f"autopipec train {imported} --protocol fast {TINY} --daemon")
        pk = pk_after(r"PacemakerBaseWorkChain<(\d+)> to the daemon", result.output)
        deadline = time.monotonic() + DAEMON_WAIT_S
        while True:
            shown = user_shell.run(f"autopipec show {pk}").output
            if re.search(rf"PacemakerBaseWorkChain<{pk}>: (finished|excepted|killed)", shown):
                break
            assert time.monotonic() < deadline, shown
            time.sleep(3)
        assert f"PacemakerBaseWorkChain<{pk}>: finished [0]" in shown, shown
    finally:
        user_shell.run("verdi daemon stop", check=False)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("autopipec train does_not_exist.extxyz", "does_not_exist.extxyz"),
        ("autopipec train {imported} -p 'elements=[Cu]' " + TINY, "Al"),
        ("autopipec train {imported} -p 'elements=[Al, Cu, Xx]' " + TINY, "Xx"),
        ("autopipec train {unlabelled} " + TINY, "unlabelled"),
        (
            "autopipec learn {imported} --candidates pool.extxyz --calculator ase.calculators.emt.EMTT " + TINY,
            "ase.calculators.emt.EMTT",
        ),
    ],
    ids=["missing-file", "element-missing", "unknown-element", "unlabelled", "calculator-typo"],
)
def test_user_errors_are_one_line_and_store_no_process(user_shell, imported, command, expected):
    unlabelled = pk_after(r"PK (\d+)", user_shell.run("autopipec data import pool.extxyz --unlabelled").output)
    before = count_nodes(user_shell)
    result = user_shell.run(command.format(imported=imported, unlabelled=unlabelled), check=False)
    assert result.returncode != 0
    assert expected in one_error_line(result.output)
    assert count_nodes(user_shell) == before


def test_version_profile_group_and_fields(user_shell, trained, imported):
    from aiida_autopipec import __version__

    assert user_shell.run("autopipec --version").output.strip() == f"autopipec {__version__}"
    assert (
        f"PacemakerBaseWorkChain<{trained[1]}>"
        in user_shell.run(f"autopipec --profile presto show {trained[1]}").output
    )
    missing = user_shell.run("autopipec --profile nobody show 1", check=False)
    assert "no AiiDA profile 'nobody'" in one_error_line(missing.output)
    fields = user_shell.run("autopipec fields").output
    assert re.search(r"cutoff\s+Neighbour cutoff radius in Å", fields) and re.search(r"rmse_forces\s+.*eV/Å", fields)
    grouped = user_shell.run(f"autopipec train {imported} --protocol fast {TINY} --group my-fits").output
    pk = pk_after(r"Next: autopipec show (\d+)", grouped)
    members = user_shell.run("verdi group show my-fits").output
    assert str(pk) in members and "PotentialData" in members, members
