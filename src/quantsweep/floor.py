"""The accuracy floor: what a point must clear, checked, judged and turned into an accuracy, in one place.

Light on purpose (no torch, no lm-eval): the pipeline's verdict, the search's constraint and pruning and
the leaderboard's re-judging all call `judge`, so the three follow one rule.

What the floor is on (`eval.floor_on`, `search.floor_on`):

- `recovery`: the primary task's recovery (the first task, or eval.primary_task);
- `mean`: the suite's mean recovery over its tasks;
- `worst`: every task's recovery (the worst task decides; its lower bound is the lowest of the tasks');
- `task:<name>`: one named task's recovery;
- `accuracy`: the primary task's score itself (a higher-is-better metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from quantsweep.errors import ConfigError

FLOOR_ON = ("recovery", "mean", "worst", "accuracy", "task:<name>")
TASK_PREFIX = "task:"
# Run metrics a suite logs (pipeline): per task `recovery.<task>` ± `recovery_stderr.<task>`.
TASK_RECOVERY, TASK_RECOVERY_STDERR = "recovery.", "recovery_stderr."


@dataclass(frozen=True)
class Bound:
    """What the floor is on, its stderr (0 when none is known) and the bounds at −z·stderr and +z·stderr."""

    value: float
    stderr: float
    lower: float
    upper: float


def z_value(confidence: float) -> float:
    """One-sided normal quantile: 0.9 → 1.2816, 0.5 → 0 (the point estimate)."""
    return NormalDist().inv_cdf(confidence)


def check_floor(floor: float, floor_on: str, group: str, tasks: list[str] | None = None) -> None:
    """A floor is a fraction in [0, 1] on one of FLOOR_ON, for `eval.*` and `search.*` alike; a named
    task must be one of `tasks` when they are known."""
    if not 0.0 <= floor <= 1.0:
        raise ConfigError(
            f"{group}.floor={floor} is outside [0, 1]; give a fraction, e.g. {group}.floor=0.97 for 97%"
        )
    named = floor_on.removeprefix(TASK_PREFIX) if floor_on.startswith(TASK_PREFIX) else None
    if floor_on not in FLOOR_ON[:4] and not named:
        raise ConfigError(f"{group}.floor_on={floor_on!r}; choose one of {', '.join(FLOOR_ON)}")
    if named and tasks is not None and named not in tasks:
        raise ConfigError(
            f"{group}.floor_on={floor_on!r} names a task that is not in eval.tasks={list(tasks)}; "
            f"use one of {', '.join(TASK_PREFIX + t for t in tasks)}"
        )


def task_recoveries(metrics: dict[str, float]) -> dict[str, tuple[float, float]]:
    """{task: (recovery, stderr)} from a run's `recovery.<task>` metrics (empty for runs logged before
    suites were; a missing stderr counts as 0)."""
    return {
        name.removeprefix(TASK_RECOVERY): (
            value,
            metrics.get(TASK_RECOVERY_STDERR + name[len(TASK_RECOVERY) :]) or 0.0,
        )
        for name, value in metrics.items()
        if name.startswith(TASK_RECOVERY)
    }


def _bound(value: float | None, stderr: float | None, z: float, z_upper: float) -> Bound | None:
    if value is None or not math.isfinite(value):
        return None
    se = stderr if stderr is not None and math.isfinite(stderr) else 0.0
    return Bound(value, se, value - z * se, value + z_upper * se)


def judge(metrics: dict[str, float], floor_on: str, z: float, z_upper: float | None = None) -> Bound | None:
    """The bound of what `floor_on` names in a run's metrics: value − z·stderr (lower) and
    value + z_upper·stderr (upper, z_upper defaulting to z). None when the value is undefined (recovery
    against a baseline that scored 0). Runs without per-task metrics judge mean and worst on `recovery`."""
    up = z if z_upper is None else z_upper
    tasks = task_recoveries(metrics)
    if floor_on.startswith(TASK_PREFIX):
        found = tasks.get(floor_on.removeprefix(TASK_PREFIX))
        return None if found is None else _bound(*found, z, up)
    if floor_on == "worst" and tasks:
        if not all(math.isfinite(v) for v, _ in tasks.values()):
            return None
        _, (value, se) = min(tasks.items(), key=lambda kv: kv[1][0])
        return Bound(
            value, se, min(v - z * s for v, s in tasks.values()), min(v + up * s for v, s in tasks.values())
        )
    name = "recovery_mean" if floor_on == "mean" and "recovery_mean" in metrics else floor_on
    name = "recovery" if name in ("mean", "worst") else name
    return _bound(metrics.get(name), metrics.get(f"{name}_stderr"), z, up)


def floor_accuracy(floor: float, floor_on: str, baseline_accuracy: float | None) -> float | None:
    """The accuracy (primary metric) the floor amounts to: floor × baseline accuracy on the primary task's
    recovery, the floor itself on accuracy; None when it is on another task or the suite, or the baseline
    is unknown."""
    if floor_on == "accuracy":
        return floor
    if floor_on != "recovery":
        return None
    return None if baseline_accuracy is None else floor * baseline_accuracy
