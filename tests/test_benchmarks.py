"""The benchmarks' quick mode runs end to end, so the scripts cannot rot; their JSON has sane fields.

No timing is asserted (machines are shared and noisy): only that every ratio was measured, is positive and finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.benchmark, pytest.mark.pacemaker]

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
NAMES = ("orchestration", "ingestion", "storage", "label_efficiency", "gpu")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """All five benchmarks in quick mode, in their own throw-away AiiDA profile; name -> JSON result.

    With ``AUTOPIPEC_BENCHMARK_RESULTS`` pointing to a folder of quick results, those are checked instead.
    """
    existing = os.environ.get("AUTOPIPEC_BENCHMARK_RESULTS")
    if existing:
        return {name: json.loads((Path(existing) / f"{name}.quick.json").read_text()) for name in NAMES}
    output = tmp_path_factory.mktemp("benchmarks")
    completed = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--output", str(output)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    for name in NAMES:  # each printed its table
        assert f"{name}.quick.json" in completed.stdout
    return {name: json.loads((output / f"{name}.quick.json").read_text()) for name in NAMES}


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("name", NAMES)
def test_every_result_records_machine_versions_and_load(results, name):
    result = results[name]
    assert result["benchmark"] == name and result["mode"] == "quick"
    assert result["machine"]["cpu_count"] >= 1
    assert result["versions"]["aiida-core"] and result["versions"]["python-ace"]
    assert len(result["load_average"]["before"]) == 3 and len(result["load_average"]["after"]) == 3


def test_orchestration_ratio_and_where_the_time_goes(results):
    result = results["orchestration"]
    assert positive_finite(result["ratio"])
    assert positive_finite(result["bare_pacemaker_s"]["median"])
    (variant,) = result["variants"].values()  # quick mode: the computer `autopipec setup` creates
    assert positive_finite(variant["ratio_median"]) and positive_finite(variant["ratio_without_post_fit_steps"])
    assert set(variant["stages_s"]) >= {"upload", "submit", "update", "retrieve", "parse (ours: parser)"}
    phases = {"pacemaker", "start + .yace conversion (ours)", "evaluation (ours)", "poll wait (AiiDA)"}
    assert set(variant["job_phases_s"]) == phases
    assert positive_finite(variant["job_phases_s"]["pacemaker"])
    assert result["profile_ours"], "the profile names our functions"


def test_ingestion_ratio_and_memory(results):
    result = results["ingestion"]
    assert result["structures"] == 300 and result["atoms_per_structure"] == 64
    assert positive_finite(result["ratio"]) and positive_finite(result["memory_ratio"])
    assert positive_finite(result["peak_memory_mib"]["ours"]) and positive_finite(result["peak_memory_mib"]["floor"])


def test_storage_ratio(results):
    result = results["storage"]
    assert result["iterations_done"] == 2
    assert positive_finite(result["ratio"]) and positive_finite(result["ratio_without_pool_and_test_set"])
    assert result["ratio_training_data"] == pytest.approx(1.0, abs=0.01)  # no training structure stored twice
    assert positive_finite(result["run_bytes_per_iteration"])
    assert result["final_training_set"]["structures"] > result["settings"]["initial"]
    assert result["unique_bytes_by_node_type"]["TrainingSetData"]["bytes"] > 0


def test_label_efficiency_curves(results):
    result = results["label_efficiency"]
    (seed,) = result["seeds"]
    for arm in ("gamma", "d_optimal", "random"):
        curve = seed["curves"][arm]
        assert curve and all(positive_finite(point["test_rmse_forces"]) for point in curve)
        assert curve[0]["labelled"] == result["settings"]["initial"]
    assert positive_finite(result["final_rmse_ratio_median"])
    assert positive_finite(result["final_rmse_ratio_median_d_optimal"])
    assert "ratio" in seed or "ratio_upper_bound" in seed or None in seed["labels_needed"].values()
    assert result["pool"] == "balanced" and len(result["pool_shares"]) == len(result["rattles"])


def test_gpu_reports_cpu_and_says_whether_a_gpu_was_used(results):
    result = results["gpu"]
    assert positive_finite(result["throughput_structures_per_s"]["cpu"]["median"])
    if result["gpu_available"]:
        assert positive_finite(result["ratio"])
    else:
        assert result["ratio"] is None and "no GPU" in result["note"]


def test_label_efficiency_pools_hold_the_rattles_in_their_shares():
    sys.path.insert(0, str(RUN.parent))
    try:
        import label_efficiency
    finally:
        sys.path.remove(str(RUN.parent))
    assert label_efficiency.share_counts(20, label_efficiency.POOLS["balanced"]) == [7, 7, 6]
    assert label_efficiency.share_counts(60, label_efficiency.POOLS["redundant"]) == [27, 27, 6]
    assert sum(label_efficiency.share_counts(37, (0.2, 0.5, 0.3))) == 37
    pool = label_efficiency.mixed_structures(20, seed=1, labelled=False, shares=label_efficiency.POOLS["redundant"])
    rms = []  # displacement from the ideal fcc sites (multiples of 1/8 of the strained 1x1x2 cell), Å
    for atoms in pool:
        scaled = atoms.cell.scaled_positions(atoms.positions)
        rms.append(np.sqrt((((scaled - (scaled * 8).round() / 8) @ atoms.cell.array) ** 2).mean()))
    assert len(pool) == 20 and max(rms[:18]) < min(rms[18:])  # 18 mild (0.05, 0.1 Å), then 2 rattled by 0.2 Å


def _label_efficiency_module():
    sys.path.insert(0, str(RUN.parent))
    try:
        import label_efficiency
    finally:
        sys.path.remove(str(RUN.parent))
    return label_efficiency


def _curve(*points):
    return [
        {"round": i + 1, "labelled": labelled, "test_rmse_forces": rmse} for i, (labelled, rmse) in enumerate(points)
    ]


def test_label_efficiency_runs_of_different_arms_are_joined_per_seed(tmp_path):
    """A d_optimal-only run joins the γ and random curves of the same seeds; ratios per arm, bounds when one arm
    never reached the target; an arm given twice for one seed is refused."""
    label_efficiency = _label_efficiency_module()
    settings = {"seeds": [0, 1], "target": 0.15}

    def result(curves_per_seed):
        seeds = [label_efficiency.compare(seed, curves, 0.15) for seed, curves in curves_per_seed.items()]
        summary = label_efficiency.summarise("full", settings, seeds, [0.0, 0.0, 0.0])
        summary.update(machine={}, versions={}, date="today")
        return summary

    first = result(
        {
            0: {"gamma": _curve((10, 0.3), (16, 0.14)), "random": _curve((10, 0.3), (16, 0.2), (22, 0.1))},
            1: {"gamma": _curve((10, 0.3), (16, 0.2)), "random": _curve((10, 0.3), (16, 0.12))},
        }
    )
    assert first["ratio"] == pytest.approx(16 / 22, abs=1e-4) and "ratio_d_optimal" not in first
    second = result({0: {"d_optimal": _curve((10, 0.3), (16, 0.25), (22, 0.13))}, 1: {"d_optimal": _curve((10, 0.1))}})
    paths = [tmp_path / "first.json", tmp_path / "second.json"]
    for path, content in zip(paths, (first, second), strict=True):
        path.write_text(json.dumps(content))
    merged = label_efficiency.merge(paths, tmp_path / "merged.json")
    seed_0, seed_1 = merged["seeds"]
    assert list(seed_0["curves"]) == ["gamma", "d_optimal", "random"]
    assert seed_0["ratio_d_optimal"] == 1.0 and seed_0["ratio"] == pytest.approx(16 / 22, abs=1e-4)
    assert seed_1["ratio_d_optimal"] == pytest.approx(10 / 16, abs=1e-4) and seed_1["ratio_lower_bound"] == 1.0
    assert merged["ratio_d_optimal"] == pytest.approx((1.0 + 10 / 16) / 2, abs=1e-4)
    assert merged["ratio_seeds_reached_d_optimal"] == 2 and merged["ratio_seeds_reached"] == 1
    with pytest.raises(ValueError, match=r"seed 0: arms \['d_optimal'\] given twice"):
        label_efficiency.merge([paths[0], paths[1], paths[1]], tmp_path / "twice.json")
