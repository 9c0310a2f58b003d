"""Recovery on numbers: higher- and lower-is-better metrics, the paired stderrs (Agresti–Min adjusted for
scores in [0, 1], per document for perplexities), and the floor judged on each floor_on mode. Every
expected value is computed here from its formula, independently of quantsweep.recovery."""

from __future__ import annotations

import math
import random

import pytest

from quantsweep import floor
from quantsweep.errors import ConfigError
from quantsweep.recovery import Scored, paired_stderr, task_recovery


def acc(items: dict[int, float]) -> Scored:
    return Scored(sum(items.values()) / len(items), None, True, items)


def agresti_min(q: dict[int, float], b: dict[int, float]) -> float:
    """The delta-method stderr of Σq/Σb with half an item added at (1,1), (1,0), (0,1) and (0,0)."""
    rows = [(q[d], b[d], 1.0) for d in q] + [(1, 1, 0.5), (1, 0, 0.5), (0, 1, 0.5), (0, 0, 0.5)]
    n = sum(w for *_, w in rows)
    qm, bm = sum(w * x for x, _, w in rows) / n, sum(w * y for _, y, w in rows) / n
    r = qm / bm
    return math.sqrt(sum(w * (x - r * y) ** 2 for x, y, w in rows) / (n * (n - 1))) / bm


@pytest.mark.parametrize("n", [20, 50, 10_000])
def test_full_agreement_is_not_certainty_and_narrows_with_the_item_count(n):
    """Both models right on the same half of n items: recovery exactly 1, unadjusted stderr 0; the
    adjusted one is sqrt(1 / ((n + 2)(n + 1))) / ((n/2 + 1) / (n + 2)), about 2 / n."""
    items = {d: float(d % 2) for d in range(n)}
    r = task_recovery(acc(items), acc(dict(items)))
    assert r.value == 1.0 and r.method == "paired" and r.adjusted
    assert paired_stderr(items, dict(items)) == 0.0
    expected = math.sqrt(1 / ((n + 2) * (n + 1))) / ((n / 2 + 1) / (n + 2))
    assert r.stderr == pytest.approx(expected) == pytest.approx(agresti_min(items, items))
    assert r.stderr == pytest.approx(2 / n, rel=0.1)
    lower = floor.judge({"recovery": r.value, "recovery_stderr": r.stderr}, "recovery", floor.z_value(0.9))
    assert lower is not None and lower.lower < 1.0


def test_disagreements_pair_with_the_adjustment_and_tend_to_the_plain_stderr():
    rng = random.Random(0)
    b = {d: float(rng.random() < 0.6) for d in range(4000)}
    q = {d: (1.0 - v if rng.random() < 0.05 else v) for d, v in b.items()}
    r = task_recovery(acc(q), acc(b))
    assert r.value == pytest.approx(sum(q.values()) / sum(b.values()))
    assert r.stderr == pytest.approx(agresti_min(q, b))
    assert r.stderr == pytest.approx(paired_stderr(q, b), rel=0.01)
    assert r.independent is None  # no lm-eval stderrs given here


def test_perplexity_recovery_is_baseline_over_quantized_paired_per_document():
    rng = random.Random(1)
    words = {d: float(rng.randint(20, 80)) for d in range(12)}
    base_ll = {d: -3.0 * w + rng.gauss(0, 2) for d, w in words.items()}
    quant_ll = {d: v - 0.05 * words[d] + rng.gauss(0, 1) for d, v in base_ll.items()}

    def ppl(ll: dict[int, float]) -> float:
        return math.exp(-sum(ll.values()) / sum(words.values()))

    b = Scored(ppl(base_ll), None, False, base_ll, words)
    q = Scored(ppl(quant_ll), None, False, quant_ll, words)
    r = task_recovery(q, b)
    assert r.value == pytest.approx(ppl(base_ll) / ppl(quant_ll)) and r.value < 1  # worse: below 100 %
    d = {k: quant_ll[k] - base_ll[k] for k in words}
    slope = sum(d.values()) / sum(words.values())
    assert r.value == pytest.approx(math.exp(slope))
    n, w_mean = len(d), sum(words.values()) / len(d)
    se_log = math.sqrt(sum((d[k] - slope * words[k]) ** 2 for k in d) / (n * (n - 1))) / w_mean
    assert r.method == "paired" and not r.adjusted
    assert r.stderr == pytest.approx(r.value * se_log)
    # unchanged model: exactly 100 %
    same = task_recovery(b, Scored(b.value, None, False, dict(base_ll), words))
    assert same.value == pytest.approx(1.0)


