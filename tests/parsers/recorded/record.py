#!/usr/bin/env python
"""Record REAL Pacemaker runs whose small output files serve as parser-test fixtures.

Usage (from the repository root)::

    python tests/parsers/recorded/record.py            # all cases
    python tests/parsers/recorded/record.py success nan_loss

For each case a temporary working directory is created, ``input.yaml`` and a
small Al-Cu training set (computed with ASE's EMT calculator, fixed seeds) are
written, the same job script that the CalcJob runs is executed with bash
(some cases wrap or interrupt it, see ``CASES``) and only the small files a
parser needs are copied to ``tests/parsers/recorded/<case>/`` together with a
``NOTES.md`` describing the run.

Nothing in the fixtures is invented: every file is what Pacemaker wrote.
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent

from aiida_autopipec.learning import files  # noqa: E402
from aiida_autopipec.learning.pacemaker import post_fit_script  # noqa: E402

#: The job script of the CalcJob: pacemaker, then the shared post-fit lines (exit status, .yace, evaluation).
JOB_SCRIPT = f"pacemaker {' '.join(files.pacemaker_arguments())} > {files.STDOUT} 2> {files.STDERR}\n" + post_fit_script(
    "pace_yaml2yace", sys.executable
) + "\n"

#: Files kept from a working directory (if produced).
KEEP = [
    "input.yaml",
    "pacemaker.out",
    "pacemaker.err",
    "pacemaker.exit_status",
    "log.txt",
    "metrics.txt",
    "test_metrics.txt",
    "cycle_metrics.txt",
    "test_cycle_metrics.txt",
    "output_potential.yaml",
    "output_potential.yace",
    "interim_potential_0.yaml",
    "yaml2yace.out",
    # inputs the CalcJob writes (the parser reads them from the node's repository) and the evaluation results
    "reference_energies.json",
    "evaluation_input.json",
    "evaluation.json",
    "evaluate.out",
]

ERR_MAX_BYTES = 60 * 1024
ERR_HEAD, ERR_TAIL = 100, 200

BASE_INPUT = {
    "seed": 42,
    "potential": {
        "deltaSplineBins": 0.001,
        "elements": ["Al", "Cu"],
        "embeddings": {
            "ALL": {"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1, 1, 0.5], "ndensity": 2}
        },
        "bonds": {
            "ALL": {
                "radbase": "SBessel",
                "radparameters": [5.25],
                "rcut": 4.5,
                "dcut": 0.01,
                "NameOfCutoffFunction": "cos",
            }
        },
        "functions": {
            "number_of_functions_per_element": 10,
            "ALL": {"nradmax_by_orders": [15, 3, 2, 1], "lmax_by_orders": [0, 2, 2, 1]},
        },
    },
    "data": {"filename": "training_data.pckl.gzip", "test_size": 0.2},
    "fit": {"loss": {"kappa": 0.3, "L1_coeffs": 1e-8, "L2_coeffs": 1e-8}, "optimizer": "BFGS", "maxiter": 20},
    "backend": {"evaluator": "tensorpot", "batch_size": 100, "display_step": 5},
}


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------
def make_dataset(
    n_structures: int = 20,
    repeat: int = 1,
    n_cu: int = 2,
    seed: int = 1234,
    extra_element: str | None = None,
    scale_forces_index: int | None = None,
    scale_forces_value: float | None = None,
    overlap_index: int | None = None,
) -> pd.DataFrame:
    """Small Al-Cu EMT dataset.

    fcc Al cubic cell (4 atoms) repeated ``2*repeat`` times along each axis (``repeat=1``: 32 atoms),
    ``n_cu`` (times ``repeat**3``) random atoms swapped to Cu, isotropic strain uniformly in [-3 %, +3 %],
    rattled with stdev 0.05 A. ``energy_corrected = energy - n_atoms * mean(energy per atom)``.
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_structures):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2 * repeat, 2 * repeat, 2 * repeat))
        idx = rng.choice(len(atoms), size=n_cu * repeat**3, replace=False)
        symbols = atoms.get_chemical_symbols()
        for j in idx:
            symbols[j] = "Cu"
        if extra_element is not None and i == 0:
            symbols[0] = extra_element  # EMT knows Ni, Ag, Au, Pd, Pt, H, C, N, O
        atoms.set_chemical_symbols(symbols)
        strain = rng.uniform(-0.03, 0.03)
        atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
        atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 31)))
        atoms.calc = EMT()
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces())
        atoms.calc = None
        rows.append({"ase_atoms": atoms, "energy": energy, "forces": forces})
    df = pd.DataFrame(rows)
    n_at = df["ase_atoms"].map(len)
    mean_epa = (df["energy"] / n_at).mean()
    df["energy_corrected"] = df["energy"] - n_at * mean_epa
    if scale_forces_index is not None:
        f = np.array(df.at[scale_forces_index, "forces"])
        f[0, 0] = scale_forces_value
        df.at[scale_forces_index, "forces"] = f
    if overlap_index is not None:
        atoms = df.at[overlap_index, "ase_atoms"]
        pos = atoms.get_positions()
        pos[1] = pos[0]
        atoms.set_positions(pos)
    return df


