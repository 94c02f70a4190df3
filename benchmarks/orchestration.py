"""Orchestration overhead: a ``PacemakerCalculation`` run through AiiDA against bare ``pacemaker input.yaml``.

Both fit the same data with the same ``input.yaml`` (written by the same ``prepare_fit``). The AiiDA side is timed
per CalcJob stage (upload, submit, waiting for the job, retrieve, parse) by wrapping AiiDA's transport tasks, and
the job itself is split with the modification times of the files it writes: pacemaker, then our compute-side
``.yace`` conversion and model evaluation (which bare pacemaker does not do, so they are reported separately).
Two computers: presto's ``localhost`` (job poll interval 1 s, login shell) and the local computer that
``autopipec setup`` creates (poll interval 0.5 s, plain shell: ``aiida_autopipec.codes.configure_localhost``).
The job runs pacemaker with ``--no-predict`` (our evaluation of the delivered model replaces Pacemaker's predictions
and plots), so the full mode also times bare pacemaker with the job's own arguments: the ratio against that is the
overhead of orchestration alone.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import subprocess
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import executable, load_average, load_benchmark_profile, print_table, ratio, summary

NAME = "orchestration"
PRESTO_LOCALHOST = "presto localhost (poll 1 s)"
AUTOPIPEC_LOCALHOST = "autopipec setup's localhost (poll 0.5 s, plain shell)"
SETTINGS = {
    "quick": {
        "structures": 16,
        "repeat": (1, 1, 2),
        "repeats": 1,
        "variants": (AUTOPIPEC_LOCALHOST,),
        "warmup": False,
        "parameters": {"cutoff": 4.5, "maxiter": 5, "number_of_functions_per_element": 8, "display_step": 5},
    },
    "full": {  # 40-60 s of pacemaker on 2 idle cores
        "structures": 150,
        "repeat": (2, 2, 2),
        "repeats": 3,
        "variants": (PRESTO_LOCALHOST, AUTOPIPEC_LOCALHOST),
        "warmup": False,
        "bare_job_arguments": True,  # bare pacemaker with the job's arguments (--verbose-tf --no-predict)
        "parameters": {"cutoff": 5.0, "maxiter": 60, "number_of_functions_per_element": 16, "display_step": 30},
    },
}
#: Phases of the job that bare pacemaker does not have: our compute-side .yace conversion and model evaluation.
POST_FIT_PHASES = ("start + .yace conversion (ours)", "evaluation (ours)")
#: Stages of a CalcJob timed by wrapping AiiDA's tasks (``update`` includes the job running and the poll waits).
TASKS = ("task_upload_job", "task_submit_job", "task_update_job", "task_retrieve_job")


class StageClock:
    """Accumulated seconds per stage and the wall-clock time each stage last ended."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.ended: dict[str, float] = {}

    def add(self, stage: str, start: float) -> None:
        self.seconds[stage] += time.perf_counter() - start
        self.ended[stage] = time.time()


@contextmanager
def stage_timers(clock: StageClock, calculation_class):
    """Wrap AiiDA's CalcJob tasks and the calculation's ``prepare_for_submission`` and ``parse`` with timers."""
    from aiida.engine.processes.calcjobs import tasks

    originals = {name: getattr(tasks, name) for name in TASKS}

    def wrap_task(name, task):
        async def timed_task(*args, **kwargs):
            start = time.perf_counter()
            try:
                return await task(*args, **kwargs)
            finally:
                clock.add(name.removeprefix("task_").removesuffix("_job"), start)

        return timed_task

    def wrap_method(stage, method):
        def timed_method(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                clock.add(stage, start)

        return timed_method

    prepare, parse = calculation_class.prepare_for_submission, calculation_class.parse
    for name, task in originals.items():
        setattr(tasks, name, wrap_task(name, task))
    calculation_class.prepare_for_submission = wrap_method("prepare_for_submission (ours)", prepare)
    calculation_class.parse = wrap_method("parse (ours: parser)", parse)
    try:
        yield clock
    finally:
        for name, task in originals.items():
            setattr(tasks, name, task)
        calculation_class.prepare_for_submission, calculation_class.parse = prepare, parse


def job_phases(remote_path: Path, submitted: float, polled: float) -> dict[str, float]:
    """Split the job from the files it wrote: pacemaker, .yace conversion, evaluation, then waiting for the poll."""
    from aiida_autopipec.learning import files

    exit_status = (remote_path / files.EXIT_STATUS).stat().st_mtime
    yace = (remote_path / files.OUTPUT_POTENTIAL_YACE).stat().st_mtime
    evaluation = (remote_path / files.EVALUATION_OUTPUT).stat().st_mtime
    return {
        "pacemaker": exit_status - submitted,
        "start + .yace conversion (ours)": yace - exit_status,
        "evaluation (ours)": evaluation - yace,
        "poll wait (AiiDA)": polled - evaluation,
    }


def bare_fit(folder: Path, *arguments: str) -> float:
    """Wall time (s) of ``pacemaker [arguments] input.yaml`` in a prepared folder."""
    from aiida_autopipec.learning import files

    command = [executable("pacemaker"), *arguments, files.INPUT_YAML]
    with open(folder / files.STDOUT, "w") as out, open(folder / files.STDERR, "w") as err:
        start = time.perf_counter()
        result = subprocess.run(command, cwd=folder, stdout=out, stderr=err)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"bare pacemaker failed ({result.returncode}) in {folder}: see {files.STDERR}")
    return seconds


