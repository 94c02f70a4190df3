"""The README's main command, `autopipec quickstart`, and `autopipec setup`, on the test profile."""

from __future__ import annotations

import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_autopipec.cli import autopipec


def test_setup_is_idempotent(local_computer):
    runner = CliRunner()
    first = runner.invoke(autopipec, ["setup", "--computer", local_computer.label, "--label", "pace-cli"])
    second = runner.invoke(autopipec, ["setup", "--computer", local_computer.label, "--label", "pace-cli"])
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    codes = orm.QueryBuilder().append(orm.InstalledCode, filters={"label": "pace-cli"}).all(flat=True)
    assert len(codes) == 1
    assert codes[0].filepath_executable.name == "pacemaker"
    assert f"pk {codes[0].pk}" in first.output and f"pk {codes[0].pk}" in second.output
    # The labeller and selection codes: a Python with ASE and pyace, registered once, with their plugins.
    for label, plugin in (("ase-label", "autopipec.ase_label"), ("pace-select", "autopipec.select")):
        python = orm.QueryBuilder().append(orm.InstalledCode, filters={"label": label}).all(flat=True)
        assert len(python) == 1
        assert python[0].default_calc_job_plugin == plugin
        assert python[0].filepath_executable.name.startswith("python")
        assert f"{label}@{local_computer.label} (pk {python[0].pk}, {plugin})" in second.output


def test_setup_creates_a_local_computer_that_polls_cheaply(aiida_profile):
    result = CliRunner().invoke(autopipec, ["setup", "--computer", "fresh-localhost", "--label", "pace-fresh"])
    assert result.exit_code == 0, result.output
    computer = orm.load_computer("fresh-localhost")
    assert (computer.transport_type, computer.scheduler_type) == ("core.local", "core.direct")
    # A login shell per poll ran the shell's start-up files once a second; polling without delay kept a core busy.
    assert computer.get_minimum_job_poll_interval() == 0.5
    assert computer.get_configuration() == {"safe_interval": 0.0, "use_login_shell": False}
    with computer.get_transport() as transport:
        assert transport.exec_command_wait("shopt -q login_shell && echo login || echo plain")[1].strip() == "plain"


@pytest.mark.pacemaker
def test_quickstart_trains_a_real_potential(local_computer, monkeypatch):
    from aiida_autopipec import codes

    monkeypatch.setattr(codes, "get_or_create_localhost", lambda label="localhost": local_computer)
    result = CliRunner().invoke(autopipec, ["quickstart", "--structures", "12", "--maxiter", "5"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "test" in result.output
    assert "5 iterations" in result.output
    pk = int(result.output.split("verdi process show ")[1].split()[0])
    node = orm.load_node(pk)
    assert node.is_finished_ok
    assert "potential" in node.outputs


def test_quickstart_prints_the_graph_command_only_where_graphviz_is(monkeypatch):
    """`verdi node graph generate` needs Graphviz's `dot`: without it the command would end in a traceback."""
    from aiida_autopipec.cli import main

    monkeypatch.setattr(main.shutil, "which", lambda name: None)
    without = main.provenance_hint(5)
    assert "verdi process show 5" in without and "verdi node graph generate 5" not in without
    assert "needs Graphviz" in without
    monkeypatch.setattr(main.shutil, "which", lambda name: "/usr/bin/dot" if name == "dot" else None)
    assert "verdi node graph generate 5" in main.provenance_hint(5)


@pytest.mark.parametrize(("command", "presets"), [("train", "pacemaker"), ("learn", "active_learning")])
def test_protocol_help_says_what_each_preset_means(command, presets):
    from aiida_autopipec.protocols import available_protocols

    result = CliRunner().invoke(autopipec, [command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name, description in available_protocols(presets).items():
        assert f"{name}: {' '.join(description.split())}" in text
    assert "autopipec fields" in text  # where the -p (and -c) fields are listed with units
