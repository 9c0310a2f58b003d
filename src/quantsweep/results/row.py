"""One leaderboard row from one MLflow run (as `mlflow.search_runs` gives it): the point's settings, sizes,
scores and recovery, its KV-cache and suite cells, and the deployability verdict; the columns they fill."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from quantsweep import tracking
from quantsweep.evaluation.deploy import ERROR_TAG
from quantsweep.results import kv
from quantsweep.suite import TASK_METRICS, WORST_TASK
from quantsweep.tables import present

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


def _vllm(run: dict[str, Any]) -> str | None:
    """The deployability check's verdict: "loads", "fails: <vLLM's reason>", or None where none ran."""
    loads = present(run, "metrics.vllm_loads")
    if loads is None:
        return None
    return "loads" if loads else f"fails: {present(run, f'tags.{ERROR_TAG}') or 'unknown reason'}"


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One run's leaderboard row; a baseline is its own reference (recovery 100 %, compression 1×)."""

    def metric(name: str) -> float:
        value = present(run, f"metrics.{name}")
        return math.nan if value is None else float(value)

    def param(name: str) -> str | None:
        return present(run, f"params.{name}")

    baseline = present(run, f"tags.{tracking.ROLE}") == "baseline"
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
        "sweep_id": present(run, f"tags.{tracking.SWEEP_ID}"),
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
    method = present(run, f"tags.{tracking.RECOVERY_STDERR}") or (
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
            "baseline_run_id": present(run, f"tags.{tracking.BASELINE_RUN}"),
        }
        | cells
    )


def _suite_cells(run: dict[str, Any], metric: Any, param: Any, baseline: bool) -> dict[str, Any]:
    """The suite's cells of a row: its tasks (from the tag quantsweep.task_metrics, else eval.tasks), each
    task's score and recovery, mean and worst; runs logged before suites judge mean and worst on
    `recovery`, the primary task's."""
    tagged = present(run, f"tags.{TASK_METRICS}")
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
    cells["worst_task"] = None if baseline else present(run, f"tags.{WORST_TASK}") or primary
    return cells


def _number_param(run: dict[str, Any], name: str) -> float:
    """A run's param as a number (NaN when it has none, as runs logged before it existed)."""
    value = present(run, f"params.{name}")
    return math.nan if value is None else float(value)