# --------------------------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------------------------
def deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def write_evaluation_inputs(workdir: Path, inp: dict, df: pd.DataFrame, mode: str = "none") -> None:
    """What the CalcJob writes next to a hand-made input.yaml: references, evaluation input and scripts."""
    from aiida_autopipec.config import SystemConfig
    from aiida_autopipec.learning.baseline import shortest_pair_distances, zbl_pair_cutoffs
    from aiida_autopipec.learning.pacemaker import REFERENCE_ENERGIES_JSON, evaluation_files, evaluation_settings

    elements = inp["potential"]["elements"]
    mean_epa = float((df["energy"] / df["ase_atoms"].map(len)).mean())  # make_dataset's energy_corrected
    (workdir / REFERENCE_ENERGIES_JSON).write_text(json.dumps({e: mean_epa for e in elements}))
    config = SystemConfig(elements=elements, baseline=mode)
    cutoffs = zbl_pair_cutoffs(elements, shortest_pair_distances(list(df["ase_atoms"]), elements))
    settings = evaluation_settings(config, cutoffs, inp["potential"]["bonds"]["ALL"]["rcut"])
    (workdir / files.EVALUATION_INPUT).write_text(json.dumps(settings, indent=2))
    for name, source in evaluation_files().items():
        (workdir / name).write_text(source)


def prepare_with_generator(mode: str, device: str = "cpu"):
    """A ``prepare`` hook: replace the hand-made input by what the plugin itself writes (``prepare_fit``)."""

    def prepare(workdir: Path) -> None:
        from aiida_autopipec.config import SystemConfig
        from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
        from aiida_autopipec.learning.dataset import StructureArrays
        from aiida_autopipec.learning.pacemaker import prepare_fit

        df = pd.read_pickle(workdir / files.TRAINING_DATA)
        structures = []
        for atoms, energy, forces in zip(df["ase_atoms"], df["energy"], df["forces"], strict=True):
            atoms = atoms.copy()
            atoms.info["energy"], atoms.arrays["forces"] = energy, np.asarray(forces)
            structures.append(atoms)
        config = SystemConfig(
            elements=["Al", "Cu"],
            training={"cutoff": 4.5, "maxiter": 20, "number_of_functions_per_element": 10, "test_size": 0.2,
                      "display_step": 5, "baseline": mode, "device": device},
        )
        prepare_fit(workdir, PacemakerConfigGenerator(config), StructureArrays.from_atoms(structures))

    return prepare