def aiida_fit(inputs: dict[str, Any], profile: bool = False) -> dict[str, Any]:
    """One PacemakerCalculation through ``run``: wall time, stage times, job phases (and a profile if asked)."""
    from aiida.engine import run_get_node

    from aiida_autopipec.calculations.pacemaker import PacemakerCalculation

    clock = StageClock()
    profiler = cProfile.Profile() if profile else None
    with stage_timers(clock, PacemakerCalculation):
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        _, node = run_get_node(PacemakerCalculation, **inputs)
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - start
    if not node.is_finished_ok:
        raise RuntimeError(f"PacemakerCalculation<{node.pk}> failed: [{node.exit_status}] {node.exit_message}")
    phases = job_phases(
        Path(node.outputs.remote_folder.get_remote_path()), clock.ended["submit"], clock.ended["update"]
    )
    result = {"wall": wall, "stages": dict(clock.seconds), "job": phases, "pk": node.pk}
    if profiler is not None:
        result["profile"] = top_functions(profiler)
    return result


def top_functions(profiler: cProfile.Profile, count: int = 12) -> list[dict[str, Any]]:
    """Our functions (aiida_autopipec) with the most cumulative time in the profiled run."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, function), (_, calls, _, cumulative, _) in stats.stats.items():
        if "aiida_autopipec" in filename:
            where = filename.split("aiida_autopipec/", 1)[-1]
            rows.append({"function": f"{where}:{line}({function})", "calls": calls, "cumulative_s": cumulative})
    rows.sort(key=lambda row: -row["cumulative_s"])
    return [{**row, "cumulative_s": round(row["cumulative_s"], 4)} for row in rows[:count]]


def computers():
    """presto's ``localhost`` as it is, and the local computer ``autopipec setup`` creates."""
    from aiida import orm

    from aiida_autopipec.codes import get_or_create_localhost

    return {
        PRESTO_LOCALHOST: orm.load_computer("localhost"),
        AUTOPIPEC_LOCALHOST: get_or_create_localhost("autopipec-localhost"),
    }


