"""Storage growth in active learning: bytes the AiiDA repository (and database) gain over an
``ActiveLearningWorkChain`` run, divided by the size of the final training set.

The run is real (tiny Pacemaker fits, γ selection, EMT labelling) and stores its inputs inside the measured window,
so a perfect loop stores each training structure once: training-set bytes / final training set = 1. Everything
else the run keeps (potentials, retrieved files, the candidate pool, job inputs) is broken down by node type.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import load_average, load_benchmark_profile, print_table, ratio

NAME = "storage"
SETTINGS = {
    "quick": {"iterations": 2, "initial": 6, "candidates": 12, "test": 6, "new": 4, "maxiter": 10, "repeat": [1, 1, 2]},
    # A training set of the size DFT data come in (400 structures x 32 atoms, ~0.6 MiB), tiny fits: only bytes count.
    "full": {
        "iterations": 5,
        "initial": 400,
        "candidates": 200,
        "test": 40,
        "new": 20,
        "maxiter": 5,
        "repeat": [2, 2, 2],
    },
}


def folder_bytes(path: Path, pattern: str = "**/*") -> int:
    return sum(item.stat().st_size for item in path.glob(pattern) if item.is_file())


def storage_bytes() -> dict[str, int]:
    """Bytes on disk of the profile's file repository (disk-objectstore container) and its SQLite database."""
    from aiida import get_profile

    root = Path(get_profile().storage_config["filepath"])
    return {"repository": folder_bytes(root / "container"), "database": folder_bytes(root, "*.sqlite*")}


def object_sizes(node) -> dict[str, int]:
    """Repository objects of ``node``: content key (hash) -> size in bytes."""
    sizes = {}

    def walk(metadata: dict, prefix: str) -> None:
        for name, entry in metadata.get("o", {}).items():
            path = f"{prefix}{name}"
            if "k" in entry:
                sizes[entry["k"]] = len(node.base.repository.get_object_content(path, mode="rb"))
            else:
                walk(entry, f"{path}/")

    walk(node.base.repository.metadata, "")
    return sizes


def breakdown(first_pk: int) -> dict[str, dict[str, int]]:
    """Unique repository bytes and node counts per node type, for the nodes created since ``first_pk``."""
    from aiida import orm

    seen: set[str] = set()
    result: dict[str, dict[str, int]] = defaultdict(lambda: {"nodes": 0, "bytes": 0})
    query = orm.QueryBuilder().append(orm.Node, filters={"id": {">=": first_pk}}, project="*")
    for (node,) in sorted(query.all(), key=lambda row: row[0].pk):
        entry = result[type(node).__name__]
        entry["nodes"] += 1
        for key, size in object_sizes(node).items():
            if key not in seen:  # the repository stores equal content once
                seen.add(key)
                entry["bytes"] += size
    return dict(result)


