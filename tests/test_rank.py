"""Ranking rules on hand-made frames, each expected value worked out by hand from the numbers in the frame."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from quantsweep.results import rank


def _frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["run_id", "baseline_run_id", "status", "disk_gib", "accuracy", "accuracy_stderr"]
    return pd.DataFrame(rows, columns=cols)


def test_pareto_on_a_handmade_frame():
    df = _frame(
        [
            ("small", "b", "FINISHED", 1.0, 0.50, 0.01),
            ("mid", "b", "FINISHED", 2.0, 0.60, 0.01),
            ("mid-twin", "b", "FINISHED", 2.0, 0.60, 0.01),  # equal in both: neither dominates
            ("worse", "b", "FINISHED", 3.0, 0.60, 0.01),  # as accurate as mid, larger: dominated
            ("best", "b", "FINISHED", 4.0, 0.70, 0.01),
            ("failed", "b", "FAILED", 0.5, 0.90, 0.01),  # not finished: neither flagged nor dominating
            ("other-eval", "c", "FINISHED", 5.0, 0.40, 0.01),  # another baseline: compared with nobody
        ]
    )
    flags = dict(zip(df["run_id"], rank.pareto_flags(df), strict=True))
    assert flags == {
        "small": True,
        "mid": True,
        "mid-twin": True,
        "worse": False,
        "best": True,
        "failed": False,
        "other-eval": True,
    }


def test_ties_on_a_handmade_frame():
    # combined stderr of a and b is hypot(0.25, 0) = 0.25 exactly: a difference of 0.25 is not a tie
    df = _frame(
        [
            ("a", "b", "FINISHED", 1.0, 0.5, 0.25),
            ("b", "b", "FINISHED", 2.0, 0.75, 0.0),
            ("c", "b", "FINISHED", 3.0, 0.625, math.nan),  # no stderr: counts as 0
            ("d", "x", "FINISHED", 3.0, 0.5, 0.25),  # same numbers as a, other baseline: not compared
            ("e", "b", "KILLED", 3.0, 0.5, 0.25),
        ]
    )
    tied = dict(zip(df["run_id"], rank.ties(df), strict=True))
    assert tied == {"a": ["c"], "b": [], "c": ["a"], "d": [], "e": []}


def test_gpus_on_a_handmade_frame():
    # cards of 0.5 GB hold 500,000,000 bytes: 0.25 GiB = 268,435,456 bytes needs 1, 0.5 GiB = 536,870,912
    # bytes 2, 1.5 GiB = 1,610,612,736 bytes 4 (3.2 cards' worth); no estimate, no count
    df = pd.DataFrame({"weights_vram_gib": [0.25, 0.5, 1.5, math.nan]})
    got = rank.with_gpus(df, 0.5)
    assert list(got["gpus_needed"].astype(object)) == [1, 2, 4, pd.NA]
    assert (got["gpu_mem_gb"] == 0.5).all()
    with pytest.raises(ValueError, match="gpu_mem_gb must be positive"):
        rank.with_gpus(df, 0)


def test_floor_rejudges_points_on_what_each_run_names():
    df = pd.DataFrame(
        {
            "role": ["baseline", "point", "point", "point", "point"],
            "floor_on": [None, "recovery", "recovery", "accuracy", "recovery"],
            "recovery_pct": [100.0, 95.0, 90.0, 50.0, math.nan],
            "accuracy": [0.60, 0.57, 0.54, 0.30, math.nan],
            "floor": [math.nan, 0.97, 0.97, 0.97, 0.97],
            "passed": pd.array([pd.NA, False, False, False, pd.NA], dtype="boolean"),
        }
    )
    judged = rank.with_floor(df, 0.92)
    # 95 % ≥ 92 %, 90 % < 92 %, accuracy 0.30 < 0.92, nothing measured: no verdict; baselines untouched
    assert list(judged["passed"].astype(object)) == [pd.NA, True, False, False, pd.NA]
    assert math.isnan(judged["floor"].iloc[0]) and (judged["floor"].iloc[1:] == 0.92).all()
    with pytest.raises(ValueError, match=r"floor=1.5 is outside \[0, 1\]"):
        rank.with_floor(df, 1.5)
