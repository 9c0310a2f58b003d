"""A shared store for a cluster, for real: PostgreSQL and an MLflow tracking server proxying artifacts,
started on 127.0.0.1 by scripts/tracking_server.sh (as users start it), used by real sweeps and searches.

Sweeps log through HTTP with no local artifact folder; secrets in URIs never reach params; two search workers
on one PostgreSQL study evaluate no configuration twice and agree with one worker; restarting the tracking
server mid-sweep loses and duplicates nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import ROOT, base_overrides

from quantsweep import tracking
from quantsweep.config import TrackingConfig
from quantsweep.sweeps.search import decisions

pytestmark = pytest.mark.services
SCRIPT = ROOT / "scripts" / "tracking_server.sh"
SECRET = "hunter2-not-a-real-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Where .ci/run started the services (scripts/tracking_server.sh start $QUANTSWEEP_SERVICES_DIR, with PG_PORT
# and MLFLOW_PORT exported); without it, this module starts its own and stops them afterwards.
STARTED = os.environ.get("QUANTSWEEP_SERVICES_DIR")


class Services:
    def __init__(self, work: Path) -> None:
        self.work = work
        ports = {"PG_PORT": str(free_port()), "MLFLOW_PORT": str(free_port())}
        self.env = dict(os.environ) if STARTED else dict(os.environ, **ports)
        self.tracking_uri = f"http://127.0.0.1:{self.env['MLFLOW_PORT']}"
        self.pg = f"postgresql+psycopg://postgres@127.0.0.1:{self.env['PG_PORT']}"

    def script(self, command: str) -> None:
        subprocess.run(["bash", str(SCRIPT), command, str(self.work)], env=self.env, check=True, timeout=300)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory):
    if STARTED:
        yield Services(Path(STARTED))
        return
    found = Services(tmp_path_factory.mktemp("services"))
    found.script("start")
    try:
        yield found
    finally:
        found.script("stop")


def overrides(services: Services, model: Path, task: Path, calib: Path, work: Path) -> list[str]:
    """The tiny-model settings on the tracking server: no local store, no local artifact folder."""
    local = [o for o in base_overrides(model, task, calib, work) if not o.startswith("tracking.")]
    return [*local, "tracking=server", f"tracking.uri={services.tracking_uri}"]


def sweep(cmd: list[str], work: Path, name: str) -> subprocess.Popen:
    full = [sys.executable, "run.py", "-m", *cmd, f"hydra.sweep.dir={work}/{name}"]
    return subprocess.Popen(full, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def runs(services: Services, experiment: str = "quantsweep") -> list:
    mlflow.set_tracking_uri(services.tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


def by_role(found: list, role: str) -> list:
    return [r for r in found if r.data.tags.get(tracking.ROLE) == role]


def test_a_sweep_logs_through_the_server_with_no_secret_in_params(
    services, tiny_model, task_file, calib_file, tmp_path
):
    storage = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{services.env['PG_PORT']}/optuna"
    cmd = [
        *overrides(services, tiny_model, task_file, calib_file, tmp_path),
        "tracking.experiment=secrets",
        f"search.storage={storage}",
        "scheme=W8A8,FP8_dynamic",
    ]
    proc = sweep(cmd, tmp_path, "a")
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out

    found = runs(services, "secrets")
    points, parents = by_role(found, "point"), by_role(found, "sweep")
    assert len(points) == 2 and len(parents) == 1 and len(by_role(found, "baseline")) == 1
    assert {p.data.tags["mlflow.parentRunId"] for p in points} == {parents[0].info.run_id}
    for run in found:
        text = repr(run.data.params) + repr(run.data.tags)
        assert SECRET not in text
    assert points[0].data.params["search.storage"].startswith("postgresql+psycopg://postgres:***@")
    assert SECRET not in out
    # Artifacts went through the server into its own folder: nothing under this test's directory.
    assert points[0].info.artifact_uri.startswith("mlflow-artifacts:")
    config = mlflow.artifacts.load_text(f"runs:/{points[0].info.run_id}/config.yaml")
    assert "scheme:" in config and SECRET not in config
    assert any((services.work / "artifacts").rglob("config.yaml"))
    assert not (tmp_path / "mlruns").exists()


def test_workers_starting_at_once_on_one_experiment_all_start(services):
    """Workers that set up one experiment at the same moment (a new one, and an older one without
    quantsweep's tags) all start, and the experiment ends with its tags: the server's PostgreSQL refuses a
    second insert of one tag, which must not stop the worker that lost the race."""
    mlflow.set_tracking_uri(services.tracking_uri)
    client = mlflow.MlflowClient()
    workers = 8

    def start_together(name: str) -> list[str]:
        barrier = threading.Barrier(workers)
        cfg = TrackingConfig(uri=services.tracking_uri, artifact_location=None, experiment=name)

        def one(_: int) -> str:
            barrier.wait(timeout=60)
            return tracking.setup(cfg)

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(workers), timeout=120))

    for round_ in range(4):  # bounded: each round is one new and one older experiment
        older = f"older-{round_}"
        older_id = client.create_experiment(older)
        assert set(start_together(older)) == {older_id}
        fresh = start_together(f"new-{round_}")
        assert len(set(fresh)) == 1
        for experiment_id in (older_id, fresh[0]):
            tags = client.get_experiment(experiment_id).tags
            assert tags[tracking.EXPERIMENT_KIND] == tracking.CLASSIC_KIND and tracking.VIEW_TAG in tags


SEARCH = [
    "sweep=search_smallest",
    "scheme=W4A16,W8A16,W8A8",
    "scheme.group_size=32,64",
    "ignore=lm_head",
    "scheme.algorithm=RTN",
    "layers=none",
    "eval.limit=8",
    "eval.num_fewshot=0",
    "search.low_fidelity_limit=null",
    "search.sampler=grid",
    "search.floor_on=accuracy",
    "search.floor=0.2",
    "search.confidence=0.5",
    "search.n_trials=5",
]


def test_two_search_workers_share_one_study_and_evaluate_nothing_twice(
    services, tiny_model, task_file, calib_file, tmp_path
):
    """Both workers run the same command on one PostgreSQL study; together they evaluate every configuration
    once, and the study's answer is the one a single worker finds on its own."""
    base = overrides(services, tiny_model, task_file, calib_file, tmp_path)
    storage = f"search.storage={services.pg}/optuna"

    def worker(experiment: str, study: str, name: str) -> subprocess.Popen:
        extra = [f"tracking.experiment={experiment}", storage, f"search.study_name={study}"]
        return sweep([*base, *SEARCH, *extra], tmp_path, name)

    pair = [worker("shared", "shared", "w1"), worker("shared", "shared", "w2")]
    outs = [p.communicate(timeout=1200)[0] for p in pair]
    assert [p.returncode for p in pair] == [0, 0], "\n".join(o[-3000:] for o in outs)
    alone = worker("alone", "alone", "w3")
    out = alone.communicate(timeout=1200)[0]
    assert alone.returncode == 0, out

    shared = by_role(runs(services, "shared"), "point")
    finished = [r for r in shared if r.info.status == "FINISHED"]
    per_fingerprint = Counter(r.data.tags[tracking.FINGERPRINT] for r in finished)
    assert len(per_fingerprint) == 5 and set(per_fingerprint.values()) == {1}, per_fingerprint

    def best(name: str) -> dict:
        study = optuna.load_study(study_name=name, storage=f"{services.pg}/optuna")
        top = decisions.best(decisions.records(study.trials))
        assert top is not None
        return top.params

    assert best("shared") == best("alone")


def test_restarting_the_server_mid_sweep_loses_and_duplicates_nothing(
    services, tiny_model, task_file, calib_file, tmp_path
):
    cmd = [
        *overrides(services, tiny_model, task_file, calib_file, tmp_path),
        "tracking.experiment=restart",
        "scheme=W8A8,FP8_dynamic,W8A16",
    ]
    proc = sweep(cmd, tmp_path, "r")
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:  # bounded: the sweep ends, or the deadline below fails the test
        lines.append(line)
        if "[1/3] FINISHED" in line:
            break
        assert time.monotonic() < deadline, "".join(lines)
    services.script("restart-mlflow")
    rest = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, "".join(lines) + rest

    found = runs(services, "restart")
    points = by_role(found, "point")
    assert sorted(p.data.params["scheme.name"] for p in points) == ["FP8_dynamic", "W8A16", "W8A8"]
    assert all(p.info.status == "FINISHED" for p in points)
    assert len(by_role(found, "baseline")) == 1 and len(by_role(found, "sweep")) == 1
    for p in points:  # every metric the pipeline logs at its end made it through
        assert {"accuracy", "recovery", "disk_bytes", "time_total_s"} <= set(p.data.metrics)
