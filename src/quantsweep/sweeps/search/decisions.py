"""What the `quantsweep_optuna` sweeper decides, kept apart from Optuna, Hydra and the launcher so it can be
tested on numbers: feasibility at a confidence bound, pruning, what a trial found, which configuration
`smallest_first` tries next, and the study's answer (the best configuration, the Pareto front).

A trial is feasible when the lower confidence bound of what the floor is on clears it (`floor.judge`),
value − z·stderr ≥ floor (for `worst`, every task's), so a configuration that only clears the floor by
luck of the items drawn is not called feasible; at low fidelity the upper bound decides whether it can
still clear it at all.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from quantsweep.floor import Bound, judge
from quantsweep.floor import z_value as z_value  # re-exported: the search's modules use it from here
from quantsweep.results.pareto import pareto_mask
from quantsweep.sweeps.search.space import Key, key

# The trial user attribute that holds its `TrialRecord`.
RECORD = "quantsweep"

# Verdicts: COMPLETE trials are feasible or infeasible, PRUNED ones were stopped after the cheap evaluation;
# REFUSED ones drew a configuration the plan refused (settings that cannot go together): no job ran.
FEASIBLE, INFEASIBLE, PRUNED_FLOOR, PRUNED_SIZE, FAILED, REFUSED = (
    "feasible",
    "infeasible",
    "pruned: below floor",
    "pruned: not smaller",
    "failed",
    "refused",
)


def bound(metrics: dict[str, float], floor_on: str, z: float, z_upper: float | None = None) -> Bound | None:
    """What the floor is on, judged as everywhere else (`floor.judge`). None when the value is undefined
    (recovery against a baseline that scored 0 on these items).

    `z_upper` sets the upper bound's own width: pruning decides on a few items at `search.prune_confidence`.
    """
    return judge(metrics, floor_on, z, z_upper)


def constraint(lower: float, floor: float) -> float:
    """Optuna's constraint value: ≤ 0 (feasible) exactly when the lower bound clears the floor."""
    return floor - lower


def not_smaller(size: float, best: float | None) -> bool:
    """Size pruning: a trial no smaller than the best feasible one cannot become the best."""
    return best is not None and size >= best


@dataclass
class TrialRecord:
    """What one trial found, stored on the Optuna trial (JSON) so a resumed study can report it."""

    params: dict[str, str]
    verdict: str
    # low | full: the evaluation the numbers below come from.
    stage: str | None = None
    objective: float | None = None
    disk_bytes: float | None = None
    accuracy: float | None = None
    accuracy_stderr: float | None = None
    recovery: float | None = None
    recovery_stderr: float | None = None
    baseline_accuracy: float | None = None
    # What the floor is on, and its bounds at ±z·stderr.
    value: float | None = None
    lower: float | None = None
    upper: float | None = None
    low_run_id: str | None = None
    low_reused: bool = False
    full_run_id: str | None = None
    full_reused: bool = False
    duplicate_of: int | None = None
    error: str | None = None
    number: int = field(default=-1, compare=False)

    def measured(self, stage: str, metrics: dict[str, float], b: Bound, size: float) -> None:
        """Take an evaluation's numbers (each stage's replace the previous one's)."""
        self.stage, self.objective, self.disk_bytes = stage, size, metrics.get("disk_bytes")
        for name in ("accuracy", "accuracy_stderr", "recovery", "recovery_stderr", "baseline_accuracy"):
            setattr(self, name, metrics.get(name))
        self.value, self.lower, self.upper = b.value, b.lower, b.upper


def records(trials: Iterable[Any]) -> list[TrialRecord]:
    """The records of a study's finished trials (interrupted ones have none), numbered."""
    return [
        TrialRecord(**(t.user_attrs[RECORD] | {"number": t.number})) for t in trials if RECORD in t.user_attrs
    ]


def stands(record: TrialRecord, first_trial: int) -> bool:
    """Whether a trial's outcome is final for its configuration: its own (not a repeat's copy), and not a
    failure from an earlier session (that one is retried: it may have been a crash, not the configuration)."""
    return record.duplicate_of is None and (record.verdict != FAILED or record.number >= first_trial)


def next_smallest(
    order: list[dict[str, str]],
    predicted: dict[Key, float],
    found: list[TrialRecord],
    first_trial: int,
    busy: Collection[Key] = (),
) -> dict[str, str] | None:
    """The `smallest_first` sampler's choice: the first configuration in `order` (ascending predicted size)
    neither tried nor `busy` (being evaluated) that could still beat the best feasible one (predicted
    strictly smaller).

    A configuration whose outcome `stands` is done. None when the best feasible configuration is known to
    be the smallest: everything predicted smaller has been evaluated.
    """
    done = {key(r.params) for r in found if stands(r, first_trial)} | set(busy)
    feasible = [
        predicted[key(r.params)] for r in found if r.verdict == FEASIBLE and key(r.params) in predicted
    ]
    limit = min(feasible, default=math.inf)
    return next((c for c in order if key(c) not in done and predicted[key(c)] < limit), None)


def best(found: list[TrialRecord]) -> TrialRecord | None:
    """The smallest feasible trial; among equal sizes the higher lower bound, then the earlier trial."""
    feasible = [r for r in found if r.verdict == FEASIBLE]
    return min(feasible, key=lambda r: (r.objective, -(r.lower or 0.0), r.number), default=None)


def distinct_full(found: list[TrialRecord]) -> list[TrialRecord]:
    """Fully evaluated trials, one per configuration (repeats of a configuration left out)."""
    return [r for r in found if r.stage == "full" and r.duplicate_of is None and r.accuracy is not None]


def pareto(found: list[TrialRecord]) -> list[TrialRecord]:
    """Fully evaluated trials no other one beats on both size (smaller) and accuracy (higher)."""
    rows = distinct_full(found)
    mask = pareto_mask([r.objective or 0.0 for r in rows], [r.accuracy or 0.0 for r in rows])
    return sorted((r for r, on in zip(rows, mask, strict=True) if on), key=lambda r: (r.objective, r.number))


def closest(found: list[TrialRecord], n: int = 3) -> list[TrialRecord]:
    """When none is feasible: the trials whose lower bound came nearest the floor (full evaluations first)."""
    measured = [r for r in found if r.lower is not None and r.duplicate_of is None]
    return sorted(measured, key=lambda r: (r.stage != "full", -(r.lower or 0.0)))[:n]


def baseline_accuracy(found: list[TrialRecord]) -> float | None:
    """The baseline's accuracy, as a fully evaluated trial recorded it (None before any)."""
    return next((r.baseline_accuracy for r in distinct_full(found) if r.baseline_accuracy), None)
