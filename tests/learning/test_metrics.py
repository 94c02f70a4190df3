"""LogParser on files recorded from real Pacemaker runs (tests/parsers/recorded)."""

from __future__ import annotations

import math
import re
import shutil

import pytest

from aiida_autopipec.learning import files
from aiida_autopipec.learning.metrics import LogParser, MetricsError, read_metrics_table
from tests.conftest import RECORDED


def _log_rmse_mev(case: str, test: bool) -> list[float]:
    """RMSE row (meV) of the last (TEST) 'Cycle last iteration' block, read independently of the parser."""
    text = (RECORDED / case / files.LOG).read_text()
    marker = "TEST Cycle last iteration" if test else "-Cycle last iteration"
    block = text[text.rindex(marker) :]
    return [float(v) for v in re.search(r"RMSE:\s+(\S+)\s+\S+\s+(\S+)", block).groups()]


def test_success_matches_pacemakers_own_summary():
    metrics = LogParser().parse(RECORDED / "success")
    for split, test in (("train", False), ("test", True)):
        rmse_energy_mev, rmse_forces_mev = _log_rmse_mev("success", test)
        errors = getattr(metrics, split)
        # Parser reads full-precision tables; the log prints meV rounded to 0.01.
        assert errors.rmse_energy == pytest.approx(rmse_energy_mev / 1000, abs=1e-5)
        assert errors.rmse_forces == pytest.approx(rmse_forces_mev / 1000, abs=1e-5)
        assert 0 < errors.mae_energy <= errors.rmse_energy
        assert 0 < errors.mae_forces <= errors.rmse_forces <= errors.max_forces
    table = read_metrics_table(RECORDED / "success" / files.TRAIN_METRICS)
    assert metrics.iterations == int(table["iter_num"].max())
    assert metrics.final_loss == table["loss"][-1]
    assert metrics.rmse_forces == metrics.test.rmse_forces  # judged on the held-out split
    assert not metrics.diverged


def test_parse_accepts_a_file_in_the_folder():
    assert LogParser().parse(RECORDED / "success" / files.LOG) == LogParser().parse(RECORDED / "success")


def test_convergence_thresholds():
    metrics = LogParser().parse(RECORDED / "success")
    above, below = metrics.rmse_forces * 1.01, metrics.rmse_forces * 0.99
    assert LogParser(rmse_forces_threshold=above).parse(RECORDED / "success").is_converged
    assert not LogParser(rmse_forces_threshold=below).parse(RECORDED / "success").is_converged
    energy_too_strict = LogParser(rmse_forces_threshold=above, rmse_energy_threshold=metrics.rmse_energy * 0.5)
    assert not energy_too_strict.parse(RECORDED / "success").is_converged


def test_without_test_set_uses_train():
    metrics = LogParser().parse(RECORDED / "success_no_test")
    assert metrics.test is None
    assert metrics.judged_on == "train"
    assert metrics.rmse_forces == metrics.train.rmse_forces


def test_nan_loss_is_diverged_and_never_converged():
    metrics = LogParser(rmse_forces_threshold=1e9).parse(RECORDED / "nan_loss")
    assert metrics.diverged
    assert not metrics.is_converged
    assert any(math.isnan(loss) for loss in metrics.learning_curve.loss)


def test_killed_run_still_gives_a_learning_curve():
    metrics = LogParser().parse(RECORDED / "killed")
    assert len(metrics.learning_curve.iteration) >= 2
    assert metrics.learning_curve.iteration == sorted(metrics.learning_curve.iteration)


def test_missing_metrics_is_a_clear_error(tmp_path):
    shutil.copy(RECORDED / "success" / files.LOG, tmp_path / files.LOG)
    with pytest.raises(MetricsError, match=r"metrics\.txt: missing"):
        LogParser().parse(tmp_path)
    (tmp_path / files.TRAIN_METRICS).write_text("iter_num loss\n0 nonsense\n")
    with pytest.raises(MetricsError, match="not a numeric table"):
        LogParser().parse(tmp_path)
