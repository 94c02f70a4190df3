"""Shared helpers of the benchmarks: timing statistics, machine and version records, an isolated AiiDA profile,
tables and JSON results.

Machines are shared and noisy, so every benchmark reports a ratio against a baseline measured in the same run,
with min and median over repeats, and records the load average next to its numbers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCHMARK_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCHMARK_DIR / "results"
#: Name of the throw-away profile every AiiDA benchmark of one `run.py` call shares (inside its own AIIDA_PATH).
PROFILE_NAME = "autopipec-benchmark"
PACKAGES = (
    "aiida-autopipec",
    "aiida-core",
    "python-ace",
    "tensorpotential",
    "tensorflow",
    "ase",
    "numpy",
    "pandas",
    "disk-objectstore",
)


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the shared machine was while measuring."""
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    """CPU model, core count and memory of this machine (for comparing results across machines)."""
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    return {
        "system": f"{platform.system()} {platform.release()}",
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
    }


def versions() -> dict[str, str | None]:
    """Installed versions of the packages whose speed is measured."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Min and median (the numbers reported) plus every value, rounded for the JSON."""
    values = [float(value) for value in values]
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "values": [round(value, 4) for value in values],
    }


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; inf when the baseline is zero (never a silent nan)."""
    return round(numerator / denominator, 4) if denominator > 0 else math.inf


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time in seconds of one call, and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def executable(name: str) -> str:
    """``name`` from this Python environment's scripts folder (``pacemaker``, ``verdi``), else just ``name``."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    return str(candidate) if candidate.is_file() else name


def load_benchmark_profile():
    """Load (creating on first use) a presto-style profile: SQLite, no broker, the presto ``localhost`` computer.

    It lives in the ``AIIDA_PATH`` that ``run.py`` points at a temporary folder before AiiDA is imported, so the
    user's own profiles are never read or changed.
    """
    from aiida import get_profile, load_profile

    profile = get_profile()
    if profile is not None and profile.name == PROFILE_NAME:
        return profile
    if not os.environ.get("AIIDA_PATH", "").startswith(tempfile.gettempdir()):
        raise RuntimeError("AIIDA_PATH must point to a temporary folder (run the benchmarks through run.py)")
    from aiida.common.exceptions import MissingConfigurationError, ProfileConfigurationError

    try:
        return load_profile(PROFILE_NAME, allow_switch=True)
    except (MissingConfigurationError, ProfileConfigurationError):
        pass
    subprocess.run(
        [executable("verdi"), "presto", "--profile-name", PROFILE_NAME, "--no-broker"],
        check=True,
        capture_output=True,
        env=os.environ,
    )
    from aiida.manage.configuration import reset_config

    reset_config()
    return load_profile(PROFILE_NAME, allow_switch=True)


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """A two-column table: what was measured, and its value."""
    width = max(len(label) for label, _ in rows)
    print(f"\n== {title}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def write_result(output: Path, name: str, result: dict[str, Any]) -> Path:
    """Write ``<output>/<name>.json`` with the machine, versions and load around the measurement."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


#: Where ``save_partial`` writes; set by ``run.py`` (None: partial results are not kept).
PARTIAL_OUTPUT: Path | None = None


def save_partial(name: str, mode: str, result: dict[str, Any]) -> None:
    """Write the results so far of a long benchmark (``"partial": true``), replaced by the final ones at its end."""
    if PARTIAL_OUTPUT is not None:
        partial = {**result, "partial": True, "machine": machine(), "versions": versions()}
        partial["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_result(PARTIAL_OUTPUT, name if mode == "full" else f"{name}.{mode}", partial)