CASES: dict[str, dict] = {
    "success_device_auto": {
        "description": "The plugin's own input (prepare_fit) with device 'auto' (no gpu_config: TensorFlow picks), "
        "pacemaker run with --verbose-tf as the CalcJob does, on this GPU-less machine; exits 0. What TensorFlow "
        "says about devices is in pacemaker.err (parsed by aiida_autopipec.learning.device).",
        "prepare": prepare_with_generator("core_repulsion", device="auto"),
    },
    "success_core_repulsion": {
        "description": "The plugin's own input (prepare_fit): baseline core_repulsion, Pacemaker's ZBL core per "
        "pair below the shortest distances of the data, maxiter 20, 20 % test split; exits 0.",
        "prepare": prepare_with_generator("core_repulsion"),
    },
    "success_zbl_delta": {
        "description": "The plugin's own input (prepare_fit): baseline zbl_delta, the ZBL baseline subtracted from "
        "the data (ACE fits the residual), maxiter 20, 20 % test split; exits 0.",
        "prepare": prepare_with_generator("zbl_delta"),
    },
    "success": {
        "description": "Normal BFGS fit (maxiter 20) with a 20 % test split; pacemaker exits 0.",
        "input": {},
        "data": {},
    },
    "success_no_test": {
        "description": "Normal BFGS fit (maxiter 20) without any test set (no `data::test_size`); exits 0.",
        "input": {"data": {"test_size": None}},
        "data": {},
    },
    "error_exit": {
        "description": "Invalid optimizer name `fit::optimizer: FOO`. Pacemaker prepares the data, builds the "
        "TensorFlow model and then raises ValueError('Unknown optimizer ...') at the start of the fit; exits 1.",
        "input": {"fit": {"optimizer": "FOO"}},
        "data": {},
    },
    "inf_loss": {
        "description": "One force component in the training data is +inf (structure 3, atom 0, x). Pacemaker's data "
        "checks only reject NaN, so the fit starts with an infinite loss.",
        "input": {"data": {"test_size": None}},
        "data": {"scale_forces_index": 3, "scale_forces_value": float("inf")},
        "notes": [
            "Finding: loss is inf from the first evaluation (metrics.txt: loss and f_loss_contrib = inf), BFGS stops with 'message=NaN result encountered.', output_potential.yaml is written (`_loss: inf`), then plotting the predictions fails ('ValueError: supplied range of [..., inf] is not finite' on stderr) and pacemaker exits 1.",
        ],
    },
    "nan_loss": {
        "description": "Corrupted geometry: in training structure 3 atom 1 is moved onto atom 0 (zero interatomic "
        "distance) AFTER the EMT energy/forces were computed, so the ACE model evaluates a pair at r = 0.",
        "input": {"data": {"test_size": None}},
        "data": {"overlap_index": 3},
        "notes": [
            "Finding: the loss is NaN from the first evaluation (metrics.txt row 0: loss, e_loss_contrib, f_loss_contrib, rmse_* = nan); scipy BFGS stops at once ('Optimization result(success=False, status=3, message=NaN result encountered., nfev=1, njev=1)' in log.txt), pacemaker still writes output_potential.yaml (metadata `_loss: nan`, BFGS made 0 iterations) and EXITS 0. Only the NaN markers reveal the failure.",
        ],
    },
    "out_of_memory": {
        "description": "Real TensorFlow ResourceExhaustedError ('OOM when allocating tensor') on CPU. TensorFlow's BFC "
        "allocator (the one used on GPUs) is switched on for the CPU with a 300 MB pool via the environment variables "
        "TF_CPU_ALLOCATOR_USE_BFC=true and TF_CPU_BFC_MEM_LIMIT_IN_MB=300, and `backend::batch_size_reduction: false` "
        "so pacemaker does not retry with a smaller batch. Larger data (40 x 256-atom cells, rcut 7 A) and "
        "batch_size 1000 so that one batch does not fit.",
        "input": {
            "data": {"test_size": None},
            "potential": {"bonds": {"ALL": {"rcut": 7.0}}},
            "backend": {"batch_size": 1000, "batch_size_reduction": False},
        },
        "data": {"n_structures": 40, "repeat": 2},
        "script": "export TF_CPU_ALLOCATOR_USE_BFC=true TF_CPU_BFC_MEM_LIMIT_IN_MB=300\n" + JOB_SCRIPT,
        "notes": [
            "This machine has no GPU. A plain CPU run has no memory pool, so the BFC allocator with a fixed limit is "
            "the way to get the same ResourceExhaustedError/'OOM when allocating tensor' that a GPU run raises "
            "(on a GPU the allocator name in the message is 'GPU_0_bfc' instead of 'bfc_cpu_allocator_for_gpu'). "
            "Capping the address space with `ulimit -v` instead does NOT give a ResourceExhaustedError: see the case "
            "`out_of_memory_ulimit` (Python `MemoryError: std::bad_alloc`, exit 1) and the NOTES there "
            "(C++ `terminate called after throwing an instance of 'std::bad_alloc'`, SIGABRT, exit 134).",
            "Pacemaker catches the ResourceExhaustedError in pyace/fitadapter.py, logs it (also into log.txt, "
            "level ERROR), and because batch_size_reduction is false re-raises it as a RuntimeError whose message "
            "is mangled by a format bug in pyace (it literally starts with '{} errors encountered. Consider using "
            "`backend::Graph execution error:').",
        ],
    },
    "out_of_memory_reduced": {
        "description": "Same OOM set-up as `out_of_memory` (BFC CPU allocator limited to 300 MB, 40 x 256-atom "
        "cells, rcut 7 A) but with pacemaker's default `batch_size_reduction` (on), batch_size 40, "
        "batch_size_reduction_factor 2 and maxiter 5: pacemaker catches the ResourceExhaustedError, halves the "
        "batch size and restarts the fit.",
        "input": {
            "data": {"test_size": None},
            "potential": {"bonds": {"ALL": {"rcut": 7.0}}},
            "fit": {"maxiter": 5},
            "backend": {"batch_size": 40, "batch_size_reduction_factor": 2},
        },
        "data": {"n_structures": 40, "repeat": 2},
        "script": "export TF_CPU_ALLOCATOR_USE_BFC=true TF_CPU_BFC_MEM_LIMIT_IN_MB=300\n" + JOB_SCRIPT,
        "notes": [
            "The run RECOVERED: one ResourceExhaustedError at batch size 40 (logged at level ERROR in log.txt and on "
            "stderr, 'OOM when allocating tensor ...'), then 'Decrease batch size (by factor 2): 40 -> 20', the fit "
            "finished and pacemaker exited 0 with output_potential.yaml. A parser must therefore not fail a run just "
            "because 'OOM when allocating' appears in the log when the exit status is 0.",
        ],
    },
    "out_of_memory_ulimit": {
        "description": "Address space capped with `ulimit -v 3000000` (about 2.9 GiB) in the job script; same larger "
        "data as `out_of_memory` (40 x 256-atom cells, rcut 7 A, batch_size 1000, batch_size_reduction false). "
        "TensorFlow fails inside the first loss evaluation with a Python `MemoryError: std::bad_alloc`.",
        "input": {
            "data": {"test_size": None},
            "potential": {"bonds": {"ALL": {"rcut": 7.0}}},
            "backend": {"batch_size": 1000, "batch_size_reduction": False},
        },
        "data": {"n_structures": 40, "repeat": 2},
        "script": "ulimit -v 3000000\n" + JOB_SCRIPT,
        "notes": [
            "Exploration (not kept): with 100 x 256-atom cells, rcut 9 A and `ulimit -v 6000000` the process was "
            "aborted instead: stderr ended with `terminate called after throwing an instance of 'std::bad_alloc'` / "
            "`  what():  std::bad_alloc`, no Python traceback, exit status 134 (SIGABRT). With `ulimit -v 4000000` "
            "and the data of this case the fit succeeded (peak RSS about 1.9 GB). Which of the two failure modes "
            "appears depends on where the allocation fails, so a parser should treat `std::bad_alloc`, "
            "`MemoryError` and exit 134 as out-of-memory as well.",
        ],
    },
    "killed": {
        "description": "Long fit (maxiter 2000) whose pacemaker process is sent SIGTERM by record.py once "
        "metrics.txt has >= 5 data rows; the job script itself goes on, records the exit status 143 (128+15) and "
        "skips pace_yaml2yace because no output_potential.yaml exists.",
        "input": {"data": {"test_size": None}, "fit": {"maxiter": 2000}},
        "data": {},
        "kill": {"signal": "SIGTERM", "min_metrics_rows": 5, "target": "pacemaker"},
        "notes": [
            "`timeout -s TERM <t> pacemaker ...` in the job script would give the same files but exit status 124 "
            "(timeout's own code) instead of 143.",
        ],
    },
    "killed_sigkill": {
        "description": "As `killed`, but the pacemaker process gets SIGKILL (as from the kernel OOM killer or a "
        "scheduler's hard kill); exit status 137 (128+9).",
        "input": {"data": {"test_size": None}, "fit": {"maxiter": 2000}},
        "data": {},
        "kill": {"signal": "SIGKILL", "min_metrics_rows": 5, "target": "pacemaker"},
    },
    "killed_job": {
        "description": "As `killed`, but SIGTERM goes to the whole process group (job-script bash and pacemaker), "
        "which is what a scheduler does at the wall-time limit. bash dies too, so pacemaker.exit_status is never "
        "written and pace_yaml2yace never runs.",
        "input": {"data": {"test_size": None}, "fit": {"maxiter": 2000}},
        "data": {},
        "kill": {"signal": "SIGTERM", "min_metrics_rows": 5, "target": "group"},
    },
    "exit_after_potential": {
        "description": "`backend::imagetype: foo` (an unsupported matplotlib image format). The fit succeeds and "
        "output_potential.yaml is written, then the prediction/plotting phase fails in "
        "`plot_analyse_error_distributions` (savefig) and pacemaker exits 1; the job script still converts the "
        "potential to .yace.",
        "input": {"data": {"test_size": None}, "backend": {"imagetype": "foo"}},
        "data": {},
        "notes": [
            "The case `inf_loss` is another real instance of 'non-zero exit after output_potential.yaml was written' "
            "(plotting fails on the infinite force).",
        ],
    },
}


