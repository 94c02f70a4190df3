"""Data ingestion: an ASE database -> stored ``TrainingSetData`` -> Pacemaker dataset file, against the floor of
just reading the same database with ``ase.db`` (structures with their energies and forces as ``ase.Atoms``).

Each measurement runs in a fresh subprocess (``python ingestion.py worker ...``) so its peak memory
(``ru_maxrss``) belongs to that path alone; the memory after imports is reported next to it.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from common import load_average, load_benchmark_profile, print_table, ratio, summary

NAME = "ingestion"
SETTINGS = {"quick": {"structures": 300, "repeats": 2}, "full": {"structures": 10_000, "repeats": 3}}
#: 2 x 2 x 4 conventional fcc cells: 64 atoms per structure.
REPEAT = (2, 2, 4)
#: Structures made from each EMT-labelled one by rigid translation.
TRANSLATED_COPIES = 10


def make_database(path: Path, num_structures: int) -> None:
    """EMT-labelled Al-Cu structures of 64 atoms, written in one transaction.

    Every tenth structure is labelled with EMT; the others are rigid translations of one of those (periodic cells:
    same energy, same forces), so the database is exact and ten times faster to make.
    """
    import ase.db

    from aiida_autopipec.learning.reference_data import emt_dataset

    rng = np.random.default_rng(0)
    labelled = emt_dataset(max(1, num_structures // TRANSLATED_COPIES), seed=1, repeat=REPEAT)
    with ase.db.connect(path) as database:
        for index in range(num_structures):
            atoms = labelled[index % len(labelled)]
            if index >= len(labelled):
                energy, forces = atoms.get_potential_energy(), atoms.get_forces()
                atoms = atoms.copy()
                atoms.translate(rng.uniform(0.0, 1.0, size=3) @ atoms.cell.array)
                atoms.wrap()
                atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            database.write(atoms)


def _resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(path: str, database: str, output: str) -> dict[str, Any]:
    """One measurement: ``floor`` reads the database, ``ours`` stores a TrainingSetData and writes the dataset."""
    import ase.db

    phases: dict[str, float] = {}
    if path == "ours":  # every import before the clock starts, as for the floor
        import ase.cell
        import ase.geometry
        import ase.neighborlist
        import pandas  # noqa: F401

        load_benchmark_profile()
        from aiida.manage import get_manager

        from aiida_autopipec.data import TrainingSetData
        from aiida_autopipec.learning.dataset import fit_reference_energies, write_pacemaker_dataset

        # Opening the profile's storage is a once-per-session cost, like the imports: measured, but not ingestion.
        opened = time.perf_counter()
        get_manager().get_profile_storage()
        opening = time.perf_counter() - opened
    after_imports = _resident_mib()
    start = time.perf_counter()
    if path == "floor":
        with ase.db.connect(database) as connection:
            structures = [row.toatoms() for row in connection.select()]
        phases["read"] = time.perf_counter() - start
        count = len(structures)
    else:
        node = TrainingSetData.from_ase_db(database)
        phases["read and validate"] = time.perf_counter() - start
        node.store()
        phases["store"] = time.perf_counter() - start - sum(phases.values())
        arrays = node.get_arrays()
        references = fit_reference_energies(arrays, node.elements)
        write_pacemaker_dataset(output, arrays, references)
        phases["write pacemaker dataset"] = time.perf_counter() - start - sum(phases.values())
        count = node.num_structures
    seconds = time.perf_counter() - start
    if path == "ours":
        phases["open storage (before the clock)"] = opening
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "phases": phases, "structures": count, "peak_mib": peak, "imports_mib": after_imports}


def measure(path: str, database: Path, output: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "worker", path, str(database), str(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{path} worker failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(mode: str, workdir: Path) -> dict[str, Any]:
    settings = SETTINGS[mode]
    load_benchmark_profile()  # created here, so the workers only load it
    database = workdir / "structures.db"
    start = time.perf_counter()
    make_database(database, settings["structures"])
    creation = time.perf_counter() - start

    load_before = load_average()
    floor, ours = [], []
    for repeat in range(settings["repeats"]):  # interleaved
        floor.append(measure("floor", database, workdir / "unused"))
        ours.append(measure("ours", database, workdir / f"dataset_{repeat}.pckl"))
    load_after = load_average()
    if {entry["structures"] for entry in floor + ours} != {settings["structures"]}:
        raise RuntimeError("a path did not see every structure")

    floor_seconds = summary([entry["seconds"] for entry in floor])
    ours_seconds = summary([entry["seconds"] for entry in ours])
    phases = {name: summary([entry["phases"][name] for entry in ours])["median"] for name in ours[0]["phases"]}
    result = {
        "benchmark": NAME,
        "mode": mode,
        "description": "ASE db -> stored TrainingSetData -> Pacemaker dataset file / reading the db with ase.db",
        "structures": settings["structures"],
        "atoms_per_structure": 4 * REPEAT[0] * REPEAT[1] * REPEAT[2],
        "database_mib": round(database.stat().st_size / 1024**2, 2),
        "database_creation_s": round(creation, 2),
        "repeats": settings["repeats"],
        "floor_s": floor_seconds,
        "ours_s": ours_seconds,
        "ours_phases_s": {name: round(value, 3) for name, value in phases.items()},
        "ratio": ratio(ours_seconds["median"], floor_seconds["median"]),
        "ratio_min": ratio(ours_seconds["min"], floor_seconds["min"]),
        "target": 1.5,
        "peak_memory_mib": {
            "floor": round(max(entry["peak_mib"] for entry in floor), 1),
            "ours": round(max(entry["peak_mib"] for entry in ours), 1),
            "floor_after_imports": round(max(entry["imports_mib"] for entry in floor), 1),
            "ours_after_imports": round(max(entry["imports_mib"] for entry in ours), 1),
        },
        "load_average": {"before": load_before, "after": load_after},
    }
    memory = result["peak_memory_mib"]
    result["memory_ratio"] = ratio(memory["ours"], memory["floor"])
    rows = [
        ("structures x atoms", f"{settings['structures']} x {result['atoms_per_structure']}"),
        ("floor: ase.db read (median / min)", f"{floor_seconds['median']:.2f} s / {floor_seconds['min']:.2f} s"),
        ("ours: db -> node -> dataset (median / min)", f"{ours_seconds['median']:.2f} s / {ours_seconds['min']:.2f} s"),
        *((f"  {name}", f"{value:.2f} s") for name, value in phases.items()),
        ("ratio (median / min)", f"{result['ratio']:.2f} / {result['ratio_min']:.2f} (target <= 1.5)"),
        ("peak memory floor / ours", f"{memory['floor']:.0f} MiB / {memory['ours']:.0f} MiB"),
        (
            "  after imports floor / ours",
            f"{memory['floor_after_imports']:.0f} MiB / {memory['ours_after_imports']:.0f} MiB",
        ),
        ("load average before / after", f"{load_before} / {load_after}"),
    ]
    print_table(f"2. Data ingestion ({mode})", rows)
    return result


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    print(json.dumps(worker(*sys.argv[2:])))