def run(mode: str, workdir: Path) -> dict[str, Any]:
    settings = SETTINGS[mode]
    load_benchmark_profile()
    from aiida import orm

    from aiida_autopipec.calculations.pacemaker import system_config_from_inputs
    from aiida_autopipec.codes import get_or_create_local_code
    from aiida_autopipec.data import TrainingSetData
    from aiida_autopipec.learning import files
    from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
    from aiida_autopipec.learning.pacemaker import prepare_fit
    from aiida_autopipec.learning.reference_data import emt_dataset

    parameters = {**settings["parameters"], "device": "cpu"}
    training_set = TrainingSetData.from_ase(emt_dataset(settings["structures"], seed=11, repeat=settings["repeat"]))
    training_set.store()
    variants = {label: computer for label, computer in computers().items() if label in settings["variants"]}
    codes = {label: get_or_create_local_code(computer=computer) for label, computer in variants.items()}
    inputs = {
        label: {"code": code, "training_set": training_set, "parameters": orm.Dict(parameters)}
        for label, code in codes.items()
    }
    generator = PacemakerConfigGenerator(system_config_from_inputs(parameters, training_set))

    def bare_folder() -> Path:
        folder = Path(tempfile.mkdtemp(prefix="bare-", dir=workdir))
        prepare_fit(folder, generator, training_set.get_arrays())
        return folder

    load_before = load_average()
    profiled = next(iter(variants))  # its first run is profiled (cProfile adds a little to that run)
    bare, bare_job, through_aiida = [], [], defaultdict(list)
    profile = None
    if settings["warmup"]:  # the first run loads plugins: profiled, not counted
        profile = aiida_fit(inputs[profiled], profile=True)["profile"]
    for _ in range(settings["repeats"]):  # interleaved, so load changes hit every variant alike
        bare.append(bare_fit(bare_folder()))
        if settings.get("bare_job_arguments"):
            bare_job.append(bare_fit(bare_folder(), *files.pacemaker_arguments()[:-1]))
        for label in variants:
            through_aiida[label].append(aiida_fit(inputs[label], profile=profile is None and label == profiled))
            profile = profile or through_aiida[label][-1].get("profile")
    load_after = load_average()

    bare_median = summary(bare)["median"]
    results: dict[str, Any] = {"bare_pacemaker_s": summary(bare), "variants": {}}
    if bare_job:
        results["bare_pacemaker_job_arguments"] = files.pacemaker_arguments()
        results["bare_pacemaker_job_arguments_s"] = summary(bare_job)
    for label, runs in through_aiida.items():
        walls = [entry["wall"] for entry in runs]
        post_fit = [sum(entry["job"][name] for name in POST_FIT_PHASES) for entry in runs]
        stage_names = runs[0]["stages"].keys()
        job_names = runs[0]["job"].keys()
        results["variants"][label] = {
            "aiida_s": summary(walls),
            "ratio_median": ratio(summary(walls)["median"], bare_median),
            "ratio_min": ratio(min(walls), min(bare)),
            "overhead_s": summary([wall - bare_median for wall in walls]),
            **(
                {"ratio_vs_bare_job_arguments": ratio(summary(walls)["median"], summary(bare_job)["median"])}
                if bare_job
                else {}
            ),
            "ratio_without_post_fit_steps": ratio(
                summary([wall - post for wall, post in zip(walls, post_fit, strict=True)])["median"], bare_median
            ),
            "stages_s": {name: summary([entry["stages"][name] for entry in runs])["median"] for name in stage_names},
            "job_phases_s": {name: summary([entry["job"][name] for entry in runs])["median"] for name in job_names},
            "other_s": summary([entry["wall"] - sum(entry["stages"].values()) for entry in runs])["median"],
        }
    results.update(
        {
            "benchmark": NAME,
            "mode": mode,
            "description": "wall time of PacemakerCalculation via aiida.engine.run / bare `pacemaker input.yaml`",
            "dataset": {"structures": settings["structures"], "atoms_per_structure": 4 * int(_product(settings))},
            "parameters": parameters,
            "repeats": settings["repeats"],
            "ratio": results["variants"][next(iter(variants))]["ratio_median"],  # presto's own where measured
            "target": 1.02,
            "profile_ours": profile,
            "load_average": {"before": load_before, "after": load_after},
        }
    )
    rows = [("bare pacemaker (median / min)", f"{bare_median:.2f} s / {min(bare):.2f} s")]
    if bare_job:
        rows.append(("bare pacemaker with the job's arguments (median)", f"{summary(bare_job)['median']:.2f} s"))
    for label, variant in results["variants"].items():
        rows += [
            (
                f"[{label}] AiiDA (median / min)",
                f"{variant['aiida_s']['median']:.2f} s / {variant['aiida_s']['min']:.2f} s",
            ),
            (f"[{label}] ratio (median / min)", f"{variant['ratio_median']:.3f} / {variant['ratio_min']:.3f}"),
            (f"[{label}] overhead (median)", f"{variant['overhead_s']['median']:.2f} s"),
            (f"[{label}] ratio without .yace+evaluation", f"{variant['ratio_without_post_fit_steps']:.3f}"),
        ]
        if "ratio_vs_bare_job_arguments" in variant:
            rows.append(
                (f"[{label}] ratio vs bare with the job's arguments", f"{variant['ratio_vs_bare_job_arguments']:.3f}")
            )
        rows += [(f"[{label}]   stage {name}", f"{value:.3f} s") for name, value in variant["stages_s"].items()]
        rows += [(f"[{label}]   job {name}", f"{value:.3f} s") for name, value in variant["job_phases_s"].items()]
        rows.append((f"[{label}]   other (process, storing)", f"{variant['other_s']:.3f} s"))
    rows.append(("load average before / after", f"{load_before} / {load_after}"))
    print_table(f"1. Orchestration overhead ({mode})", rows)
    return results


def _product(settings: dict[str, Any]) -> int:
    x, y, z = settings["repeat"]
    return x * y * z
