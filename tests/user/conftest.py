"""A user's shell: commands run as subprocesses in a fresh ``AIIDA_PATH``, with nothing started for them.

No pytest fixture of aiida-core reaches these commands: they see only the profile they make themselves (``verdi
presto``, or ``autopipec quickstart`` which calls it), as a new user on a laptop does. Whatever a command leaves
running (a daemon and its broker) is stopped when the test module ends.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Environment variables of the test session that a user's shell does not have.
SESSION_ONLY = (
    "AIIDA_PATH",
    "AIIDA_PROFILE",
    "AIIDA_TEST_PROFILE",
    "PYTEST_CURRENT_TEST",
    "PYTEST_ADDOPTS",
    "PYTEST_VERSION",
)
#: A TCP port nothing listens on (1: tcpmux, never served here); see ``UserShell.fresh``.
CLOSED_PORT = 1
#: A guard against a hanging command, not a timing assertion.
COMMAND_TIMEOUT_S = 900


@dataclass
class UserShell:
    """A working directory and an environment of its own; ``run`` is what typing a command line does."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, root: Path) -> UserShell:
        env = {key: value for key, value in os.environ.items() if key not in SESSION_ONLY}
        env["AIIDA_PATH"] = str(root / "aiida-config")
        # The commands of this environment (autopipec, verdi, pacemaker) first, as after `pip install`.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        # A laptop has no RabbitMQ, while CI (and a developer) may run one on the default port: point the probe of
        # `verdi presto` at a closed port, so it falls back to the built-in ZeroMQ broker as it does for users.
        env["AIIDA_BROKER_PORT"] = str(CLOSED_PORT)
        workdir = root / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir, env)

    def run(self, command: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S, **env: str):
        """Run ``command`` (a shell line) in the working directory; stdout and stderr together in ``.output``."""
        self.history.append(command)
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.workdir,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        result.output = result.stdout
        if check and result.returncode != 0:
            pytest.fail(f"`{command}` exited {result.returncode}:\n{result.output}", pytrace=False)
        return result

    def python(self, source: str, check: bool = True, **env: str):
        """Run a Python script as ``python script.py`` in the working directory."""
        script = self.workdir / f"script_{len(self.history)}.py"
        script.write_text(source)
        return self.run(f"{shlex.quote(sys.executable)} {shlex.quote(script.name)}", check=check, **env)

    def stop_daemon(self) -> None:
        """Stop a daemon (and the broker it supervises) that a command may have left running."""
        if (Path(self.env["AIIDA_PATH"]) / ".aiida" / "config.json").is_file():
            self.run("verdi daemon stop", check=False, timeout=300)


def one_error_line(output: str) -> str:
    """The ``Error:`` line of a failed command, checking that it is the only output of note (no traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture(scope="module")
def user_shell(tmp_path_factory):
    """A new user's shell for one test module (no profile yet: the first command that needs one makes it)."""
    shell = UserShell.fresh(tmp_path_factory.mktemp("user"))
    yield shell
    shell.stop_daemon()