def python_code(computer):
    """This Python (ASE, pyace) as a code for the selection and the EMT labelling."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        return orm.load_code(f"python-benchmark@{computer.label}")
    except NotExistent:
        return orm.InstalledCode(
            label="python-benchmark", computer=computer, filepath_executable=sys.executable
        ).store()


#: Number of initial training structures instead of the mode's (how the ratio falls as the data grow).
INITIAL_VARIABLE = "AUTOPIPEC_BENCHMARK_STORAGE_INITIAL"


def run(mode: str, workdir: Path) -> dict[str, Any]:
    settings = dict(SETTINGS[mode])
    if os.environ.get(INITIAL_VARIABLE):
        settings["initial"] = int(os.environ[INITIAL_VARIABLE])
    load_benchmark_profile()
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_autopipec.codes import get_or_create_local_code, get_or_create_localhost
    from aiida_autopipec.data import TrainingSetData
    from aiida_autopipec.learning.reference_data import emt_dataset
    from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain

    repeat = tuple(settings["repeat"])
    computer = get_or_create_localhost("autopipec-localhost")
    codes = {"pacemaker": get_or_create_local_code(computer=computer), "python": python_code(computer)}
    structures = {
        "training_set": emt_dataset(settings["initial"], seed=51, rattle=0.1, repeat=repeat),
        "test_set": emt_dataset(settings["test"], seed=52, rattle=0.1, repeat=repeat),
        "candidates": emt_dataset(settings["candidates"], seed=53, rattle=0.15, labelled=False, repeat=repeat),
    }
    first_pk = (orm.QueryBuilder().append(orm.Node, project="id").order_by({orm.Node: {"id": "desc"}}).first() or [0])[
        0
    ] + 1
    load_before = load_average()
    before = storage_bytes()
    inputs = {
        "training_set": TrainingSetData.from_ase(structures["training_set"]),
        "test_set": TrainingSetData.from_ase(structures["test_set"]),
        "candidates": TrainingSetData.from_ase(structures["candidates"], labelled=False),
        "parameters": orm.Dict(
            {"cutoff": 4.5, "maxiter": settings["maxiter"], "number_of_functions_per_element": 8, "device": "cpu"}
        ),
        # An unreachable target, so the loop runs every iteration; a wide trust window, so it always adds data.
        "convergence": orm.Dict(
            {
                "rmse_forces": 1e-4,
                "max_iterations": settings["iterations"],
                "max_new_structures": settings["new"],
                "gamma_lower": 0.5,
                "gamma_upper": 1000.0,
            }
        ),
        "pacemaker": {"code": codes["pacemaker"]},
        "selection": {"code": codes["python"]},
        "labeling": {"code": codes["python"], "calculator": orm.Dict({"import_path": "ase.calculators.emt.EMT"})},
    }
    results, node = run_get_node(ActiveLearningWorkChain, **inputs)
    after = storage_bytes()
    load_after = load_average()
    if "training_set" not in results:
        raise RuntimeError(f"ActiveLearningWorkChain<{node.pk}> gave no training set: {node.exit_message}")
    history = results["history"].get_list()
    final = results["training_set"]
    final_bytes = sum(object_sizes(final).values())
    added = {key: after[key] - before[key] for key in after}
    types = breakdown(first_pk)
    training_bytes = types.get("TrainingSetData", {}).get("bytes", 0)
    # Training sets are also the test set and the candidate pools: count only the sets of labelled training data.
    training_only = sum(
        size
        for key, size in _training_set_objects(first_pk, exclude={inputs["test_set"].pk}).items()
        if key is not None
    )
    # The user's other data, stored once as inputs: what is left is what the run itself keeps per iteration.
    inputs_bytes = {name: sum(object_sizes(inputs[name]).values()) for name in ("candidates", "test_set")}
    others = added["repository"] - training_only - sum(inputs_bytes.values())
    result = {
        "benchmark": NAME,
        "mode": mode,
        "description": "repository bytes added by an ActiveLearningWorkChain run / bytes of its final training set",
        "iterations_done": len(history),
        "exit_status": node.exit_status,
        "final_training_set": {"structures": final.num_structures, "bytes": final_bytes},
        "added_bytes": added,
        "ratio": ratio(added["repository"], final_bytes),
        "ratio_with_database": ratio(added["repository"] + added["database"], final_bytes),
        "ratio_training_data": ratio(training_only, final_bytes),
        "ratio_without_pool_and_test_set": ratio(added["repository"] - sum(inputs_bytes.values()), final_bytes),
        "input_bytes": inputs_bytes,
        "run_bytes_per_iteration": round(others / max(len(history), 1)),
        "target": 1.2,
        "unique_bytes_by_node_type": types,
        "all_training_set_data_bytes": training_bytes,
        "settings": settings,
        "load_average": {"before": load_before, "after": load_after},
    }
    rows = [
        ("iterations done / structures in final set", f"{len(history)} / {final.num_structures}"),
        ("final training set", f"{final_bytes / 1024:.1f} KiB"),
        ("repository added", f"{added['repository'] / 1024:.1f} KiB"),
        ("database added", f"{added['database'] / 1024:.1f} KiB"),
        ("ratio repository / final set", f"{result['ratio']:.2f} (target <= 1.2)"),
        ("ratio repository+database / final set", f"{result['ratio_with_database']:.2f}"),
        ("ratio training-set shards / final set", f"{result['ratio_training_data']:.2f}"),
        ("ratio without the pool and test set (stored once)", f"{result['ratio_without_pool_and_test_set']:.2f}"),
        ("  pool / test set", " / ".join(f"{size / 1024:.1f} KiB" for size in inputs_bytes.values())),
        ("  the run's own files per iteration", f"{result['run_bytes_per_iteration'] / 1024:.1f} KiB"),
        *(
            (f"  {name} ({entry['nodes']} nodes)", f"{entry['bytes'] / 1024:.1f} KiB")
            for name, entry in sorted(types.items(), key=lambda item: -item[1]["bytes"])
        ),
        ("load average before / after", f"{load_before} / {load_after}"),
    ]
    print_table(f"3. Storage growth in active learning ({mode})", rows)
    return result


def _training_set_objects(first_pk: int, exclude: set[int]) -> dict[str, int]:
    """Unique objects of the labelled training sets created since ``first_pk`` (not the test set or the pools)."""
    from aiida import orm

    from aiida_autopipec.data import TrainingSetData

    objects: dict[str, int] = {}
    query = orm.QueryBuilder().append(TrainingSetData, filters={"id": {">=": first_pk}}, project="*")
    for (node,) in query.all():
        if node.pk not in exclude and node.labelled:
            objects.update(object_sizes(node))
    return objects
