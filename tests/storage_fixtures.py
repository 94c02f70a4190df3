"""Pytest plugin selecting the AiiDA storage backend of the test session.

Load it *after* aiida's fixtures so that its ``aiida_profile`` override wins::

    pytest_plugins = ["aiida.tools.pytest_fixtures", "tests.storage_fixtures"]

Environment variables:

``AUTOPIPEC_TEST_STORAGE``
    ``sqlite`` (default, also when unset/empty): ``core.sqlite_dos`` storage, no service needed (with
    ``AUTOPIPEC_TEST_BROKER=none`` aiida's own ``aiida_profile`` fixture is used untouched).

    ``psql``: the session profile uses ``core.psql_dos`` on a throw-away PostgreSQL cluster started by
    ``pgtest`` through aiida's ``postgres_cluster``/``config_psql_dos`` fixtures.  ``pg_ctl`` must be on PATH
    (as root use the wrappers made by ``.ci/setup_postgres.sh``:
    ``export PATH="$(bash .ci/setup_postgres.sh):$PATH"``).  If PostgreSQL cannot be started the session is
    aborted - it never falls back to sqlite.

``AUTOPIPEC_TEST_BROKER`` (optional)
    ``zeromq`` (default, also when unset/empty): aiida's built-in ``core.zeromq`` broker, whose service aiida's
    fixtures start for the session - the ``verdi presto`` default, so ``submit`` and the daemon work without any
    external service.  ``rabbitmq``: ``core.rabbitmq`` with the default guest@127.0.0.1:5672 (a RabbitMQ server
    must be running, checked up front; ``.ci/setup_rabbitmq.sh`` starts one).  ``none``: no broker, like aiida's
    own default fixture (only ``run`` works; daemon tests are skipped).

``AUTOPIPEC_REQUIRE_SERVICES`` (optional)
    ``1`` (CI): a test that needs a service which is missing (a broker for the daemon, SLURM) fails instead of
    being skipped, so CI cannot pass by silently skipping what it is meant to prove.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

STORAGE_ENV = "AUTOPIPEC_TEST_STORAGE"
BROKER_ENV = "AUTOPIPEC_TEST_BROKER"
REQUIRE_SERVICES_ENV = "AUTOPIPEC_REQUIRE_SERVICES"

_STORAGE_ALIASES = {
    "": "core.sqlite_dos",
    "sqlite": "core.sqlite_dos",
    "sqlite_dos": "core.sqlite_dos",
    "core.sqlite_dos": "core.sqlite_dos",
    "psql": "core.psql_dos",
    "postgres": "core.psql_dos",
    "postgresql": "core.psql_dos",
    "psql_dos": "core.psql_dos",
    "core.psql_dos": "core.psql_dos",
}
_BROKER_ALIASES = {
    "": "core.zeromq",
    "none": None,
    "rabbitmq": "core.rabbitmq",
    "core.rabbitmq": "core.rabbitmq",
    "zeromq": "core.zeromq",
    "core.zeromq": "core.zeromq",
}

# The storage backend aiida's default ``aiida_profile`` fixture uses (``aiida_profile_factory`` default).
DEFAULT_STORAGE_BACKEND = "core.sqlite_dos"


def _resolve(env: str, aliases: dict):
    raw = os.environ.get(env, "").strip()
    try:
        return aliases[raw.lower()]
    except KeyError:
        valid = ", ".join(sorted(k for k in aliases if k))
        raise pytest.UsageError(f"{env}={raw!r} is not supported; use one of: {valid}") from None


def requested_storage_backend() -> str:
    """Return the storage plugin requested by ``AUTOPIPEC_TEST_STORAGE`` (default ``core.sqlite_dos``)."""
    return _resolve(STORAGE_ENV, _STORAGE_ALIASES)


def requested_broker_backend() -> str | None:
    """The broker plugin requested through ``AUTOPIPEC_TEST_BROKER`` (default ``core.zeromq``; ``None``: none)."""
    return _resolve(BROKER_ENV, _BROKER_ALIASES)


def services_required() -> bool:
    """Whether missing services must fail tests (CI) rather than skip them (a developer's machine)."""
    return os.environ.get(REQUIRE_SERVICES_ENV, "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip the calling test because ``reason`` (a missing service); fail it instead when services are required."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVICES_ENV} is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def lammps_binary() -> str:
    """The LAMMPS executable (the independent reference for ZBL); skipped without it, an error in CI."""
    import shutil

    for name in ("lmp", "lmp_serial", "lmp_mpi"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("no LAMMPS binary (lmp, lmp_serial or lmp_mpi) on PATH; apt-get install lammps to run this check")
    raise AssertionError("unreachable")


def _override_needed() -> bool:
    try:
        storage, broker = requested_storage_backend(), requested_broker_backend()
        return storage != DEFAULT_STORAGE_BACKEND or broker is not None
    except pytest.UsageError:
        return False  # reported properly by ``pytest_configure``


def _abort(message: str):
    """Stop the whole session with a clear message (no silent fallback, no per-test error spam)."""
    pytest.exit(f"[tests.storage_fixtures] {message}", returncode=pytest.ExitCode.USAGE_ERROR)


def _which_pg_ctl() -> str | None:
    try:
        from pgtest.pgtest import which
    except ImportError:
        return shutil.which("pg_ctl")
    try:
        return which("pg_ctl")
    except (FileNotFoundError, OSError):
        return None


def _sigterm_to_keyboardinterrupt(signum, frame):
    raise KeyboardInterrupt(f"received signal {signum}")


def pytest_configure(config):
    # Validate the variables early so a typo is an immediate usage error.
    storage = requested_storage_backend()
    requested_broker_backend()
    if storage == "core.psql_dos" and os.name == "posix":
        # A CI timeout usually sends SIGTERM, whose default action kills Python without running fixture
        # teardowns, leaving the pgtest PostgreSQL server behind.  Turn it into a KeyboardInterrupt so pytest
        # finalizes the session (``pg_ctl stop``) - only if nobody else installed a handler.
        import signal

        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_to_keyboardinterrupt)


def pytest_report_header(config):
    storage = requested_storage_backend()
    broker = requested_broker_backend()
    lines = [
        f"aiida test storage: {storage} ({STORAGE_ENV}={os.environ.get(STORAGE_ENV, '')!r}), broker: {broker or 'none'}"
    ]
    if storage == "core.psql_dos":
        lines.append(f"aiida test storage: PostgreSQL via pgtest, pg_ctl={_which_pg_ctl()}")
    return lines


_SESSION_PROFILE_INFO: dict = {}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _SESSION_PROFILE_INFO:
        info = _SESSION_PROFILE_INFO
        terminalreporter.write_line(
            f"aiida test profile {info['name']!r} used storage {info['storage']!r}, broker {info['broker']!r}"
            + (f" (PostgreSQL {info['server']})" if info.get("server") else "")
        )


def _record_profile(profile):
    _SESSION_PROFILE_INFO.update(
        name=profile.name, storage=profile.storage_backend, broker=profile.process_control_backend
    )
    if profile.storage_backend == "core.psql_dos":
        cfg = profile.storage_config
        try:
            import psycopg

            with psycopg.connect(
                host=cfg["database_hostname"],
                port=cfg["database_port"],
                user=cfg["database_username"],
                password=cfg["database_password"],
                dbname=cfg["database_name"],
            ) as conn:
                _SESSION_PROFILE_INFO["server"] = conn.execute("SHOW server_version").fetchone()[0]
        except Exception as exc:  # informational only
            _SESSION_PROFILE_INFO["server"] = f"? ({exc})"


def _check_broker(broker: str | None):
    if broker != "core.rabbitmq":
        return
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
    except OSError as exc:
        _abort(f"{BROKER_ENV}=rabbitmq but no RabbitMQ server answers on 127.0.0.1:5672 ({exc})")


def _psql_storage_config(request) -> dict:
    """Start the pgtest cluster (via aiida's fixtures) and create a database; abort loudly on failure."""
    if _which_pg_ctl() is None:
        _abort(
            "PostgreSQL storage requested but no pg_ctl was found. Install PostgreSQL and put the wrappers "
            'on PATH: export PATH="$(bash .ci/setup_postgres.sh):$PATH"'
        )
    try:
        config_psql_dos = request.getfixturevalue("config_psql_dos")
        return config_psql_dos()
    except pytest.exit.Exception:
        raise
    except Exception as exc:  # e.g. pg_ctl refusing root, missing en_US.UTF-8 locale, port problems
        cause = exc.__cause__ or exc.__context__
        detail = f"{type(exc).__name__}: {exc}"
        if cause is not None:
            detail += f" (caused by {type(cause).__name__}: {cause})"
        hint = ""
        if "locale" in detail.lower() or "collation" in detail.lower():
            hint = " - is the en_US.UTF-8 locale generated? Run .ci/setup_postgres.sh."
        elif os.geteuid() == 0:
            hint = " - running as root: put the wrappers from .ci/setup_postgres.sh first on PATH."
        _abort(f"PostgreSQL storage requested but could not be set up: {detail}{hint}")


if _override_needed():

    @pytest.fixture(scope="session", autouse=True)
    def aiida_profile(request, aiida_config, aiida_profile_factory):
        """Session profile with the storage/broker selected by the environment (overrides aiida's one)."""
        storage_backend = requested_storage_backend()
        broker_backend = requested_broker_backend()
        _check_broker(broker_backend)

        # ``None``: aiida_profile_factory's own sqlite default configuration.
        storage_config = _psql_storage_config(request) if storage_backend == "core.psql_dos" else None

        with aiida_profile_factory(
            aiida_config,
            storage_backend=storage_backend,
            storage_config=storage_config,
            broker_backend=broker_backend,
        ) as profile:
            if profile.storage_backend != storage_backend:  # paranoia: never run on the wrong storage
                _abort(f"profile uses {profile.storage_backend!r} although {storage_backend!r} was requested")
            _record_profile(profile)
            yield profile

else:

    @pytest.fixture(scope="session", autouse=True)
    def _autopipec_record_default_profile(aiida_profile):
        """Only records which profile aiida's (untouched) default fixture created, for the summary line."""
        _record_profile(aiida_profile)
        yield
