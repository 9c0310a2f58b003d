"""The search's decisions on numbers: confidence bounds, the best trial, the Pareto front, and the walk
`smallest_first` takes up the predicted sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.space import key


def test_confidence_bounds_on_numbers():
    assert decisions.z_value(0.9) == pytest.approx(1.2816, abs=1e-4)
    assert decisions.z_value(0.5) == 0
    b = decisions.bound({"recovery": 0.98, "recovery_stderr": 0.01}, "recovery", decisions.z_value(0.9))
    assert (b.lower, b.upper) == pytest.approx((0.98 - 0.012816, 0.98 + 0.012816), abs=1e-6)
    # 0.98 clears 0.97, but its 90% lower bound 0.967 does not: infeasible (constraint > 0).
    assert decisions.constraint(b.lower, 0.97) > 0
    assert decisions.constraint(b.lower, 0.96) <= 0
    assert decisions.bound({"recovery": float("nan")}, "recovery", 1.0) is None
    no_stderr = decisions.bound({"accuracy": 0.5}, "accuracy", 1.0)
    assert no_stderr.lower == no_stderr.upper == 0.5
    # Pruning's upper bound has its own width.
    wide = decisions.bound({"accuracy": 0.5, "accuracy_stderr": 0.1}, "accuracy", 0.0, 2.0)
    assert (wide.lower, wide.upper) == pytest.approx((0.5, 0.7))


def record(
    number: int, verdict: str, size: float, acc: float, lower: float, stage: str = "full"
) -> TrialRecord:
    return TrialRecord(
        {"trial": str(number)},
        verdict,
        stage=stage,
        objective=size,
        accuracy=acc,
        accuracy_stderr=0.01,
        value=acc,
        lower=lower,
        number=number,
    )


def test_best_is_the_smallest_feasible_and_the_front_is_non_dominated():
    found = [
        record(0, decisions.INFEASIBLE, 1.0, 0.50, 0.45),  # smallest, but infeasible
        record(1, decisions.FEASIBLE, 2.0, 0.60, 0.58),
        record(2, decisions.FEASIBLE, 2.0, 0.62, 0.60),  # as small as 1, surer: the best
        record(3, decisions.FEASIBLE, 3.0, 0.61, 0.59),  # larger and less accurate than 2: dominated
        record(4, decisions.PRUNED_SIZE, 1.5, 0.70, 0.50, stage="low"),  # not fully evaluated
    ]
    assert decisions.best(found).number == 2
    assert [r.number for r in decisions.pareto(found)] == [0, 2]
    assert decisions.best(found[:1]) is None
    assert [r.number for r in decisions.closest(found[:1] + found[4:])] == [0, 4]


def test_records_are_read_from_trials_that_have_one_and_numbered():
    stored = {"params": {"scheme": "a"}, "verdict": decisions.FEASIBLE, "number": -1}
    trials = [
        SimpleNamespace(number=0, user_attrs={}),
        SimpleNamespace(number=1, user_attrs={"quantsweep": stored}),
    ]
    (only,) = decisions.records(trials)
    assert only.number == 1 and only.params == {"scheme": "a"} and only.verdict == decisions.FEASIBLE


def test_next_smallest_walks_up_the_predicted_sizes_and_stops_below_the_best_feasible():
    order = [{"scheme": s} for s in ("a", "b", "c", "d")]
    predicted = {key(c): size for c, size in zip(order, (1.0, 2.0, 3.0, 4.0), strict=True)}

    def rec(name: str, verdict: str, number: int, duplicate_of: int | None = None) -> TrialRecord:
        return TrialRecord({"scheme": name}, verdict, number=number, duplicate_of=duplicate_of)

    assert decisions.next_smallest(order, predicted, [], 0) == order[0]
    # Being evaluated: the next one up.
    assert decisions.next_smallest(order, predicted, [], 0, busy=[key(order[0])]) == order[1]
    # a was pruned, b failed in an earlier session (retried), c is feasible: only b can still beat c.
    found = [
        rec("a", decisions.PRUNED_FLOOR, 0),
        rec("b", decisions.FAILED, 1),
        rec("c", decisions.FEASIBLE, 2),
    ]
    assert decisions.next_smallest(order, predicted, found, 2) == order[1]
    assert decisions.next_smallest(order, predicted, found, 2, busy=[key(order[1])]) is None
    # Failed in this session: not retried now, and nothing smaller than c is left.
    assert decisions.next_smallest(order, predicted, found, 0) is None
    # Infeasible everywhere and no best: the walk goes on to the largest.
    found = [
        rec("a", decisions.INFEASIBLE, 0),
        rec("b", decisions.INFEASIBLE, 1),
        rec("a", decisions.INFEASIBLE, 2, duplicate_of=0),
    ]
    assert decisions.next_smallest(order, predicted, found, 0) == order[2]


def test_the_floor_in_accuracy_comes_from_a_fully_evaluated_trial():
    low = TrialRecord({"s": "a"}, decisions.PRUNED_FLOOR, stage="low", accuracy=0.3, baseline_accuracy=0.9)
    full = TrialRecord({"s": "b"}, decisions.FEASIBLE, stage="full", accuracy=0.4, baseline_accuracy=0.5)
    assert decisions.baseline_accuracy([low]) is None
    assert decisions.baseline_accuracy([low, full]) == 0.5
