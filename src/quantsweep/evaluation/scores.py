"""What lm-eval's output says about each task of a suite: its metrics, its per-item scores, which metric
it is judged on and which way that metric points.

Names follow one rule: lm-eval's `acc,none` is `acc`, a metric under a filter is `exact_match_strict-match`.
A perplexity's per-item value is a pair (log-likelihood, words or bytes): it is kept as two item metrics,
`<metric>.ll` and `<metric>.weight`, so items.json stays {task: {metric: {doc_id: number}}}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from quantsweep.config import EvalConfig
from quantsweep.recovery import Items, Scored, item_stderr

# Item-metric suffixes of a perplexity's (log-likelihood, weight) pairs.
LL, WEIGHT = ".ll", ".weight"
# The group quantsweep writes to apply per-task settings (eval.task_overrides): not a task of the suite.
WRAPPER = "quantsweep_suite"


@dataclass(frozen=True)
class TaskScore:
    """One suite task's judged metric in one run; `leaves` are the tasks whose items make it up (itself,
    or a group's subtasks)."""

    task: str
    metric: str
    value: float
    stderr: float | None
    higher_is_better: bool
    leaves: tuple[str, ...]


def clean_name(metric: str, filt: str) -> str:
    """lm-eval's metric under a filter as quantsweep names it: `acc` (filter none), or
    `exact_match_strict-match`."""
    return metric if filt == "none" else f"{metric}_{filt}"


def clean_metrics(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}}: lm-eval's `acc,none` → `acc`, non-numeric values (stderr "N/A") dropped."""
    cleaned: dict[str, dict[str, float]] = {}
    for task, values in raw["results"].items():
        if task == WRAPPER:
            continue
        out = cleaned.setdefault(task, {})
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            metric, _, filt = key.partition(",")
            out[clean_name(metric, filt)] = float(value)
    return cleaned


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def item_scores(samples: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{metric: {doc_id: value}} from lm-eval's logged samples, metric names as `clean_metrics` gives them;
    a numeric pair (a perplexity's log-likelihood and word or byte count) as `<metric>.ll` and
    `<metric>.weight`; other values (corpus-level metrics' strings) are left out."""
    scores: dict[str, dict[int, float]] = {}
    for sample in samples:
        filt, doc = sample.get("filter", "none"), int(sample["doc_id"])
        for metric in sample.get("metrics", []):
            value, name = sample.get(metric), clean_name(metric, filt)
            if _number(value):
                scores.setdefault(name, {})[doc] = float(value)
            elif isinstance(value, list | tuple) and len(value) == 2 and all(_number(v) for v in value):
                scores.setdefault(name + LL, {})[doc] = float(value[0])
                scores.setdefault(name + WEIGHT, {})[doc] = float(value[1])
    return scores


def leaves(raw: dict[str, Any], task: str) -> tuple[str, ...]:
    """The tasks whose items make up `task`'s score: itself, or a group's subtasks at any depth."""
    groups = raw.get("group_subtasks", {})
    if task not in groups:
        return (task,)
    return tuple(leaf for child in groups[task] for leaf in leaves(raw, child))


def judged_metric(cfg: EvalConfig, task: str, reported: dict[str, float], primary: bool) -> str:
    """The metric a task is judged on: eval.metrics[task]; else eval.primary_metric, which the primary task
    must report (KeyError otherwise) and another task uses when it reports it; else the first metric the
    task reports."""
    if task in cfg.metrics:
        wanted = cfg.metrics[task]
    elif primary or cfg.primary_metric in reported:
        wanted = cfg.primary_metric
    else:
        wanted = next((m for m in reported if not m.endswith("_stderr")), cfg.primary_metric)
    if wanted not in reported:
        raise KeyError(wanted)
    return wanted


def higher_is_better(raw: dict[str, Any], task: str, metric: str) -> bool | None:
    """lm-eval's direction for a metric (named without its filter there), None when it gives none."""
    directions = raw.get("higher_is_better", {}).get(task, {})
    names = [name for name in directions if metric == name or metric.startswith(name + "_")]
    return directions[max(names, key=len)] if names else None


def task_scores(
    cfg: EvalConfig, raw: dict[str, Any], metrics: dict[str, dict[str, float]], primary_task: str
) -> list[TaskScore]:
    """Each task of `eval.tasks`, in order, on the metric it is judged on."""
    found = []
    for task in cfg.tasks:
        reported = metrics.get(task, {})
        metric = judged_metric(cfg, task, reported, task == primary_task)
        higher = higher_is_better(raw, task, metric)
        found.append(
            TaskScore(
                task,
                metric,
                reported[metric],
                reported.get(f"{metric}_stderr"),
                higher is not False,
                leaves(raw, task),
            )
        )
    return found


def task_items(
    items: dict[str, dict[str, dict[int, float]]], score: TaskScore
) -> tuple[Items | None, Items | None]:
    """(values, weights) of `score`'s metric over its leaves' items; keyed by doc id for a task, by
    (subtask, doc id) within a group; (None, None) when a leaf has none."""
    pair = all(score.metric + LL in items.get(leaf, {}) for leaf in score.leaves)
    names = (score.metric + LL, score.metric + WEIGHT) if pair else (score.metric, None)
    found: list[Items] = [{}, {}]
    for leaf in score.leaves:
        for slot, name in enumerate(names):
            if name is None:
                continue
            values = items.get(leaf, {}).get(name)
            if values is None:
                return None, None
            grouped = len(score.leaves) > 1
            found[slot].update({((leaf, d) if grouped else d): v for d, v in values.items()})
    return found[0], (found[1] if pair else None)


def scored(score: TaskScore, items: dict[str, dict[str, dict[int, float]]]) -> Scored:
    values, weights = task_items(items, score)
    return Scored(score.value, score.stderr, score.higher_is_better, values, weights)


def add_item_stderrs(
    metrics: dict[str, dict[str, float]], items: dict[str, dict[str, dict[int, float]]]
) -> None:
    """Fill in a perplexity's stderr from its per-document values where lm-eval reports none."""
    for task, values in metrics.items():
        for metric in [m for m in values if f"{m}_stderr" not in values and not m.endswith("_stderr")]:
            if metric + LL not in items.get(task, {}):
                continue
            score = TaskScore(task, metric, values[metric], None, False, (task,))
            stderr = item_stderr(scored(score, items))
            if stderr is not None:
                values[f"{metric}_stderr"] = stderr
