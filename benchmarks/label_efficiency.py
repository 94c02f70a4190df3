"""Label efficiency: labelled structures needed to reach a held-out force RMSE target with γ selection, divided by
what random selection needs, with the same start, pool, budget per round and training settings.

Every arm runs the same loop, AiiDA-free so that only the selection differs: ``PacemakerRunner`` fits (warm-started
from the previous round's potential, as the workchain does), the test force RMSE of the delivered model is read,
then the next structures are chosen (γ and d_optimal: the ``select_structures`` functions the workchain's
SelectionCalculation runs, with its default trust window, highest γ first or ``pace_select``'s D-optimal set;
random: uniformly from the remaining pool) and labelled with EMT.
Every arm runs all rounds, so the whole learning curve is reported and the target is applied afterwards.

Two candidate pools (``AUTOPIPEC_BENCHMARK_POOL``): ``balanced`` holds mild and strong distortions in the same shares
as the test set, so random picks are as representative as can be; ``redundant`` is mostly structures like the
initial training set and few strongly distorted ones, as frames of an MD run near equilibrium are. The test set is
the same in both: equal shares, the range the potential has to cover.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import load_average, print_table, save_partial

NAME = "label_efficiency"
SETTINGS = {
    "quick": {
        "seeds": [0],
        "initial": 6,
        "pool": 16,
        "test": 8,
        "new": 4,
        "rounds": 2,
        "maxiter": 10,
        "functions": 8,
        "target": 0.15,
    },
    "full": {  # ~60 min on 2 cores: 3 seeds x 3 arms x 6 warm-started fits
        "seeds": [0, 1, 2],
        "initial": 10,  # γ needs at least as many atoms per element as functions per element (24)
        "pool": 60,
        "test": 20,
        "new": 6,
        "rounds": 6,
        "maxiter": 150,
        "functions": 24,
        "target": 0.15,
    },
}
#: Comma-separated seeds to run instead of the mode's (results of several runs are joined with ``merge``).
SEEDS_VARIABLE = "AUTOPIPEC_BENCHMARK_SEEDS"
#: Pool and test structures: these rattle amplitudes (Å), so both hold mild and strong distortions.
RATTLES = (0.05, 0.1, 0.2)
#: Shares of the rattle amplitudes in the candidate pool, per scenario; the test set always has equal shares.
POOLS = {"balanced": (1 / 3, 1 / 3, 1 / 3), "redundant": (0.45, 0.45, 0.10)}
#: Which pool to run (default: balanced).
POOL_VARIABLE = "AUTOPIPEC_BENCHMARK_POOL"
#: Selection arms, each compared with ``random``: ``gamma`` is the workchain's default (``max_gamma``: highest γ
#: first), ``d_optimal`` its ``pace_select`` option (MaxVol: a diverse set among the candidates in the trust window).
SELECTION_ARMS = ("gamma", "d_optimal")
ARMS = (*SELECTION_ARMS, "random")
#: Comma-separated arms to run (default: all three); runs of other arms for the same seeds are joined by ``merge``.
ARMS_VARIABLE = "AUTOPIPEC_BENCHMARK_ARMS"


def share_counts(count: int, shares: tuple[float, ...]) -> list[int]:
    """``count`` split by ``shares`` (largest remainder; equal shares split like ``np.array_split``)."""
    exact = [count * share / sum(shares) for share in shares]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for index in by_remainder[: count - sum(counts)]:
        counts[index] += 1
    return counts


def mixed_structures(count: int, seed: int, labelled: bool, shares: tuple[float, ...] = POOLS["balanced"]) -> list:
    from aiida_autopipec.learning.reference_data import emt_dataset

    structures = []
    for offset, (rattle, number) in enumerate(zip(RATTLES, share_counts(count, shares), strict=True)):
        structures += emt_dataset(number, seed=seed * 100 + offset, rattle=rattle, strain=0.05, labelled=labelled)
    return structures


def gamma_choice(
    folder: Path, potential: Path, training: list, pool: list, budget: int, method: str = "max_gamma"
) -> list[int]:
    """Indices into ``pool`` chosen like the workchain's selection with its default trust window: largest γ first
    (``max_gamma``), or what ``pace_select`` picks among the candidates in the window (``d_optimal``)."""
    from aiida_autopipec.learning import select_structures
    from aiida_autopipec.workflows.active_learning import ConvergenceConfig

    folder.mkdir()
    shutil.copy(potential, folder / "potential.yaml")
    energies = [atoms.get_potential_energy() for atoms in training]
    forces = [atoms.get_forces() for atoms in training]
    asi = select_structures.build_active_set(folder, "potential.yaml", training, energies, forces)
    gammas = select_structures.max_gammas(folder / "potential.yaml", asi, pool)
    defaults = ConvergenceConfig()
    if method == "max_gamma":
        return select_structures.select(gammas, budget, defaults.gamma_lower, defaults.gamma_upper)["selected"]
    eligible = select_structures.select(gammas, len(gammas), defaults.gamma_lower, defaults.gamma_upper)["selected"]
    return select_structures.d_optimal(folder, "potential.yaml", asi, pool, eligible, budget) if eligible else []


def run_arm(arm: str, seed: int, settings: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """All rounds of one arm: per round the labelled-set size and the held-out force RMSE (eV/Å)."""
    from aiida_autopipec.config import SystemConfig
    from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
    from aiida_autopipec.learning.pacemaker import PacemakerRunner
    from aiida_autopipec.learning.reference_data import emt_dataset, label_with_emt

    config = SystemConfig(
        elements=["Al", "Cu"],
        cutoff=4.5,
        maxiter=settings["maxiter"],
        number_of_functions_per_element=settings["functions"],
        display_step=settings["maxiter"],
        device="cpu",
    )
    training = emt_dataset(settings["initial"], seed=seed * 100 + 50, rattle=0.1)
    test = mixed_structures(settings["test"], seed * 100 + 60, labelled=True)
    pool = mixed_structures(settings["pool"], seed * 100 + 70, labelled=False, shares=POOLS[settings["pool_name"]])
    rng = np.random.default_rng(seed)
    curve, previous = [], None
    for round_number in range(1, settings["rounds"] + 1):
        runner = PacemakerRunner(PacemakerConfigGenerator(config), workdir / f"{arm}-{seed}-{round_number}")
        warm = {}
        if previous is not None:
            warm = {
                "initial_potential": previous.work_dir / "output_potential.yaml",
                "initial_reference_energies": previous.reference_energies,
                "initial_zbl_params": previous.evaluation_settings["pair_cutoffs"],
            }
        runner.train(training, test, **warm)
        rmse = runner.metrics().test.rmse_forces
        curve.append({"round": round_number, "labelled": len(training), "test_rmse_forces": round(rmse, 5)})
        if round_number == settings["rounds"] or not pool:
            break
        if arm in SELECTION_ARMS:
            method = "max_gamma" if arm == "gamma" else arm
            potential = runner.work_dir / "output_potential.yaml"
            chosen = gamma_choice(runner.work_dir / "select", potential, training, pool, settings["new"], method)
        else:
            chosen = rng.choice(len(pool), size=min(settings["new"], len(pool)), replace=False).tolist()
        curve[-1]["selected"] = len(chosen)
        if not chosen:  # the workchain stops here too (candidates exhausted)
            break
        training = training + label_with_emt([pool[i] for i in chosen])
        pool = [atoms for i, atoms in enumerate(pool) if i not in set(chosen)]
        previous = runner
    return curve


def labels_to_reach(curve: list[dict[str, Any]], target: float) -> int | None:
    """Labelled structures at the first round with test force RMSE <= target (None: never reached)."""
    return next((entry["labelled"] for entry in curve if entry["test_rmse_forces"] <= target), None)


def run(mode: str, workdir: Path) -> dict[str, Any]:
    settings = dict(SETTINGS[mode])
    if os.environ.get(SEEDS_VARIABLE):  # e.g. one seed per process on a machine with cores to spare
        settings["seeds"] = [int(seed) for seed in os.environ[SEEDS_VARIABLE].split(",")]
    settings["pool_name"] = os.environ.get(POOL_VARIABLE, "balanced")
    if settings["pool_name"] not in POOLS:
        raise ValueError(f"{POOL_VARIABLE}={settings['pool_name']!r}: use one of {sorted(POOLS)}")
    arms = os.environ.get(ARMS_VARIABLE, ",".join(ARMS)).split(",")
    if not arms or set(arms) - set(ARMS):
        raise ValueError(f"{ARMS_VARIABLE}={','.join(arms)!r}: use some of {','.join(ARMS)}")
    load_before = load_average()
    seeds = []
    for seed in settings["seeds"]:
        curves = {arm: run_arm(arm, seed, settings, workdir) for arm in arms}
        seeds.append(compare(seed, curves, settings["target"]))
        save_partial(NAME, mode, summarise(mode, settings, seeds, load_before))  # long runs keep finished seeds
    result = summarise(mode, settings, seeds, load_before)
    print_rows(mode, result)
    return result


def compare(seed: int, curves: dict[str, list], target: float) -> dict[str, Any]:
    """Labels each arm needed and, per selection arm run next to ``random``, the ratio (or its bound) and the RMSE
    ratio of the last rounds. Keys for ``gamma`` are plain (``ratio``), the others' suffixed (``ratio_d_optimal``)."""
    needed = {arm: labels_to_reach(curve, target) for arm, curve in curves.items()}
    entry: dict[str, Any] = {"seed": seed, "curves": curves, "labels_needed": needed}
    if "random" not in curves:
        return entry
    for arm in (arm for arm in SELECTION_ARMS if arm in curves):
        suffix = "" if arm == "gamma" else f"_{arm}"
        if needed[arm] is not None and needed["random"] is not None:
            entry["ratio" + suffix] = round(needed[arm] / needed["random"], 4)
        elif needed[arm] is not None:  # random never got there: its final size is a lower bound
            entry["ratio_upper_bound" + suffix] = round(needed[arm] / curves["random"][-1]["labelled"], 4)
        elif needed["random"] is not None:  # the selection never got there: it needs more than its final size
            entry["ratio_lower_bound" + suffix] = round(curves[arm][-1]["labelled"] / needed["random"], 4)
        # Independent of the target: accuracy of the last round of each arm (a selection may have fewer labels: it
        # adds only candidates inside the trust window).
        final_rmse = curves[arm][-1]["test_rmse_forces"] / curves["random"][-1]["test_rmse_forces"]
        entry["final_rmse_ratio" + suffix] = round(final_rmse, 4)
    return entry


