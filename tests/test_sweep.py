"""Real Hydra multiruns of run.py on the tiny model: one parent run, a shared baseline, isolated failures,
resumption without duplicates, and bad specs refused before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, base_overrides

from quantsweep import tracking

GRID = ["scheme=W4A16", "scheme.group_size=64,32,48"]


def sweep_cmd(overrides: list[str], work: Path) -> list[str]:
    return [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={work}/multirun"]


def run_sweep(overrides: list[str], work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(overrides, work), cwd=ROOT, capture_output=True, text=True, timeout=900)


def all_runs(work: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


def role(runs: list, name: str) -> list:
    return [r for r in runs if r.data.tags.get(tracking.ROLE) == name]


@pytest.fixture(scope="module")
def swept(tiny_model, task_file, calib_file, tmp_path_factory):
    """W4A16 (explicit group 128 vs hidden 192: fails), W8A8 and FP8_dynamic (no groups), run twice."""
    work = tmp_path_factory.mktemp("sweep")
    overrides = [
        *base_overrides(tiny_model, task_file, calib_file, work),
        "scheme=W4A16,W8A8,FP8_dynamic",
        "scheme.group_size=128",
    ]
    first = run_sweep(overrides, work)
    runs_after_first = all_runs(work)
    second = run_sweep(overrides, work)
    return work, first, runs_after_first, second


def test_failed_point_does_not_stop_the_others_and_is_counted(swept):
    work, first, runs, _ = swept
    assert first.returncode == 1, first.stderr[-2000:]
    assert "1 of 3 points failed" in first.stderr
    assert "scheme.group_size=128" in first.stderr
    points = role(runs, "point")
    statuses = sorted(r.info.status for r in points)
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]
    (failed,) = [r for r in points if r.info.status == "FAILED"]
    assert "scheme.group_size=128" in failed.data.tags[tracking.ERROR]


def test_points_are_children_of_one_parent_with_the_summary(swept):
    work, first, runs, _ = swept
    (parent,) = role(runs, "sweep")
    assert {r.data.tags.get("mlflow.parentRunId") for r in role(runs, "point")} == {parent.info.run_id}
    assert {r.data.tags[tracking.SWEEP_ID] for r in role(runs, "point")} == {
        parent.data.tags[tracking.SWEEP_ID]
    }
    assert parent.data.metrics["points_failed"] == 1 and parent.data.metrics["points_total"] == 3
    summary = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/summary.txt")
    assert "custom baseline" in summary and "W8A8" in summary and "FAILED" in summary
    assert "[3/3] FINISHED" in first.stdout and "ETA" in first.stdout
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "leaderboard")}
    assert {"leaderboard/leaderboard.html", "leaderboard/leaderboard.csv"} <= logged


def test_baseline_evaluated_once(swept):
    _, _, runs, _ = swept
    (baseline,) = role(runs, "baseline")
    finished = [r for r in role(runs, "point") if r.info.status == "FINISHED"]
    assert {r.data.tags[tracking.BASELINE_RUN] for r in finished} == {baseline.info.run_id}


def test_rerun_evaluates_nothing_new(swept):
    work, _, before, second = swept
    after = all_runs(work)
    finished = lambda runs: sorted(r.info.run_id for r in runs if r.info.status == "FINISHED")  # noqa: E731
    assert finished(after) == finished(before)
    assert len(role(after, "sweep")) == 1  # the same parent run is reopened
    assert second.stdout.count("(reused)") == 2
    assert second.returncode == 1  # the failing point is retried, and fails again


def test_bad_sweep_value_fails_in_one_line_before_any_work(tiny_model, task_file, calib_file, tmp_path):
    overrides = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), "scheme=W8A8,NOPE"]
    proc = run_sweep(overrides, tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "scheme/NOPE" in line and "W8A8" in line
    assert not (tmp_path / "mlruns").exists()


def test_empty_grid_fails_in_one_line(tiny_model, task_file, calib_file, tmp_path):
    overrides = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), "scheme.group_size=range(0)"]
    proc = run_sweep(overrides, tmp_path)
    assert proc.returncode == 2 and "empty grid" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_interrupted_sweep_is_marked_killed_and_resumes_without_duplicates(
    tiny_model, task_file, calib_file, tmp_path
):
    overrides = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), *GRID]
    proc = subprocess.Popen(
        sweep_cmd(overrides, tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 600
    for line in proc.stdout:
        if line.startswith("[2/3] start") or time.time() > deadline:
            break
    time.sleep(1.0)  # inside the second point
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    interrupted = all_runs(tmp_path)
    assert not [r for r in interrupted if r.info.status == "RUNNING"]
    assert [r.info.status for r in role(interrupted, "sweep")] == ["KILLED"]

    resumed = run_sweep(overrides, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = all_runs(tmp_path)
    finished = [r for r in role(runs, "point") if r.info.status == "FINISHED"]
    fingerprints = [r.data.tags[tracking.FINGERPRINT] for r in finished]
    assert len(fingerprints) == 3 and len(set(fingerprints)) == 3
    assert len([r for r in role(runs, "baseline") if r.info.status == "FINISHED"]) == 1
    assert [r.info.status for r in role(runs, "sweep")] == ["FINISHED"]


def test_parallel_workers_claim_distinct_gpus(tmp_path):
    """Two processes asking at once for one of two GPUs get different ones (CPU: the locks alone)."""
    code = (
        "import os, time; from quantsweep import devices; "
        f"os.environ[devices.ENV_GPUS] = '2'; print(devices.claim_gpu({str(tmp_path)!r})); time.sleep(3)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        for _ in range(2)
    ]
    claimed = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert claimed == ["0", "1"]


def point_started(db: Path) -> bool:
    """Read the store with plain sqlite: an MLflow client here would race the run's schema creation."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(db) as conn:
            query = "select count(*) from tags where key = ? and value = 'point'"
            return conn.execute(query, (tracking.ROLE,)).fetchone()[0] > 0
    except sqlite3.OperationalError:  # tables not created yet
        return False


def test_a_single_run_killed_mid_way_is_marked_killed(tiny_model, task_file, calib_file, tmp_path):
    # GPTQ over more calibration samples: the point works for seconds, long enough to be killed mid-way.
    slow = ["scheme=W4A16_GPTQ", "calibration.num_samples=32", "calibration.max_seq_length=256"]
    overrides = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), *slow]
    proc = subprocess.Popen(
        [sys.executable, "run.py", *overrides], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not point_started(tmp_path / "mlruns" / "mlflow.db"):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    (point,) = role(all_runs(tmp_path), "point")
    assert proc.returncode != 0 and point.info.status == "KILLED"
