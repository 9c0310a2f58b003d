"""A sweep's bookkeeping: its MLflow parent run, what its jobs need to know, progress lines, the summary.

The sweeper (main process) opens the parent run and hands its id, the sweep id, the grid size and the start
time to each job as overrides of the job's `sweep_run` node (config.SweepRunConfig), so they travel with
the job's config through any launcher; each job reports one `Outcome`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from quantsweep import tracking
from quantsweep.config import Config, TrackingConfig
from quantsweep.outcome import Outcome
from quantsweep.sweeps import summary
from quantsweep.tables import duration


@dataclass(frozen=True)
class Context:
    """The sweep a job belongs to, from the job's `sweep_run` node; empty for a single run."""

    parent: str | None = None
    sweep_id: str | None = None
    total: int | None = None
    start: float | None = None

    @classmethod
    def of(cls, cfg: Config) -> Context:
        node = cfg.sweep_run
        return cls(node.parent, node.sweep_id, node.total, node.start)

    def overrides(self) -> list[str]:
        """The job overrides that hand this context to a job; ids quoted so Hydra keeps them strings."""
        return [
            f"sweep_run.{k}='{v}'" if isinstance(v, str) else f"sweep_run.{k}={v}"
            for k, v in asdict(self).items()
            if v is not None
        ]

    def progress(self, index: int, name: str, status: str | None = None, seconds: float | None = None) -> str:
        """`[3/8] start ...` or `[3/8] FINISHED ... in 41s; elapsed 2m03s, ETA 4m06s`."""
        head = f"[{index + 1}/{self.total or '?'}]"
        if status is None:
            return f"{head} start {name}"
        line = f"{head} {status} {name} in {duration(seconds or 0)}"
        if self.start is not None and self.total:
            elapsed = time.time() - self.start
            eta = elapsed / (index + 1) * (self.total - index - 1)
            line += f"; elapsed {duration(elapsed)}, ETA {duration(eta)}"
        return line


def open_parent(
    tracking_cfg: TrackingConfig, jobs: list[list[str]], name: str, total: int | None = None
) -> Context:
    """Create the sweep's parent run, or reopen the one a previous attempt of the same grid left; the sweep
    id is the user's `jobs`' alone, so a rerun finds it. Returns the context its jobs are given."""
    from mlflow import MlflowClient

    experiment_id = tracking.setup(tracking_cfg)
    sweep_id = tracking.fingerprint({"jobs": sorted(sorted(job) for job in jobs)})
    client = MlflowClient()
    previous = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tracking.ROLE}` = 'sweep' and tags.`{tracking.SWEEP_ID}` = '{sweep_id}'",
        max_results=1,
    )
    if previous:
        run_id = previous[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {tracking.ROLE: "sweep", tracking.SWEEP_ID: sweep_id, "mlflow.runName": name}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        client.log_text(run_id, "\n".join(" ".join(job) for job in jobs) + "\n", "grid.txt")
    return Context(run_id, sweep_id, total, time.time())


def kill_parent(run_id: str) -> None:
    """An interrupted sweep: its parent is KILLED; rerunning the same grid reopens it."""
    from mlflow import MlflowClient

    MlflowClient().set_terminated(run_id, "KILLED")


def log_leaderboard(run_id: str, tracking_cfg: TrackingConfig, sweep_id: str) -> None:
    """The sweep's leaderboard (its points and their baselines), as files on the parent run; none when every
    point was answered by runs of other sweeps (then no run carries this sweep's id)."""
    import tempfile

    from quantsweep.results import collect, export, log_to_run

    try:
        table = collect(tracking_cfg.uri, tracking_cfg.experiment, sweep_id=sweep_id)
    except ValueError:
        return
    with tempfile.TemporaryDirectory() as out:
        export(table, out)
        log_to_run(run_id, out)


def close_parent(run_id: str, outcomes: list[Outcome]) -> str:
    """Log the sweep's summary table and counts on its parent run; returns the printed table."""
    from mlflow import MlflowClient

    client = MlflowClient()
    table = summary.table(outcomes)
    counts = {
        "points_total": len(outcomes),
        "points_finished": sum(o.status == "FINISHED" for o in outcomes),
        "points_reused": sum(o.reused for o in outcomes),
        "points_failed": sum(o.status == "FAILED" for o in outcomes),
        "baselines": len(summary.baselines(outcomes)),
    }
    for key, value in counts.items():
        client.log_metric(run_id, key, value)
    client.log_text(run_id, table + "\n", "summary.txt")
    points = [{k: v for k, v in asdict(o).items() if k != "params"} for o in outcomes]
    client.log_text(run_id, json.dumps(points, indent=2, default=str), "points.json")
    client.set_terminated(run_id, "FINISHED")
    return table
