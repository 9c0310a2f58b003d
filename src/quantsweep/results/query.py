"""A leaderboard's rows from an MLflow store: MLflow's own search (by sweep, model and tags), one row per run.

`collect` returns the ranked DataFrame (see `rank`); `sweep_run` finds the sweep parent run the files
belong on. Neither creates a store or an experiment: a typo must not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from quantsweep import tracking
from quantsweep.evaluation.deploy import ERROR_TAG
from quantsweep.results import kv, rank
from quantsweep.suite import TASK_METRICS, WORST_TASK
from quantsweep.tables import missing

COLUMNS = (
    "model",
    "role",
    "label",
    "scheme",
    "algorithm",
    "group_size",
    "ignore",
    "metric",
    "disk_gib",
    "compression",
    "bits_per_weight",
    "weights_vram_gib",
    "gpu_mem_gb",
    "gpus_needed",
    "accuracy",
    "accuracy_stderr",
    "baseline_accuracy",
    "recovery_pct",
    "recovery_pct_stderr",
    "recovery_stderr_method",
    "floor",
    "floor_on",
    "passed",
    "pareto",
    "tied_with",
    "time_quantize_s",
    "time_eval_s",
    "vllm",
    "status",
    "run_id",
    "baseline_run_id",
    "sweep_id",
)


# A suite's columns (quantsweep.suite): the tasks judged, mean and worst recovery, and for each task
# `score:<task>`, `score_stderr:<task>`, `recovery_pct:<task>`, `recovery_pct_stderr:<task>` after them.
SUITE_COLUMNS = (
    "suite",
    "recovery_mean_pct",
    "recovery_mean_pct_stderr",
    "recovery_worst_pct",
    "recovery_worst_pct_stderr",
    "worst_task",
    "confidence",
)
TASK_COLUMNS = ("score:", "score_stderr:", "recovery_pct:", "recovery_pct_stderr:")


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


def _value(run: dict[str, Any], key: str) -> Any:
    """A search_runs cell, None when the run lacks it (pandas fills absent params/tags with NaN or None)."""
    value = run.get(key)
    return None if missing(value) else value


def _vllm(run: dict[str, Any]) -> str | None:
    """The deployability check's verdict: "loads", "fails: <vLLM's reason>", or None where none ran."""
    loads = _value(run, "metrics.vllm_loads")
    if loads is None:
        return None
    return "loads" if loads else f"fails: {_value(run, f'tags.{ERROR_TAG}') or 'unknown reason'}"


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """One run's leaderboard row; a baseline is its own reference (recovery 100 %, compression 1×)."""

    def metric(name: str) -> float:
        value = _value(run, f"metrics.{name}")
        return math.nan if value is None else float(value)

    def param(name: str) -> str | None:
        return _value(run, f"params.{name}")

    baseline = _value(run, f"tags.{tracking.ROLE}") == "baseline"
    cells = _suite_cells(run, metric, param, baseline)
    # The group size the point was quantized with (fitted to the model or given); older runs logged only
    # the configured one.
    group = param("scheme.group_size_used") or param("scheme.group_size")
    group = None if group == "n/a" else group
    row = {
        "model": param("model.name"),
        "role": "baseline" if baseline else "point",
        "metric": param("eval.primary_metric"),
        "disk_gib": metric("disk_gib"),
        "bits_per_weight": metric("bits_per_weight"),
        "weights_vram_gib": metric("weights_vram_est_gib"),
        "accuracy": metric("accuracy"),
        "accuracy_stderr": metric("accuracy_stderr"),
        "time_eval_s": metric("time_eval_s"),
        "vllm": _vllm(run),
        "status": run["status"],
        "run_id": run["run_id"],
        "sweep_id": _value(run, f"tags.{tracking.SWEEP_ID}"),
        **kv.cells(run, baseline),
    }
    if baseline:
        return (
            row
            | {
                "label": "baseline",
                "scheme": "baseline",
                "compression": 1.0,
                "baseline_accuracy": row["accuracy"],
                "recovery_pct": math.nan if math.isnan(row["accuracy"]) else 100.0,
                "recovery_pct_stderr": math.nan,
                "floor": math.nan,
                "passed": pd.NA,
                "time_quantize_s": math.nan,
                "baseline_run_id": run["run_id"],
            }
            | cells
        )
    group_size = "preset" if group in (None, "None") else group
    label = f"{param('scheme.name')} {param('scheme.algorithm')}" + (
        f" g{group}" if group_size == group else ""
    )
    sparse = param("sparsity.name")  # a pruned point: `W4A16 RTN g64 2of4`
    label += f" {sparse}" if sparse not in (None, "none") else ""
    label += kv.label(row["kv_cache"])  # an FP8 KV cache: `W8A8 RTN kvfp8`
    passed = metric("passed")
    stderr = metric("recovery_stderr")
    # Runs logged before the tag existed propagated both stderrs independently: the only method then.
    method = _value(run, f"tags.{tracking.RECOVERY_STDERR}") or (
        None if math.isnan(stderr) else "independent"
    )
    return (
        row
        | {
            "label": label,
            "scheme": param("scheme.name"),
            "algorithm": param("scheme.algorithm"),
            "group_size": group_size,
            "ignore": param("ignore.resolved"),
            "compression": metric("compression_ratio"),
            "baseline_accuracy": metric("baseline_accuracy"),
            "recovery_pct": 100 * metric("recovery"),
            "recovery_pct_stderr": 100 * stderr,
            "recovery_stderr_method": method,
            "floor": metric("floor"),
            "floor_on": param("eval.floor_on"),
            "passed": pd.NA if math.isnan(passed) else bool(passed),
            "time_quantize_s": metric("time_quantize_s"),
            "baseline_run_id": _value(run, f"tags.{tracking.BASELINE_RUN}"),
        }
        | cells
    )


