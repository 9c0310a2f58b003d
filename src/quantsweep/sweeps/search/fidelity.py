"""The two evaluations of a trial, judged and told to Optuna: the cheap one (`search.low_fidelity_limit`
items) prunes what cannot clear the floor or cannot become the best; the full one decides feasibility, an
Optuna constraint, so an infeasible trial is never the study's best."""

from __future__ import annotations

from dataclasses import asdict

import optuna
from optuna.trial import Trial, TrialState

from quantsweep.outcome import Outcome
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.plan import Plan
from quantsweep.sweeps.search.space import describe
from quantsweep.sweeps.search.study import InFlight, best_size, tell_failed
from quantsweep.tables import pm


def low_fidelity_verdict(
    trial: Trial, b: decisions.Bound, step: int, size: float, best: float | None
) -> str | None:
    """Report the upper bound to Optuna and ask its pruner; then prune what cannot become the best.

    Returns the pruning verdict, or None when the trial deserves the full evaluation.
    """
    trial.report(b.upper, step)
    if trial.should_prune():
        return decisions.PRUNED_FLOOR
    if decisions.not_smaller(size, best):
        return decisions.PRUNED_SIZE
    return None


def judge_low(study: optuna.Study, plan: Plan, t: InFlight, report: Outcome) -> bool:
    """Score the cheap evaluation; True when the trial goes on to the full one."""
    s = plan.search
    if report.status != "FINISHED":
        tell_failed(study, t, decisions.FAILED, report.error)
        return False
    b = decisions.bound(report.metrics, s.floor_on, plan.z, plan.z_prune)
    if b is None:  # recovery undefined on these few items: judge it on the full evaluation
        return True
    size = plan.objective.measured(report.metrics, s)
    t.record.measured("low", report.metrics, b, size)
    verdict = low_fidelity_verdict(t.handle, b, plan.low_limit or 0, size, best_size(study))
    if verdict is None:
        return True
    t.record.verdict = verdict
    t.handle.set_constraint("floor", decisions.constraint(b.lower, s.floor))
    t.handle.set_user_attr(decisions.RECORD, asdict(t.record))
    study.tell(t.handle, state=TrialState.PRUNED)
    why = (
        f"{s.floor_on} ≤ {b.upper:.3f} (upper bound) < floor {s.floor}"
        if verdict == decisions.PRUNED_FLOOR
        else f"{plan.objective.text(size)} is no smaller than the best feasible"
    )
    print(
        f"quantsweep: trial {t.record.number} {describe(t.record.params)}: pruned at "
        f"{plan.low_limit} items, {why}",
        flush=True,
    )
    return False


def judge_full(study: optuna.Study, plan: Plan, t: InFlight, report: Outcome) -> None:
    """Feasible when the lower bound clears the floor; told as COMPLETE with its size either way."""
    s = plan.search
    if report.status != "FINISHED":
        tell_failed(study, t, decisions.FAILED, report.error)
        return
    b = decisions.bound(report.metrics, s.floor_on, plan.z)
    if b is None:
        error = f"{s.floor_on} is undefined (baseline accuracy 0?); use search.floor_on=accuracy"
        tell_failed(study, t, decisions.FAILED, error)
        return
    size = plan.objective.measured(report.metrics, s)
    t.record.measured("full", report.metrics, b, size)
    feasible = b.lower >= s.floor
    t.record.verdict = decisions.FEASIBLE if feasible else decisions.INFEASIBLE
    t.handle.set_constraint("floor", decisions.constraint(b.lower, s.floor))
    t.handle.set_user_attr(decisions.RECORD, asdict(t.record))
    study.tell(t.handle, size)
    print(
        f"quantsweep: trial {t.record.number} {describe(t.record.params)}: "
        f"{plan.objective.text(size)}, {s.floor_on} {pm(b.value, b.stderr)}, "
        f"lower bound {b.lower:.3f} → {t.record.verdict}",
        flush=True,
    )
