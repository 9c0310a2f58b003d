"""A trial's two evaluations judged and told to a real Optuna study: pruned on the upper bound at low
fidelity (Optuna's ThresholdPruner) or as no smaller than the best, feasible on the lower bound in full."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from quantsweep.outcome import Outcome
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.fidelity import judge_full, judge_low, low_fidelity_verdict
from quantsweep.sweeps.search.study import InFlight


def test_prune_decision_uses_optunas_threshold_pruner_on_the_upper_bound():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=0.97))
    z = decisions.z_value(0.9)
    below = decisions.bound({"recovery": 0.90, "recovery_stderr": 0.02}, "recovery", z)  # upper 0.926
    assert low_fidelity_verdict(study.ask(), below, 50, 1.0, None) == decisions.PRUNED_FLOOR
    unsure = decisions.bound({"recovery": 0.95, "recovery_stderr": 0.02}, "recovery", z)  # upper 0.976
    assert low_fidelity_verdict(study.ask(), unsure, 50, 1.0, None) is None
    assert low_fidelity_verdict(study.ask(), unsure, 50, 1.0, 2.0) is None
    assert low_fidelity_verdict(study.ask(), unsure, 50, 2.0, 2.0) == decisions.PRUNED_SIZE
    assert low_fidelity_verdict(study.ask(), unsure, 50, 3.0, 2.0) == decisions.PRUNED_SIZE


def point(accuracy: float, stderr: float, disk_bytes: float) -> Outcome:
    metrics = {"accuracy": accuracy, "accuracy_stderr": stderr, "disk_bytes": disk_bytes}
    return Outcome("p", "FINISHED", run_id="r", metrics=metrics)


def in_flight(study: optuna.Study) -> InFlight:
    trial = study.ask()
    return InFlight(trial, TrialRecord({"scheme": "a"}, decisions.FAILED, number=trial.number), [])


def test_full_evaluation_is_feasible_on_its_lower_bound_only(make_plan):
    plan = make_plan(floor=0.5, confidence=0.9)  # z = 1.2816
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    sure, lucky = in_flight(study), in_flight(study)
    judge_full(study, plan, sure, point(0.6, 0.05, 100.0))  # lower bound 0.536
    judge_full(study, plan, lucky, point(0.6, 0.1, 50.0))  # lower bound 0.472: clears 0.5 by luck only
    assert (sure.record.verdict, lucky.record.verdict) == (decisions.FEASIBLE, decisions.INFEASIBLE)
    assert sure.record.lower == pytest.approx(0.6 - 1.2816 * 0.05, abs=1e-4)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].constraints == {"floor": pytest.approx(0.5 - sure.record.lower)}
    assert trials[1].constraints["floor"] > 0
    # The smaller one is infeasible: Optuna's best is the feasible one.
    assert study.best_trial.number == 0 and study.best_value == 100.0


def test_low_fidelity_prunes_below_the_floor_and_what_cannot_be_smaller(make_plan):
    plan = make_plan(low_limit=4, floor=0.5, prune_confidence=0.9)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    best = in_flight(study)
    judge_full(study, plan, best, point(0.7, 0.01, 100.0))
    below, larger, hopeful = in_flight(study), in_flight(study), in_flight(study)
    assert not judge_low(study, plan, below, point(0.25, 0.1, 50.0))  # upper bound 0.378 < 0.5
    assert not judge_low(study, plan, larger, point(0.9, 0.1, 150.0))  # could clear, but is larger
    assert judge_low(study, plan, hopeful, point(0.45, 0.1, 50.0))  # upper bound 0.578: go on
    assert below.record.verdict == decisions.PRUNED_FLOOR and larger.record.verdict == decisions.PRUNED_SIZE
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.RUNNING]
    (upper,) = study.trials[1].intermediate_values.values()
    assert upper == pytest.approx(0.25 + 1.2816 * 0.1, abs=1e-4)
    assert study.trials[1].user_attrs[decisions.RECORD]["stage"] == "low"


def test_a_failed_or_undefined_evaluation_fails_the_trial(make_plan):
    plan = make_plan(floor_on="recovery", floor=0.9)
    study = optuna.create_study()
    crashed, undefined = in_flight(study), in_flight(study)
    judge_full(study, plan, crashed, Outcome("p", "FAILED", error="RuntimeError: boom"))
    judge_full(study, plan, undefined, point(0.3, 0.1, 10.0))  # no recovery: baseline scored 0
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert crashed.record.error == "RuntimeError: boom"
    assert "recovery is undefined" in (undefined.record.error or "")
