"""A sweep's context (parent run, sweep id, grid size, start) reaches each job in the job's own overrides
(`sweep_run.*`), not the environment, and is no part of what a point is: its fingerprints, params and
logged config stay those of the same point run alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import yaml
from conftest import ROOT, base_overrides, compose

from quantsweep import point, tracking
from quantsweep.sweeps.bookkeeping import Context

# An MLflow-like run id and a sweep id Hydra would read as a float and an int if they were not quoted.
CONTEXT = Context("1e308", "0123456789012345", 8, 1732900000.25)


def test_a_single_run_has_no_sweep_context():
    assert Context.of(compose([])) == Context()
    assert Context().overrides() == []


def test_the_context_survives_hydras_parsing_of_the_job_overrides():
    cfg = compose(CONTEXT.overrides())
    assert Context.of(cfg) == CONTEXT
    assert isinstance(cfg.sweep_run.parent, str) and isinstance(cfg.sweep_run.sweep_id, str)


def test_the_context_changes_no_fingerprint_param_or_logged_config(make_cfg):
    alone, in_sweep = make_cfg("scheme=W8A8"), make_cfg("scheme=W8A8", *CONTEXT.overrides())
    assert Context.of(in_sweep) == CONTEXT
    a, b = point.resolve(alone), point.resolve(in_sweep)
    assert (a.fp, a.baseline_fp, a.checkpoint_fp) == (b.fp, b.baseline_fp, b.checkpoint_fp)
    assert point.as_dict(alone) == point.as_dict(in_sweep)
    assert "sweep_run" not in point.as_dict(in_sweep)
    assert not [k for k in tracking.flatten(point.as_dict(in_sweep)) if k.startswith("sweep_run")]


def sweep(overrides: list[str], out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={out}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_each_job_gets_its_sweep_from_its_overrides_and_a_rerun_reopens_the_parent(
    tiny_model, task_file, calib_file, tmp_path
):
    """Two points that fail before any work (group sizes that do not divide the tiny model's 192 hidden
    size), so each job only records a FAILED run where its overrides say."""
    grid = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), "scheme=W4A16"]
    grid.append("scheme.group_size=128,80")
    first = sweep(grid, tmp_path / "first")
    assert first.returncode == 1, first.stderr[-2000:]
    assert "[1/2] FAILED" in first.stdout and "[2/2] FAILED" in first.stdout

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get(tracking.ROLE) == "sweep"]
    sweep_id = parent.data.tags[tracking.SWEEP_ID]
    for num in (0, 1):
        job = yaml.safe_load((tmp_path / "first" / str(num) / ".hydra" / "overrides.yaml").read_text())
        assert f"sweep_run.parent='{parent.info.run_id}'" in job
        assert f"sweep_run.sweep_id='{sweep_id}'" in job
        assert "sweep_run.total=2" in job

    points = [r for r in runs if r.data.tags.get(tracking.ROLE) == "point"]
    assert len(points) == 2 and {r.info.status for r in points} == {"FAILED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {parent.info.run_id}
    assert {r.data.tags[tracking.SWEEP_ID] for r in points} == {sweep_id}
    assert not [k for r in points for k in r.data.params if k.startswith("sweep_run")]

    # The sweep id is the user's grid alone (grid.txt, one job a line), not the overrides appended to it.
    logged = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/grid.txt").splitlines()
    assert "sweep_run" not in "".join(logged)
    assert sweep_id == tracking.fingerprint({"jobs": sorted(sorted(line.split()) for line in logged)})

    again = sweep(grid, tmp_path / "again")
    assert again.returncode == 1, again.stderr[-2000:]
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert [r.info.run_id for r in runs if r.data.tags.get(tracking.ROLE) == "sweep"] == [parent.info.run_id]
    job = yaml.safe_load((tmp_path / "again" / "0" / ".hydra" / "overrides.yaml").read_text())
    assert f"sweep_run.parent='{parent.info.run_id}'" in job
