"""Print the committed results (``benchmarks/results/*.json``) as the Markdown tables of ``docs/benchmarks.md``.

``python benchmarks/report.py [folder]``: one table per benchmark, the numbers exactly as the JSON holds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(rows: list[tuple[str, object]]) -> str:
    lines = ["| measured | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines)


def orchestration(result: dict) -> list[tuple[str, object]]:
    bare = result["bare_pacemaker_s"]
    rows = [
        ("dataset", f"{result['dataset']['structures']} structures × {result['dataset']['atoms_per_structure']} atoms"),
        ("bare `pacemaker input.yaml` (median / min)", f"{bare['median']:.2f} s / {bare['min']:.2f} s"),
    ]
    if "bare_pacemaker_job_arguments_s" in result:
        same = result["bare_pacemaker_job_arguments_s"]
        command = " ".join(["pacemaker", *result["bare_pacemaker_job_arguments"]])
        rows.append(
            (f"bare `{command}`, the job's arguments (median / min)", f"{same['median']:.2f} s / {same['min']:.2f} s")
        )
    for label, variant in result["variants"].items():
        rows += [
            (
                f"**{label}**: through AiiDA (median / min)",
                f"{variant['aiida_s']['median']:.2f} s / {variant['aiida_s']['min']:.2f} s",
            ),
            (f"{label}: ratio (median / min)", f"**{variant['ratio_median']:.3f}** / {variant['ratio_min']:.3f}"),
            (f"{label}: overhead (median)", f"{variant['overhead_s']['median']:.2f} s"),
            *(
                [
                    (
                        f"{label}: ratio against bare with the job's arguments",
                        f"{variant['ratio_vs_bare_job_arguments']:.3f}",
                    )
                ]
                if "ratio_vs_bare_job_arguments" in variant
                else []
            ),
            (
                f"{label}: ratio without our compute-side .yace + evaluation",
                f"{variant['ratio_without_post_fit_steps']:.3f}",
            ),
        ]
        rows += [(f"{label}: stage {name}", f"{value:.3f} s") for name, value in variant["stages_s"].items()]
        rows += [(f"{label}: job {name}", f"{value:.3f} s") for name, value in variant["job_phases_s"].items()]
        rows.append((f"{label}: rest (process, validation, storing)", f"{variant['other_s']:.3f} s"))
    return rows


def ingestion(result: dict) -> list[tuple[str, object]]:
    memory = result["peak_memory_mib"]
    return [
        (
            "structures × atoms",
            f"{result['structures']} × {result['atoms_per_structure']} ({result['database_mib']} MiB db)",
        ),
        (
            "floor: read with ase.db (median / min)",
            f"{result['floor_s']['median']:.2f} s / {result['floor_s']['min']:.2f} s",
        ),
        (
            "ours: db → stored TrainingSetData → Pacemaker file",
            f"{result['ours_s']['median']:.2f} s / {result['ours_s']['min']:.2f} s",
        ),
        *((f"  {name}", f"{value:.2f} s") for name, value in result["ours_phases_s"].items()),
        ("ratio (median / min)", f"**{result['ratio']:.2f}** / {result['ratio_min']:.2f} (target ≤ 1.5)"),
        (
            "peak memory floor / ours",
            f"{memory['floor']:.0f} MiB / {memory['ours']:.0f} MiB (ratio {result['memory_ratio']:.2f})",
        ),
        (
            "memory after imports floor / ours",
            f"{memory['floor_after_imports']:.0f} MiB / {memory['ours_after_imports']:.0f} MiB",
        ),
    ]


def storage(result: dict) -> list[tuple[str, object]]:
    final = result["final_training_set"]
    rows = [
        (
            "iterations / final training set",
            f"{result['iterations_done']} / {final['structures']} structures, {final['bytes'] / 1024:.1f} KiB",
        ),
        ("repository added", f"{result['added_bytes']['repository'] / 1024:.1f} KiB"),
        ("database added", f"{result['added_bytes']['database'] / 1024:.1f} KiB"),
        ("ratio repository / final set", f"**{result['ratio']:.2f}** (target ≤ 1.2)"),
        ("ratio repository + database / final set", f"{result['ratio_with_database']:.2f}"),
        ("ratio training-set shards / final set", f"**{result['ratio_training_data']:.2f}**"),
    ]
    if "ratio_without_pool_and_test_set" in result:
        pool, test = (result["input_bytes"][name] / 1024 for name in ("candidates", "test_set"))
        rows += [
            ("ratio without the pool and test set (stored once)", f"{result['ratio_without_pool_and_test_set']:.2f}"),
            ("  pool / test set", f"{pool:.1f} KiB / {test:.1f} KiB"),
            ("  the run's own files per iteration", f"{result['run_bytes_per_iteration'] / 1024:.1f} KiB"),
        ]
    for name, entry in sorted(result["unique_bytes_by_node_type"].items(), key=lambda item: -item[1]["bytes"]):
        rows.append((f"  {name} ({entry['nodes']} nodes)", f"{entry['bytes'] / 1024:.1f} KiB"))
    return rows


def label_efficiency(result: dict) -> list[tuple[str, object]]:
    rows = [("target test force RMSE", f"{result['target_rmse_forces']} eV/Å")]
    if "pool" in result:
        shares = ", ".join(
            f"{share:.0%} rattled {rattle} Å"
            for share, rattle in zip(result["pool_shares"], result["rattles"], strict=True)
        )
        rows.append(("candidate pool", f"{result['pool']}: {shares} (test set: equal shares)"))
    for seed in result["seeds"]:
        for arm, curve in seed["curves"].items():
            points = ", ".join(f"{p['labelled']}: {p['test_rmse_forces']:.3f}" for p in curve)
            rows.append((f"seed {seed['seed']} {arm} (labels: RMSE eV/Å)", points))
        arms = list(seed["labels_needed"])
        for name, suffix in (("γ", ""), ("d_optimal", "_d_optimal")):
            if "final_rmse_ratio" + suffix not in seed:
                continue
            bounds = {"ratio_upper_bound" + suffix: "≤", "ratio_lower_bound" + suffix: ">"}
            shown = seed.get("ratio" + suffix) or next(
                (f"{sign} {seed[key]}" for key, sign in bounds.items() if key in seed), "target not reached"
            )
            arm = "gamma" if name == "γ" else name
            rows.append(
                (
                    f"seed {seed['seed']} labels needed {name} / random",
                    f"{seed['labels_needed'][arm]} / {seed['labels_needed']['random']} → {shown}",
                )
            )
            rows.append(
                (
                    f"seed {seed['seed']} last-round RMSE {name} / random ({name} has ≤ the labels)",
                    f"{seed['final_rmse_ratio' + suffix]:.3f}",
                )
            )
    rows.append(
        (
            "median ratio of labels needed, γ",
            f"**{result['ratio']}** over {result['ratio_seeds_reached']} seed(s) (target ≤ 0.6)",
        )
    )
    rows.append(("median final RMSE ratio γ / random", f"{result['final_rmse_ratio_median']:.3f}"))
    if "ratio_d_optimal" in result:
        rows.append(
            (
                "median ratio of labels needed, d_optimal",
                f"**{result['ratio_d_optimal']}** over {result['ratio_seeds_reached_d_optimal']} seed(s)",
            )
        )
        rows.append(
            ("median final RMSE ratio d_optimal / random", f"{result['final_rmse_ratio_median_d_optimal']:.3f}")
        )
    for target, entry in result.get("other_targets", {}).items():
        needed = "; ".join(" / ".join(str(n[arm]) for arm in arms) for n in entry["labels_needed"])
        median = "n/a" if entry["ratio_median"] is None else f"{entry['ratio_median']:.3f}"
        bounds = f", bounds {', '.join(entry['bounds'])}" if entry["bounds"] else ""
        if "ratio_median_d_optimal" in entry:
            value = entry["ratio_median_d_optimal"]
            median += f" (d_optimal {'n/a' if value is None else f'{value:.3f}'})"
        rows.append((f"at {target} eV/Å: labels {' / '.join(arms)} per seed", f"{needed} → median γ {median}{bounds}"))
    return rows


def gpu(result: dict) -> list[tuple[str, object]]:
    rows = [("GPUs visible to TensorFlow", ", ".join(result["gpus"]) or "none: CPU only")]
    for device, value in result["throughput_structures_per_s"].items():
        rows.append((f"{device}: structures/s per epoch (median)", f"{value['median']:.1f}"))
        rows.append((f"{device}: fit wall time (median)", f"{result['fit_wall_s'][device]['median']:.1f} s"))
    rows.append(("GPU / CPU throughput", f"{result['ratio']:.2f}" if result["ratio"] else "n/a (no GPU)"))
    return rows


#: Results of other settings of a benchmark, shown after it when present: file name -> benchmark.
VARIANTS = {"storage_large": "storage", "label_efficiency_redundant": "label_efficiency"}


def main(folder: Path = RESULTS) -> None:
    names = (
        "orchestration",
        "ingestion",
        "storage",
        "storage_large",
        "label_efficiency",
        "label_efficiency_redundant",
        "gpu",
    )
    for name in names:
        if name in VARIANTS and not (folder / f"{name}.json").is_file():
            continue
        path = folder / f"{name}.json"
        if not path.is_file():  # a folder of quick results
            path = folder / f"{name}.quick.json"
        if not path.is_file():
            print(f"#### {name}\n\n(no results in {path})\n")
            continue
        result = json.loads(path.read_text())
        load = result["load_average"]
        print(
            f"#### {name}\n\n{result['description']}. {result['date']}, load average before/after "
            f"{load['before']} / {load['after']}, {result['benchmark_seconds']} s.\n"
        )
        print(table(globals()[VARIANTS.get(name, name)](result)) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
