"""MLflow naming and arithmetic helpers."""

from __future__ import annotations

import math

import pytest

from quantsweep import recovery, tracking
from quantsweep.evaluation.harness import clean_metrics


def test_lm_eval_metric_names_are_cleaned_and_non_numbers_dropped():
    raw = {
        "results": {
            "hellaswag": {
                "alias": "hellaswag",
                "acc,none": 0.5,
                "acc_stderr,none": "N/A",
                "acc_norm,none": 0.6,
                "exact_match,strict-match": 0.1,
            }
        }
    }
    assert clean_metrics(raw) == {"hellaswag": {"acc": 0.5, "acc_norm": 0.6, "exact_match_strict-match": 0.1}}
    assert tracking.metric_name("mmlu,acc (x)") == "mmlu_acc _x_"


def test_recovery_and_its_uncertainty():
    ratio, err = recovery.recovery(0.45, 0.03, 0.5, 0.03)
    assert ratio == pytest.approx(0.9)
    assert err == pytest.approx(0.9 * math.hypot(0.03 / 0.45, 0.03 / 0.5))
    assert recovery.recovery(0.45, None, 0.5, 0.03) == (pytest.approx(0.9), None)


def test_fingerprint_is_order_independent_and_value_sensitive():
    assert tracking.fingerprint({"a": 1, "b": 2}) == tracking.fingerprint({"b": 2, "a": 1})
    assert tracking.fingerprint({"a": 1}) != tracking.fingerprint({"a": 2})


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": "[1, 2]", "d": "{}"}
