"""Claims in the shared store: two sweeps that share a point evaluate it once, and a claim whose worker died
is recovered instead of blocking the point."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, base_overrides

from quantsweep import claims, tracking


def runs_of(work: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


@pytest.mark.slow
def test_two_sweeps_sharing_a_point_evaluate_it_once(tiny_model, task_file, calib_file, tmp_path):
    """The 2026-11-29 repro: W8A8,FP8_dynamic and FP8_dynamic,MXFP4A16 started together on one store."""
    base = base_overrides(tiny_model, task_file, calib_file, tmp_path)

    def start(schemes: str, name: str) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "run.py",
            "-m",
            *base,
            f"scheme={schemes}",
            f"hydra.sweep.dir={tmp_path}/{name}",
        ]
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start("W8A8,FP8_dynamic", "a")
    time.sleep(1)
    second = start("FP8_dynamic,MXFP4A16", "b")
    outputs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs

    finished = [r for r in runs_of(tmp_path) if r.info.status == "FINISHED"]
    points = [r for r in finished if r.data.tags.get(tracking.ROLE) == "point"]
    schemes = sorted(r.data.params["scheme.name"] for r in points)
    assert schemes == ["FP8_dynamic", "MXFP4A16", "W8A8"]  # FP8_dynamic once, not twice
    assert len({r.data.tags[tracking.FINGERPRINT] for r in points}) == 3
    baselines = [r for r in finished if r.data.tags.get(tracking.ROLE) == "baseline"]
    assert len(baselines) == 1
    # Nothing is left RUNNING, and a withdrawn claim leaves no run behind.
    assert all(r.info.status != "RUNNING" for r in runs_of(tmp_path))


def test_a_dead_claim_is_reaped_and_the_point_runs(make_cfg, tmp_path):
    """A run left RUNNING by a process that no longer exists (kill -9) does not block its point."""
    from quantsweep import pipeline
    from quantsweep.point import resolve

    cfg = make_cfg("scheme=W8A8")
    point = resolve(cfg)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    tags = {
        tracking.ROLE: "point",
        tracking.FINGERPRINT: point.fp,
        **claims.owner_tags(),
        claims.OWNER: f"{claims.socket.gethostname()}:{int(dead.stdout)}",
    }
    stale = mlflow.MlflowClient().create_run(point.experiment_id, tags=tags).info.run_id

    outcome = pipeline.run(cfg)

    assert outcome.status == "FINISHED" and outcome.run_id != stale
    assert mlflow.get_run(stale).info.status == "KILLED"


def test_a_claim_is_alive_while_its_heartbeat_is_fresh():
    """Liveness from the heartbeat alone, for a claimant on another host (its process cannot be checked)."""

    class Run:
        def __init__(self, beat: float) -> None:
            self.data = type("D", (), {"tags": {claims.OWNER: "elsewhere:1", claims.HEARTBEAT: str(beat)}})()
            self.info = type("I", (), {"start_time": 0})()

    now = 10_000.0
    assert claims.alive(Run(now - claims.LEASE_S + 1), now)
    assert not claims.alive(Run(now - claims.LEASE_S - 1), now)


def test_a_claim_won_after_the_other_worker_finished_reuses_its_result(tmp_path):
    """The race CI met on 2026-11-29: worker B finds nothing FINISHED, worker A finishes, then B claims and is
    the only live claimant. B must take A's result and leave no run of its own."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("race")
    client = mlflow.MlflowClient()
    fp = "race-fingerprint"
    tags = {tracking.FINGERPRINT: fp}
    started: list[str] = []

    def start() -> tracking.Tracked:
        other = client.create_run(experiment, tags=tags).info.run_id  # A finishes in the gap
        client.set_terminated(other, "FINISHED")
        started.append(other)
        return tracking.Tracked(experiment, "b", tags | claims.owner_tags(), None)

    claimed = claims.acquire(experiment, fp, "the point", start)

    assert not isinstance(claimed, tracking.Tracked) and claimed.info.run_id == started[0]
    left = client.search_runs([experiment], filter_string=f"tags.`{tracking.FINGERPRINT}` = '{fp}'")
    assert [r.info.run_id for r in left] == started  # B's withdrawn claim is deleted