def _suite_cells(run: dict[str, Any], metric: Any, param: Any, baseline: bool) -> dict[str, Any]:
    """The suite's cells of a row: its tasks (from the tag quantsweep.task_metrics, else eval.tasks), each
    task's score and recovery, mean and worst; runs logged before suites judge mean and worst on
    `recovery`, the primary task's."""
    tagged = _value(run, f"tags.{TASK_METRICS}")
    tasks = list(json.loads(tagged)) if tagged else json.loads(param("eval.tasks") or "[]")
    pct = (lambda name: 100.0) if baseline else (lambda name: 100 * metric(name))
    cells: dict[str, Any] = {"suite": ", ".join(tasks), "confidence": _number_param(run, "eval.confidence")}
    for task in tasks:
        cells[f"score:{task}"] = metric(f"score.{task}")
        cells[f"score_stderr:{task}"] = metric(f"score_stderr.{task}")
        cells[f"recovery_pct:{task}"] = pct(f"recovery.{task}")
        cells[f"recovery_pct_stderr:{task}"] = (
            math.nan if baseline else 100 * metric(f"recovery_stderr.{task}")
        )
    suite = not math.isnan(metric("recovery_mean")) or baseline
    for kind in ("mean", "worst"):
        cells[f"recovery_{kind}_pct"] = pct(f"recovery_{kind}" if suite else "recovery")
        stderr = metric(f"recovery_{kind}_stderr" if suite else "recovery_stderr")
        cells[f"recovery_{kind}_pct_stderr"] = math.nan if baseline else 100 * stderr
    primary = param("eval.primary_task") or (tasks[0] if tasks else None)
    cells["worst_task"] = None if baseline else _value(run, f"tags.{WORST_TASK}") or primary
    return cells


def _number_param(run: dict[str, Any], name: str) -> float:
    """A run's param as a number (NaN when it has none, as runs logged before it existed)."""
    value = _value(run, f"params.{name}")
    return math.nan if value is None else float(value)


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
    rows = [_row(run) for run in runs.to_dict("records")]
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
