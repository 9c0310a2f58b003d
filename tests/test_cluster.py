"""Scale-out: GPU shares per point on one host, several GPUs per point, a sweep as Ray tasks across a local
two-node Ray cluster (and a worker killed mid-point), and the SLURM launcher's path through submitit's
local executor.

The Ray tests (marked `cluster`: `pytest -m cluster`) start their own cluster with scripts/ray_cluster.sh,
in a network namespace that has only the loopback interface (root), each node declaring one logical GPU
(--num-gpus), and stop it by its own process ids.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, base_overrides

from quantsweep import devices, tracking
from quantsweep.errors import ConfigError
from quantsweep.ray_launcher import HOST_TAG, NODE_TAG, TASK_TAG, _unplaceable

SCRIPT = ROOT / "scripts" / "ray_cluster.sh"
SWEEP_TIMEOUT_S = 900


def all_runs(work: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


def role(runs: list, name: str) -> list:
    return [r for r in runs if r.data.tags.get(tracking.ROLE) == name]


def test_parallel_workers_claim_disjoint_gpu_shares(tmp_path):
    """Four workers of a host with 8 GPUs, 2 GPUs a point, asking at once, get four disjoint pairs; a fifth
    finds none free (CPU: the locks alone)."""
    code = (
        "import os, sys, time; from quantsweep import devices; "
        f"os.environ[devices.ENV_GPUS] = '4'; print(devices.claim_gpu({str(tmp_path)!r}, 2), flush=True); "
        "sys.stdin.read()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    try:
        claimed = sorted(proc.stdout.readline().strip() for proc in procs)  # type: ignore[union-attr]
        assert claimed == ["0,1", "2,3", "4,5", "6,7"]
        fifth = subprocess.run([sys.executable, "-c", code], input="", capture_output=True, text=True)
        assert "all 4 shares of 2 GPU(s) are held" in fifth.stderr
    finally:
        for proc in procs:
            proc.communicate("", timeout=60)


def test_gpus_per_point_below_one_is_refused():
    with pytest.raises(ConfigError, match="resources.gpus_per_point=0"):
        devices.claim_gpu("/nonexistent", 0)


def test_a_point_no_ray_node_can_hold_is_refused_with_the_reason():
    assert _unplaceable(2, 2) is None
    assert _unplaceable(4, 0) is None  # a cluster without GPUs: points take CPU slots
    assert "no node of the Ray cluster has more than 2 GPU(s); ask for at most 2" in str(_unplaceable(4, 2))
    assert "resources.gpus_per_point=0 must be at least 1" in str(_unplaceable(0, 2))


def test_several_gpus_per_point_give_the_same_checkpoint_and_scores(make_cfg, tmp_path):
    """gpus_per_point=2 loads through compressed-tensors' offloading and spreads evaluation with
    device_map=auto (here over CPU alone): the checkpoint and the scores are those of one device."""
    from quantsweep import pipeline

    outcomes, checkpoints = [], []
    for gpus in (1, 2):
        work = tmp_path / str(gpus)
        outcome = pipeline.run(make_cfg("scheme=W8A8", f"resources.gpus_per_point={gpus}", work=work))
        assert outcome.status == "FINISHED", outcome.error
        outcomes.append(outcome)
        (checkpoint,) = (work / "checkpoints" / "custom").glob("*/model.safetensors")
        checkpoints.append(checkpoint.read_bytes())
    assert checkpoints[0] == checkpoints[1]
    assert outcomes[0].metrics["accuracy"] == outcomes[1].metrics["accuracy"]


@dataclass
class Cluster:
    folder: Path
    address: str

    def command(self, *argv: str) -> list[str]:
        """argv run inside the cluster's network namespace, attached to it through RAY_ADDRESS."""
        return [str(SCRIPT), "exec", str(self.folder), "--", "env", f"RAY_ADDRESS={self.address}", *argv]

    def node_ids(self) -> set[str]:
        code = "import ray; ray.init(logging_level='ERROR'); print(*[n['NodeID'] for n in ray.nodes()])"
        out = subprocess.run(
            self.command(sys.executable, "-c", code), capture_output=True, text=True, timeout=120
        )
        return set(out.stdout.split())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pytest.importorskip("ray", reason="the cluster extra: pip install -e '.[cluster]'")
    folder = tmp_path_factory.mktemp("ray-cluster")
    try:
        started = subprocess.run(
            [str(SCRIPT), "start", str(folder), "2", "1", "2"],
            env={**os.environ, "PYTHON": sys.executable},  # the nodes run this interpreter's environment
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert started.returncode == 0, started.stderr[-3000:]
        yield Cluster(folder, started.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([str(SCRIPT), "stop", str(folder)], timeout=120)


def ray_sweep(cluster: Cluster, overrides: list[str], work: Path) -> list[str]:
    return cluster.command(
        sys.executable,
        "run.py",
        "-m",
        "hydra/launcher=quantsweep_ray",
        *overrides,
        f"hydra.sweep.dir={work}/multirun",
    )


@pytest.mark.cluster
def test_sweep_runs_across_both_nodes(cluster, tiny_model, task_file, calib_file, tmp_path):
    """Four points, each asking for the one GPU a node has: both nodes take points, never two at once on
    one node, each point and the baseline run once, all children of the sweep's parent run."""
    grid = ["scheme=W4A16", "scheme.group_size=64,32,48,96"]
    overrides = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), *grid]
    proc = subprocess.run(
        ray_sweep(cluster, overrides, tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = all_runs(tmp_path)
    points, (baseline,), (parent,) = role(runs, "point"), role(runs, "baseline"), role(runs, "sweep")
    assert sorted(r.data.params["scheme.group_size"] for r in points) == ["32", "48", "64", "96"]
    assert {r.info.status for r in [*points, baseline, parent]} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in [*points, baseline]} == {parent.info.run_id}
    assert {r.data.tags[tracking.SWEEP_ID] for r in points} == {parent.data.tags[tracking.SWEEP_ID]}
    assert {r.data.tags[tracking.BASELINE_RUN] for r in points} == {baseline.info.run_id}
    # Where each ran: the cluster's two nodes, each point in a task of its own, on the card Ray gave it.
    assert {r.data.tags[NODE_TAG] for r in points} == cluster.node_ids()
    assert len({r.data.tags[TASK_TAG] for r in points}) == 4
    assert {r.data.tags["cuda_visible_devices"] for r in points} == {"0"}
    assert all(r.data.tags[HOST_TAG] for r in points)
    for node in cluster.node_ids():
        spans = sorted((r.info.start_time, r.info.end_time) for r in points if r.data.tags[NODE_TAG] == node)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False)), spans


