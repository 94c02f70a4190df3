"""``autopipec repair`` refuses to guess without a running daemon (its real work: tests/workflows/test_daemon.py)."""

from __future__ import annotations

from click.testing import CliRunner

from aiida_autopipec.cli import autopipec


def test_repair_needs_the_daemon_running(aiida_profile, daemon_client):
    """Without workers, every unfinished process looks lost: repair says what to do instead of reviving them all."""
    if daemon_client.is_daemon_running:
        daemon_client.stop_daemon(wait=True)
    result = CliRunner().invoke(autopipec, ["repair"])
    assert result.exit_code == 1
    if aiida_profile.process_control_backend is None:
        expected = f"Error: profile '{aiida_profile.name}' has no broker: its processes run without a daemon"
    else:
        expected = (
            f"Error: the daemon of profile '{aiida_profile.name}' is not running: start it (`verdi daemon start`), "
            "then run `autopipec repair` again"
        )
    assert result.output.strip() == expected