# --------------------------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------------------------
def versions() -> dict:
    from importlib.metadata import version

    out = {}
    for pkg in ("python-ace", "tensorpotential", "numpy", "tensorflow", "ase", "pandas"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = "?"
    out["python"] = sys.version.split()[0]
    return out


def run_job(workdir: Path, case: dict) -> dict:
    """Run the job script (possibly wrapped/interrupted) in ``workdir``; return run info."""
    script = case.get("script", JOB_SCRIPT)
    (workdir / "job.sh").write_text(script)
    t0 = time.time()
    proc = subprocess.Popen(["bash", "job.sh"], cwd=workdir, start_new_session=True)
    info: dict = {}
    kill = case.get("kill")
    if kill is not None:
        # wait until metrics.txt has enough rows, then send the signal
        min_rows = kill.get("min_metrics_rows", 3)
        target = kill.get("target", "pacemaker")
        while proc.poll() is None:
            m = workdir / "metrics.txt"
            if m.exists() and len(m.read_text().splitlines()) - 1 >= min_rows and (
                workdir / "interim_potential_0.yaml"
            ).exists():
                break
            time.sleep(0.5)
        if proc.poll() is None:
            sig = getattr(signal, kill["signal"])
            if target == "pacemaker":
                # the pacemaker process is the (only) child of the job-script bash
                import psutil

                children = psutil.Process(proc.pid).children()
                assert len(children) == 1, children
                pid = children[0].pid
                os.kill(pid, sig)
                info["killed"] = f"{kill['signal']} sent to the pacemaker process (pid {pid}) only"
            else:
                os.killpg(proc.pid, sig)
                info["killed"] = f"{kill['signal']} sent to the whole process group of the job script (bash + pacemaker)"
            info["killed_after_s"] = round(time.time() - t0, 1)
    proc.wait()
    info["job_script_rc"] = proc.returncode
    info["wall_s"] = round(time.time() - t0, 1)
    return info


def record(name: str) -> None:
    case = CASES[name]
    dest = HERE / name
    print(f"=== {name}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"pace_{name}_") as tmp:
        workdir = Path(tmp)
        inp = deep_update(BASE_INPUT, case.get("input", {}))
        with open(workdir / "input.yaml", "w") as f:
            yaml.safe_dump(inp, f, sort_keys=False, default_flow_style=None)
        df = make_dataset(**case.get("data", {}))
        df.to_pickle(workdir / "training_data.pckl.gzip", compression="gzip", protocol=4)
        write_evaluation_inputs(workdir, inp, df)
        if "prepare" in case:
            case["prepare"](workdir)
        info = run_job(workdir, case)

        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        produced = sorted(p.name for p in workdir.iterdir())
        notes_extra = []
        for fname in KEEP:
            src = workdir / fname
            if not src.is_file():
                continue
            if fname == "pacemaker.err" and src.stat().st_size > ERR_MAX_BYTES:
                lines = src.read_text(errors="replace").splitlines(keepends=True)
                (dest / fname).write_text("".join(lines[:ERR_HEAD] + lines[-ERR_TAIL:]))
                notes_extra.append(
                    f"`pacemaker.err` was {src.stat().st_size} bytes / {len(lines)} lines; only the first "
                    f"{ERR_HEAD} and the last {ERR_TAIL} lines are kept (no marker inserted between them)."
                )
            else:
                shutil.copyfile(src, dest / fname)
        kept = sorted(p.name for p in dest.iterdir())
        exit_status = (workdir / "pacemaker.exit_status").read_text().strip() if (
            workdir / "pacemaker.exit_status"
        ).exists() else "(file not written)"

    v = versions()
    script = case.get("script", JOB_SCRIPT)
    notes = f"""\
# Recorded case `{name}`

{case['description']}

Recorded {datetime.datetime.now().astimezone().isoformat(timespec='seconds')} with

    python tests/parsers/recorded/record.py {name}

Versions: python-ace {v['python-ace']}, tensorpotential {v['tensorpotential']}, tensorflow {v['tensorflow']}, \
numpy {v['numpy']}, ase {v['ase']}, pandas {v['pandas']}, python {v['python']}.

Data: `make_dataset({', '.join(f'{k}={val!r}' for k, val in case.get('data', {}).items())})` in `record.py`
(EMT Al-Cu, gzip-pickled DataFrame `training_data.pckl.gzip`, not kept).

Job script run with `bash job.sh` in a fresh temporary directory:

```bash
{script.rstrip()}
```
"""
    if case.get("kill"):
        notes += f"\nInterruption: {info.get('killed', 'process had already finished, nothing was killed')} "
        notes += f"after {info.get('killed_after_s')} s (once `metrics.txt` had >= {case['kill'].get('min_metrics_rows', 3)} data rows and `interim_potential_0.yaml` existed).\n"
    notes += f"""
Result: `pacemaker.exit_status` = {exit_status}; job script (bash) return code = {info['job_script_rc']}; \
wall time {info['wall_s']} s.

Files produced in the working directory: {', '.join(produced)}.

Files kept here: {', '.join(kept)}.
"""
    for line in notes_extra + case.get("notes", []):
        notes += "\n" + line + "\n"
    (dest / "NOTES.md").write_text(notes)
    print(f"    exit_status={exit_status} bash_rc={info['job_script_rc']} wall={info['wall_s']}s kept={kept}")


def main(argv: list[str]) -> None:
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown case(s): {unknown}; known: {list(CASES)}")
    for n in names:
        record(n)


if __name__ == "__main__":
    main(sys.argv[1:])