def drain(stream, lines: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    thread.start()
    return thread


@pytest.mark.cluster
def test_worker_killed_mid_point_fails_that_point_alone_and_a_rerun_redoes_only_it(
    cluster, tiny_model, task_file, calib_file, tmp_path
):
    grid = ["scheme=W4A16", "scheme.group_size=64,32,48"]
    overrides = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), *grid]
    command = ray_sweep(cluster, overrides, tmp_path)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = drain(proc.stdout, lines)
    # A point's worker says when it starts quantizing, inside the point's MLflow run: kill it there.
    quantizing = re.compile(r"pid=(\d+)\).*quantsweep: (\S+): quantizing")
    deadline, killed = time.monotonic() + SWEEP_TIMEOUT_S, None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        for line in list(lines):
            if match := quantizing.search(line):
                os.kill(int(match[1]), 9)
                killed = match[2]
                break
        time.sleep(0.1)
    assert killed is not None, "".join(lines)[-3000:]
    assert proc.wait(timeout=SWEEP_TIMEOUT_S) == 1
    reader.join(timeout=60)
    output = "".join(lines)
    assert "1 of 3 points failed" in output and "WorkerCrashedError" in output
    runs = all_runs(tmp_path)
    by_name = {r.info.run_name: r for r in role(runs, "point")}
    assert by_name[killed].info.status == "KILLED"
    assert "WorkerCrashedError" in by_name[killed].data.tags[tracking.ERROR]
    others = [r for name, r in by_name.items() if name != killed]
    assert len(others) == 2 and {r.info.status for r in others} == {"FINISHED"}

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("(reused)") == 2
    after = role(all_runs(tmp_path), "point")
    redone = [r for r in after if r.info.run_name == killed and r.info.status == "FINISHED"]
    assert len(redone) == 1 and len(after) == 4  # only the killed point ran again
    assert {r.info.run_id for r in others} <= {r.info.run_id for r in after if r.info.status == "FINISHED"}
    assert len(role(all_runs(tmp_path), "baseline")) == 1


@pytest.mark.cluster
def test_slurm_launcher_path_runs_points_as_submitit_jobs(tiny_model, task_file, calib_file, tmp_path):
    """hydra/launcher=slurm_local: each point a submitit job (a process of its own, as under SLURM), the
    sweep's context reaching it in the job's own overrides."""
    pytest.importorskip("submitit", reason="the cluster extra: pip install -e '.[cluster]'")
    grid = ["scheme=W4A16", "scheme.group_size=64,32"]
    overrides = [*base_overrides(tiny_model, task_file, calib_file, tmp_path), *grid]
    command = [
        sys.executable, "run.py", "-m", "hydra/launcher=slurm_local", *overrides,
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = all_runs(tmp_path)
    points, (parent,) = role(runs, "point"), role(runs, "sweep")
    assert len(points) == 2 and {r.info.status for r in points} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {parent.info.run_id}
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2
