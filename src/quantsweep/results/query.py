"""A leaderboard's rows from an MLflow store: MLflow's own search (by sweep, model and tags), one row per run.

`collect` returns the ranked DataFrame (see `rank`); `sweep_run` finds the sweep parent run the files
belong on. Neither creates a store or an experiment: a typo must not.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from quantsweep import tracking
from quantsweep.results import kv, rank
from quantsweep.results.row import COLUMNS, SUITE_COLUMNS, TASK_COLUMNS, run_row


def _quoted(value: str) -> str:
    """A filter-string literal; MLflow's grammar has no escape for the quote itself."""
    if "'" in value:
        raise ValueError(
            f"filter value {value!r} contains a single quote, which MLflow's search cannot match"
        )
    return f"'{value}'"


def _search(experiment_id: str, clauses: Iterable[str]) -> pd.DataFrame:
    import mlflow

    return mlflow.search_runs([experiment_id], filter_string=" and ".join(clauses))


def _experiment_id(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at an existing store and experiment; never creates either (a typo must not)."""
    import mlflow

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ValueError(
            f"no MLflow store at {tracking_uri}: pass tracking_uri=sqlite:///<path to mlflow.db>"
        )
    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in mlflow.search_experiments()) or "none"
        raise ValueError(f"experiment {experiment!r} not found in {tracking_uri} (experiments: {names})")
    return found.experiment_id


def _runs(
    experiment_id: str, sweep_id: str | None, model: str | None, tags: dict[str, str], include_failed: bool
) -> pd.DataFrame:
    """Matching points, then baselines: those matching the filters (no sweep) plus every one a point uses."""
    status = (
        ["attributes.status != 'RUNNING'", "attributes.status != 'SCHEDULED'"]
        if include_failed
        else ["attributes.status = 'FINISHED'"]
    )
    common = [*status, *(f"tags.`{k}` = {_quoted(v)}" for k, v in tags.items())]
    if model is not None:
        common.append(f"params.`model.name` = {_quoted(model)}")
    role = f"tags.`{tracking.ROLE}` = "
    sweep = [f"tags.`{tracking.SWEEP_ID}` = {_quoted(sweep_id)}"] if sweep_id is not None else []
    frames = [_search(experiment_id, [role + "'point'", *common, *sweep])]
    if sweep_id is None:
        frames.append(_search(experiment_id, [role + "'baseline'", *common]))
    frames = [f for f in frames if not f.empty]
    have = {run for f in frames for run in f["run_id"]}
    used = {run for f in frames for run in f.get(f"tags.{tracking.BASELINE_RUN}", pd.Series()).dropna()}
    if used - have:
        ids = ", ".join(_quoted(i) for i in sorted(used - have))
        frames.append(_search(experiment_id, [role + "'baseline'", f"attributes.run_id IN ({ids})"]))
    return _newest_per_fingerprint(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()


def _newest_per_fingerprint(runs: pd.DataFrame) -> pd.DataFrame:
    """One FINISHED run per fingerprint, the newest: a store can hold two of the same work (a `force=true`
    rerun, or sweeps that raced before points were claimed). Runs that did not finish are kept as they are."""
    finished = runs["status"] == "FINISHED"
    key = f"tags.{tracking.FINGERPRINT}"
    newest = runs[finished].sort_values("start_time").drop_duplicates(subset=[key], keep="last")
    return pd.concat([newest, runs[~finished]], ignore_index=True)


def _describe(sweep_id: str | None, model: str | None, tags: dict[str, str] | None) -> str:
    """The filters as the CLI spells them, for the 'nothing matched' message."""
    parts = [f"sweep={sweep_id}"] if sweep_id else []
    parts += [f"model={model}"] if model else []
    parts += [f"tag.{k}={v}" for k, v in (tags or {}).items()]
    return " ".join(parts) or "(no filters)"


def collect(
    tracking_uri: str,
    experiment: str,
    sweep_id: str | None = None,
    model: str | None = None,
    tags: dict[str, str] | None = None,
    include_failed: bool = False,
    gpu_mem_gb: float = 80.0,
) -> pd.DataFrame:
    """The leaderboard of an experiment's baseline and point runs, sorted by model then size on disk.

    Filters are MLflow search clauses: `sweep_id` (points tagged with it, plus the baselines they
    reference), `model` (param model.name), `tags` (exact tag values). Only FINISHED runs unless
    `include_failed` (then FAILED and KILLED too; they are never Pareto or tied). Raises ValueError when
    the store or experiment is missing or nothing matches.
    """
    runs = _runs(_experiment_id(tracking_uri, experiment), sweep_id, model, tags or {}, include_failed)
    if runs.empty:
        raise ValueError(
            f"no runs in experiment {experiment!r} of {tracking_uri} match {_describe(sweep_id, model, tags)}"
        )
    rows = [run_row(run) for run in runs.to_dict("records")]
    tasks = dict.fromkeys(t for row in rows for t in row["suite"].split(", ") if t)
    per_task = [f"{prefix}{task}" for task in tasks for prefix in TASK_COLUMNS]
    df = pd.DataFrame(rows).reindex(columns=[*COLUMNS, *kv.COLUMNS, *SUITE_COLUMNS, *per_task])
    df["passed"] = df["passed"].astype("boolean")
    return rank.ranked(df, gpu_mem_gb)


def sweep_run(tracking_uri: str, experiment: str, sweep_id: str) -> str:
    """The run id of a sweep's parent run (role=sweep), where its leaderboard belongs."""
    found = _search(
        _experiment_id(tracking_uri, experiment),
        [f"tags.`{tracking.ROLE}` = 'sweep'", f"tags.`{tracking.SWEEP_ID}` = {_quoted(sweep_id)}"],
    )
    if found.empty:
        raise ValueError(f"no sweep run (tag {tracking.ROLE}=sweep) with {tracking.SWEEP_ID}={sweep_id}")
    return str(found["run_id"].iloc[0])
