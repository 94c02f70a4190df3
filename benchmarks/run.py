"""Run the aiida-autopipec benchmarks: ``python benchmarks/run.py [--quick] [--only NAME ...] [--output DIR]``.

Each benchmark prints a table and writes ``<output>/<name>.json``; every number is a ratio against a baseline
measured in the same run. AiiDA runs in a throw-away profile inside a temporary ``AIIDA_PATH``: the user's own
profiles are never touched. ``--quick`` is a small version of each that the test suite runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = ("orchestration", "ingestion", "storage", "label_efficiency", "gpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds to a minute each)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="folder of the JSON results (default: results/)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary AiiDA profile and work folders")
    args = parser.parse_args(argv)

    # Before anything imports AiiDA: a private AIIDA_PATH, so the default profile is never read or changed.
    workdir = Path(tempfile.mkdtemp(prefix="autopipec-benchmark-"))
    os.environ["AIIDA_PATH"] = str(workdir / "aiida")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    output = args.output or common.DEFAULT_OUTPUT
    common.PARTIAL_OUTPUT = output
    mode = "quick" if args.quick else "full"
    selected = args.only or list(BENCHMARKS)
    failures = []
    try:
        for name in BENCHMARKS:
            if name not in selected:
                continue
            module = __import__(name)
            start = time.perf_counter()
            folder = workdir / name
            folder.mkdir()
            try:
                result = module.run(mode, folder)
            except Exception as exc:  # report and go on with the next benchmark
                failures.append(name)
                print(f"\n== {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                import traceback

                traceback.print_exc()
                continue
            result["machine"] = common.machine()
            result["versions"] = common.versions()
            result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            result["benchmark_seconds"] = round(time.perf_counter() - start, 1)
            path = common.write_result(output, name if mode == "full" else f"{name}.quick", result)
            print(f"  -> {path} ({result['benchmark_seconds']} s)")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
