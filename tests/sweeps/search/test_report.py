"""The study's printed report on numbers: the totals, the trial table, and the best trial with the line
that reruns it, or the trials closest to the floor."""

from __future__ import annotations

from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.report import counts, summary, table

GIB = 2**30


def trial(number: int, verdict: str, size: float, acc: float, lower: float, **extra) -> TrialRecord:
    return TrialRecord(
        {"scheme": f"s{number}"},
        verdict,
        stage=extra.pop("stage", "full"),
        objective=size,
        accuracy=acc,
        accuracy_stderr=0.02,
        value=acc,
        lower=lower,
        number=number,
        **extra,
    )


FOUND = [
    trial(0, decisions.INFEASIBLE, 1 * GIB, 0.40, 0.37, full_run_id="r0", full_reused=True),
    trial(1, decisions.PRUNED_FLOOR, 1.5 * GIB, 0.30, 0.27, stage="low", low_run_id="l1"),
    trial(2, decisions.FEASIBLE, 2 * GIB, 0.55, 0.52, low_run_id="l2", full_run_id="r2"),
    trial(3, decisions.FEASIBLE, 3 * GIB, 0.53, 0.51, full_run_id="r3"),
    TrialRecord(
        {"scheme": "s2"}, decisions.FEASIBLE, stage="full", objective=2 * GIB, duplicate_of=2, number=4
    ),
    TrialRecord({"scheme": "s5"}, decisions.FAILED, error="RuntimeError: boom", number=5),
]


def test_counts_leave_repeats_apart():
    assert counts(FOUND) == {
        "trials": 6,
        "trials_complete": 3,
        "trials_feasible": 2,
        "trials_pruned_floor": 1,
        "trials_pruned_size": 0,
        "trials_failed": 1,
        "trials_refused": 0,
        "trials_repeated": 1,
        "evaluations_low": 2,  # trials 1 and 2 (trial 2 then in full)
        "evaluations_full": 2,  # trial 0's was reused
        "evaluations_reused": 1,
        "full_evaluations_saved": 1,
    }
    refused = TrialRecord({"scheme": "s6"}, decisions.REFUSED, error="cannot go together", number=6)
    more = counts([*FOUND, refused])
    assert more["trials"] == 7 and more["trials_refused"] == 1 and more["trials_failed"] == 1


def test_table_rows(make_plan):
    lines = table(FOUND, make_plan().search).splitlines()
    assert lines[0].startswith("| trial | configuration | size (disk_bytes) | accuracy | recovery |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|"
    assert (
        lines[3]
        == "| 1 | scheme=s1 | 1.5000 GiB | 0.300 ± 0.020 | - | 0.270 | low | pruned: below floor | l1 |"
    )
    assert lines[6].endswith("| feasible (= trial 2) | - |")
    assert lines[7].endswith("| failed: RuntimeError: boom | - |")


def test_summary_names_the_best_and_how_to_rerun_it(make_plan):
    text = summary(FOUND, make_plan(low_limit=4))
    assert "6 trials: 3 fully evaluated (2 feasible), 1 pruned below the floor" in text
    assert (
        "evaluations: 2 at 4 items, 2 full, 1 reused from MLflow; 1 full evaluations saved by pruning" in text
    )
    best = next(x for x in text.splitlines() if x.startswith("best: "))
    assert best == (
        "best: trial 2 scheme=s2: 2.0000 GiB, accuracy 0.550 (lower bound 0.520 ≥ floor 0.5), run r2"
    )
    assert "reproduce: python run.py seed=1 scheme=s2" in text
    # The front: trial 0 (smallest) and 2 (more accurate than anything smaller); 3 is dominated by 2.
    front = [x.split(" | ")[0] for x in text.splitlines() if x.startswith("| ") and "trial" not in x]
    assert front == ["| 0", "| 2"]


def test_summary_without_a_feasible_trial_lists_the_closest(make_plan):
    text = summary(FOUND[:2], make_plan())
    assert "best: " not in text and "reproduce: " not in text
    assert "no configuration clears the floor (accuracy 90% lower bound ≥ 0.5) in 2 trials; closest:" in text
    assert text.splitlines()[-2:] == [
        "  trial 0 scheme=s0: lower bound 0.370, accuracy 0.400 (full evaluation, infeasible)",
        "  trial 1 scheme=s1: lower bound 0.270, accuracy 0.300 (low evaluation, pruned: below floor)",
    ]
