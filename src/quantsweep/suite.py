"""A point's suite against its baseline: each task's recovery ± its paired stderr, the suite's mean and
worst task, and the verdict on the floor, as the run metrics and tags the leaderboard and the search read.

Metric names, per task of eval.tasks: `score.<task>` ± `score_stderr.<task>` (the metric the task is
judged on, baselines too), `baseline_score.<task>`, `recovery.<task>` ± `recovery_stderr.<task>`; for the
suite `recovery_mean` ± `recovery_mean_stderr` and `recovery_worst` ± `recovery_worst_stderr`, the worst
task in the tag `quantsweep.worst_task`; which metric each task is judged on in `quantsweep.task_metrics`.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from quantsweep.config import EvalConfig
from quantsweep.evaluation.scores import TaskScore, scored
from quantsweep.floor import TASK_RECOVERY, TASK_RECOVERY_STDERR, judge, z_value
from quantsweep.recovery import Recovery, Scored, task_recovery
from quantsweep.tracking import RECOVERY_STDERR, metric_name

if TYPE_CHECKING:
    from quantsweep.evaluation.harness import EvalResult

TASK_METRICS = "quantsweep.task_metrics"
WORST_TASK = "quantsweep.worst_task"


def task_metrics_tag(suite: list[TaskScore]) -> dict[str, str]:
    """{task: judged metric} as a tag, in the suite's order."""
    return {TASK_METRICS: json.dumps({s.task: s.metric for s in suite})}


def score_metrics(suite: list[TaskScore]) -> dict[str, float | None]:
    """Each task's judged score under one name for every run, baselines included."""
    out: dict[str, float | None] = {}
    for s in suite:
        out[f"score.{s.task}"] = s.value
        out[f"score_stderr.{s.task}"] = s.stderr
    return out


def _baseline(score: TaskScore, metrics: dict[str, float], items: dict[str, Any] | None) -> Scored:
    name = metric_name(f"{score.task}.{score.metric}")
    if name not in metrics:
        raise KeyError(f"the baseline run has no {name}; rerun it (force=true) with this eval's settings")
    stderr = metrics.get(metric_name(f"{score.task}.{score.metric}_stderr"))
    return scored(
        TaskScore(score.task, score.metric, metrics[name], stderr, score.higher_is_better, score.leaves),
        items or {},
    )


def mean_recovery(recoveries: list[Recovery]) -> tuple[float, float | None]:
    """The unweighted mean of the tasks' recoveries; its stderr treats the tasks as independent samples
    (different items): sqrt(Σ se²) / T over the tasks that have one."""
    values = [r.value for r in recoveries]
    errors = [r.stderr for r in recoveries if r.stderr is not None]
    mean = sum(values) / len(values)
    return mean, (math.sqrt(sum(e * e for e in errors)) / len(values) if errors else None)


def compare(
    ev: EvalConfig, result: EvalResult, base_metrics: dict[str, float], base_items: dict[str, Any] | None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """(metrics, tags) comparing this run's suite with the baseline's; the primary task's recovery is
    `recovery` as before suites, and `passed` judges `eval.floor_on` at `eval.confidence`."""
    recoveries: dict[str, Recovery] = {}
    metrics: dict[str, float | None] = {}
    primary = ev.primary_task or ev.tasks[0]
    for s in result.suite:
        base = _baseline(s, base_metrics, base_items)
        r = task_recovery(scored(s, result.items), base)
        recoveries[s.task] = r
        metrics[f"baseline_score.{s.task}"] = base.value
        metrics[TASK_RECOVERY + s.task] = r.value
        metrics[TASK_RECOVERY_STDERR + s.task] = r.stderr
        if s.task == primary:
            metrics |= {
                "baseline_accuracy": base.value,
                "baseline_accuracy_stderr": base.stderr,
                "recovery": r.value,
                "recovery_stderr": r.stderr,
                "recovery_stderr_independent": r.independent,
            }
    mean, mean_se = mean_recovery(list(recoveries.values()))
    # An undefined recovery (a baseline that scored 0) is the worst: nothing says it clears the floor.
    worst = min(recoveries, key=lambda t: (math.isfinite(recoveries[t].value), recoveries[t].value))
    metrics |= {
        "recovery_mean": mean,
        "recovery_mean_stderr": mean_se,
        "recovery_worst": recoveries[worst].value,
        "recovery_worst_stderr": recoveries[worst].stderr,
    }
    own = {"accuracy": result.primary, "accuracy_stderr": result.primary_stderr}
    bound = judge(
        {k: v for k, v in (metrics | own).items() if v is not None}, ev.floor_on, z_value(ev.confidence)
    )
    # An undefined value (recovery against a baseline that scored 0) does not pass.
    metrics |= {"floor": ev.floor, "passed": int(bound is not None and bound.lower >= ev.floor)}
    method = recoveries[primary].method
    tags = {WORST_TASK: worst, RECOVERY_STDERR: "independent" if method is None else method}
    return metrics, tags | task_metrics_tag(result.suite)