def _median_of(entries: list[dict[str, Any]], key: str) -> float | None:
    values = [entry[key] for entry in entries if key in entry]
    return statistics.median(values) if values else None


#: Other targets (eV/Å) the same curves are read at, so the result does not hinge on one chosen target.
OTHER_TARGETS = (0.2, 0.1, 0.05)


def at_targets(seeds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target: each seed's labels needed by γ and random (None: not reached) and the median of the ratios."""
    table = {}
    for target in OTHER_TARGETS:
        per_seed = [compare(entry["seed"], entry["curves"], target) for entry in seeds]
        table[str(target)] = {
            "labels_needed": [entry["labels_needed"] for entry in per_seed],
            "bounds": [text for entry in per_seed if "ratio" not in entry and (text := bound(entry))],
            "ratio_median": _median_of(per_seed, "ratio"),
            "seeds_reached": sum("ratio" in entry for entry in per_seed),
        }
        if any("final_rmse_ratio_d_optimal" in entry for entry in per_seed):
            table[str(target)]["ratio_median_d_optimal"] = _median_of(per_seed, "ratio_d_optimal")
            table[str(target)]["bounds_d_optimal"] = [
                text for entry in per_seed if "ratio_d_optimal" not in entry and (text := bound(entry, "_d_optimal"))
            ]
    return table


def summarise(mode: str, settings: dict[str, Any], seeds: list[dict[str, Any]], load_before) -> dict[str, Any]:
    ratios = [entry["ratio"] for entry in seeds if "ratio" in entry]
    result = {
        "benchmark": NAME,
        "mode": mode,
        "description": "labels needed to reach the test force RMSE target: gamma selection / random selection",
        "target_rmse_forces": settings["target"],
        "ratio": statistics.median(ratios) if ratios else math.nan,
        "ratio_seeds_reached": len(ratios),
        "final_rmse_ratio_median": _median_of(seeds, "final_rmse_ratio"),
        "target": 0.6,
        "seeds": seeds,
        "settings": settings,
        "rattles": list(RATTLES),
        "pool": settings.get("pool_name", "balanced"),
        "pool_shares": list(POOLS[settings.get("pool_name", "balanced")]),
        "load_average": {"before": load_before, "after": load_average()},
    }
    if any("final_rmse_ratio_d_optimal" in entry for entry in seeds):  # d_optimal ran next to random
        result["ratio_d_optimal"] = _median_of(seeds, "ratio_d_optimal")
        result["ratio_seeds_reached_d_optimal"] = sum("ratio_d_optimal" in entry for entry in seeds)
        result["final_rmse_ratio_median_d_optimal"] = _median_of(seeds, "final_rmse_ratio_d_optimal")
    result["other_targets"] = at_targets(seeds)
    return result


def bound(entry: dict[str, Any], suffix: str = "") -> str | None:
    """The ratio's bound when only one arm reached the target: ``<= x`` or ``> x``."""
    if "ratio_upper_bound" + suffix in entry:
        return f"<= {entry['ratio_upper_bound' + suffix]}"
    if "ratio_lower_bound" + suffix in entry:
        return f"> {entry['ratio_lower_bound' + suffix]}"
    return None


def print_rows(mode: str, result: dict[str, Any]) -> None:
    target, seeds = result["target_rmse_forces"], result["seeds"]
    rows = []
    for entry in seeds:
        for arm, curve in entry["curves"].items():
            points = ", ".join(f"{point['labelled']}:{point['test_rmse_forces']:.3f}" for point in curve)
            rows.append((f"seed {entry['seed']} {arm} (labels:RMSE eV/Å)", points))
        rows.append((f"seed {entry['seed']} labels needed", str(entry["labels_needed"])))
        for arm, suffix in (("γ", ""), ("d_optimal", "_d_optimal")):
            if "final_rmse_ratio" + suffix in entry:
                shown = entry.get("ratio" + suffix, bound(entry, suffix) or "n/a")
                rows.append((f"seed {entry['seed']} labels {arm} / random", str(shown)))
                rows.append(
                    (f"seed {entry['seed']} final RMSE {arm} / random", f"{entry['final_rmse_ratio' + suffix]:.3f}")
                )
    rows.append(
        (f"median ratio γ (target {target} eV/Å)", f"{result['ratio']} over {result['ratio_seeds_reached']} seed(s)")
    )
    if result.get("final_rmse_ratio_median") is not None:
        rows.append(("median final RMSE ratio γ / random", f"{result['final_rmse_ratio_median']:.3f}"))
    if "ratio_d_optimal" in result:
        rows.append(
            (
                f"median ratio d_optimal (target {target} eV/Å)",
                f"{result['ratio_d_optimal']} over {result['ratio_seeds_reached_d_optimal']} seed(s)",
            )
        )
        rows.append(
            ("median final RMSE ratio d_optimal / random", f"{result['final_rmse_ratio_median_d_optimal']:.3f}")
        )
    rows.append(
        ("load average before / after", f"{result['load_average']['before']} / {result['load_average']['after']}")
    )
    print_table(f"4. Label efficiency ({mode})", rows)


def merge(paths: list[Path], output: Path) -> dict[str, Any]:
    """Join the seeds of several results (same mode and settings) into one result, summarised again."""
    results = [json.loads(Path(path).read_text()) for path in paths]
    first = results[0]
    if any(  # results from before the pools were named ran the balanced one
        (r["mode"], r["target_rmse_forces"], r.get("pool", "balanced"))
        != (first["mode"], first["target_rmse_forces"], first.get("pool", "balanced"))
        for r in results
    ):
        raise ValueError("results of different modes, targets or pools cannot be joined")
    curves: dict[int, dict[str, list]] = {}  # per seed, the arms of every run (a run may hold other arms)
    for result in results:
        for seed in result["seeds"]:
            joined = curves.setdefault(seed["seed"], {})
            if set(joined) & set(seed["curves"]):
                raise ValueError(f"seed {seed['seed']}: arms {sorted(set(joined) & set(seed['curves']))} given twice")
            joined.update(seed["curves"])
    order = {arm: index for index, arm in enumerate(ARMS)}
    seeds = [  # summarised again, with this code
        compare(seed, dict(sorted(arms.items(), key=lambda item: order[item[0]])), first["target_rmse_forces"])
        for seed, arms in sorted(curves.items())
    ]
    settings = {**first["settings"], "seeds": [entry["seed"] for entry in seeds]}
    merged = summarise(first["mode"], settings, seeds, first["load_average"]["before"])
    loads = [result["load_average"] for result in results]
    merged["load_average"] = {"before": loads[0]["before"], "after": loads[-1]["after"], "runs": loads}
    merged.update({key: first[key] for key in ("machine", "versions", "date") if key in first})
    merged["benchmark_seconds"] = max(result.get("benchmark_seconds", 0) for result in results)
    merged["joined_from"] = len(results)
    output.write_text(json.dumps(merged, indent=2) + "\n")
    print_rows(merged["mode"], merged)
    return merged


if __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == "merge":
    merge([Path(path) for path in sys.argv[3:]], Path(sys.argv[2]))