def test_bits_per_byte_and_lower_is_better_means():
    nbytes = {0: 100.0, 1: 150.0, 2: 120.0}
    base = {0: -60.0, 1: -100.0, 2: -70.0}
    quant = {0: -66.0, 1: -101.0, 2: -80.0}

    def bpb(ll: dict[int, float]) -> float:
        return -sum(ll.values()) / sum(nbytes.values()) / math.log(2)

    r = task_recovery(
        Scored(bpb(quant), None, False, quant, nbytes), Scored(bpb(base), None, False, base, nbytes)
    )
    assert r.value == pytest.approx(sum(base.values()) / sum(quant.values())) and r.method == "paired"
    # a lower-is-better mean (an error rate): baseline / quantized, adjusted since the scores are in [0, 1]
    err_b, err_q = {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0}, {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}
    low = task_recovery(Scored(0.75, None, False, err_q), Scored(0.5, None, False, err_b))
    assert low.value == pytest.approx(0.5 / 0.75) and low.adjusted
    assert low.stderr == pytest.approx(agresti_min(err_b, err_q))


def test_items_that_do_not_make_the_logged_value_fall_back_to_independent_stderrs():
    """A corpus-level metric (BLEU): per-item values whose mean is not the score cannot be paired."""
    q = Scored(0.30, 0.02, True, {0: 0.1, 1: 0.2, 2: 0.3})
    b = Scored(0.40, 0.03, True, {0: 0.1, 1: 0.2, 2: 0.3})
    r = task_recovery(q, b)
    expected = 0.75 * math.hypot(0.02 / 0.30, 0.03 / 0.40)
    assert r.method == "independent" and r.stderr == pytest.approx(expected) == pytest.approx(r.independent)


SUITE = {
    "accuracy": 0.40,
    "accuracy_stderr": 0.02,
    "recovery": 0.99,
    "recovery_stderr": 0.01,
    "recovery_mean": 0.97,
    "recovery_mean_stderr": 0.008,
    "recovery.mc": 0.99,
    "recovery_stderr.mc": 0.01,
    "recovery.ppl": 0.95,
    "recovery_stderr.ppl": 0.002,
}


@pytest.mark.parametrize(
    ("floor_on", "value", "lower", "upper"),
    [
        ("recovery", 0.99, 0.99 - 2 * 0.01, 0.99 + 0.01),
        ("mean", 0.97, 0.97 - 2 * 0.008, 0.97 + 0.008),
        # worst: the lowest value, and the lowest of every task's bounds (here mc's lower, ppl's upper)
        ("worst", 0.95, min(0.99 - 0.02, 0.95 - 0.004), min(0.99 + 0.01, 0.95 + 0.002)),
        ("task:mc", 0.99, 0.99 - 0.02, 0.99 + 0.01),
        ("accuracy", 0.40, 0.40 - 0.04, 0.40 + 0.02),
    ],
)
def test_each_floor_on_mode_is_judged_on_its_bound(floor_on, value, lower, upper):
    b = floor.judge(SUITE, floor_on, 2.0, 1.0)
    assert b is not None and (b.value, b.lower, b.upper) == pytest.approx((value, lower, upper))


def test_runs_from_before_suites_judge_mean_and_worst_on_recovery():
    old = {"recovery": 0.98, "recovery_stderr": 0.01}
    for mode in ("mean", "worst"):
        assert floor.judge(old, mode, 1.0).lower == pytest.approx(0.97)
    assert floor.judge(old, "task:mc", 1.0) is None


def test_floor_on_is_checked_against_the_suite():
    floor.check_floor(0.97, "task:ppl", "eval", ["mc", "ppl"])
    with pytest.raises(
        ConfigError, match="eval.floor_on='task:gsm8k' names a task that is not in eval.tasks"
    ):
        floor.check_floor(0.97, "task:gsm8k", "eval", ["mc", "ppl"])
    with pytest.raises(ConfigError, match="choose one of recovery, mean, worst, accuracy, task:<name>"):
        floor.check_floor(0.97, "median", "search")
