"""Recovery: how much of its baseline's score a quantized model keeps, with a standard error.

100% means unchanged, below 100% worse, whichever way the metric points: quantized / baseline for a
higher-is-better metric, baseline / quantized for a lower-is-better one (a perplexity: 100 × exp(−Δ mean
log-likelihood per word); bits per byte: the ratio of the two models' total log-likelihoods).

The standard error is paired over the items both runs scored when their per-item scores reproduce the
logged aggregate (items both models get right or wrong add no noise), else both stderrs are propagated as
if independent. Per-item scores bounded in [0, 1] (accuracy, exact match) get the Agresti–Min adjustment,
half a pseudo-item in each cell of the agree/disagree table, so that models agreeing on every item get an
interval whose width shrinks with the number of items (about 1 / (n × baseline mean)) instead of zero.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

# {item: score} for one task's one metric; items are doc ids, or (subtask, doc id) within a group.
Items = dict[Hashable, float]
# How lm-eval aggregates a metric's per-item values (the ones quantsweep can pair).
KINDS = ("mean", "perplexity", "weighted_perplexity", "bits_per_byte")
LOWER_IS_BETTER_KINDS = ("perplexity", "weighted_perplexity", "bits_per_byte")
# Agresti & Min (2005): half an item in each of the four cells (both right, both wrong, each disagreement).
PSEUDO_ITEMS = ((1.0, 1.0, 0.5), (1.0, 0.0, 0.5), (0.0, 1.0, 0.5), (0.0, 0.0, 0.5))


@dataclass(frozen=True)
class Scored:
    """One run's score on one task's metric, with what pairing needs: its per-item values (log-likelihoods
    for perplexities) and, for weighted aggregates, each item's weight (words or bytes)."""

    value: float
    stderr: float | None
    higher_is_better: bool
    items: Items | None = None
    weights: Items | None = None


@dataclass(frozen=True)
class Recovery:
    value: float
    stderr: float | None
    # paired | independent; None when there is no stderr at all.
    method: str | None
    independent: float | None
    # Whether the paired stderr carries the Agresti–Min pseudo-items (per-item scores in [0, 1]).
    adjusted: bool = False


def recovery(
    quantized: float, q_err: float | None, baseline: float, b_err: float | None
) -> tuple[float, float | None]:
    """quantized / baseline, with its standard error by first-order propagation of both stderrs as if
    independent: what is left when per-item scores are missing. Both are scored on the same items, so the
    errors are positively correlated and this overstates the uncertainty."""
    if baseline == 0:
        return math.nan, None
    ratio = quantized / baseline
    if q_err is None or b_err is None or quantized == 0:
        return ratio, None
    return ratio, ratio * math.hypot(q_err / quantized, b_err / baseline)


def _ratio_stderr(rows: list[tuple[float, float, float]]) -> float | None:
    """Standard error of Σwx / Σwy over rows (x, y, w), by the delta method on the residuals x − R·y."""
    total = sum(w for _, _, w in rows)
    y_mean = sum(w * y for _, y, w in rows) / total if total else 0.0
    if total <= 1 or y_mean <= 0:
        return None
    ratio = sum(w * x for x, _, w in rows) / (total * y_mean)
    residuals = sum(w * (x - ratio * y) ** 2 for x, y, w in rows)
    return math.sqrt(residuals / (total * (total - 1))) / y_mean


def paired_stderr(quantized: Items, baseline: Items, adjusted: bool = False) -> float | None:
    """Standard error of mean(q) / mean(b) over the same items (the delta method on q_i − R·b_i).
    `adjusted` adds the Agresti–Min pseudo-items (for scores in [0, 1]). None unless both scored the same
    items (at least 2) and the baseline's mean is positive."""
    if quantized.keys() != baseline.keys() or len(quantized) < 2:
        return None
    if sum(baseline.values()) <= 0:
        return None
    rows = [(quantized[d], baseline[d], 1.0) for d in quantized]
    return _ratio_stderr(rows + list(PSEUDO_ITEMS) if adjusted else rows)


def aggregate(kind: str, items: Items, weights: Items | None = None) -> float:
    """The task-level value lm-eval computes from these per-item values."""
    values = list(items.values())
    if kind == "mean":
        return sum(values) / len(values)
    if kind == "perplexity":
        return math.exp(-sum(values) / len(values))
    total = sum((weights or {}).values())
    if kind == "weighted_perplexity":
        return math.exp(-sum(values) / total)
    return -sum(values) / total / math.log(2)  # bits_per_byte


def kind_of(scored: Scored) -> str | None:
    """How this run's per-item values make its logged value, or None when none of the known aggregations
    reproduces it (a corpus-level metric such as BLEU: no per-item decomposition to pair)."""
    if not scored.items or len(scored.items) < 2:
        return None
    kinds = ("weighted_perplexity", "bits_per_byte") if scored.weights else ("mean", "perplexity")
    for kind in kinds:
        try:
            found = aggregate(kind, scored.items, scored.weights)
        except (OverflowError, ZeroDivisionError):
            continue
        if math.isclose(found, scored.value, rel_tol=1e-6, abs_tol=1e-9):
            return kind
    return None


def _independent(q: Scored, b: Scored, higher: bool) -> tuple[float, float | None]:
    if higher:
        return recovery(q.value, q.stderr, b.value, b.stderr)
    return recovery(b.value, b.stderr, q.value, q.stderr)


def _paired(q: Scored, b: Scored, kind: str, higher: bool, value: float) -> tuple[float | None, bool]:
    """The paired stderr of the recovery `value`, and whether the Agresti–Min adjustment was applied."""
    qi, bi = q.items or {}, b.items or {}
    if kind == "mean":
        bounded = all(0.0 <= v <= 1.0 for v in (*qi.values(), *bi.values()))
        num, den = (qi, bi) if higher else (bi, qi)
        return paired_stderr(num, den, adjusted=bounded), bounded
    if kind == "bits_per_byte":  # baseline bpb / quantized bpb = Σ ll_b / Σ ll_q
        return paired_stderr({d: -v for d, v in bi.items()}, {d: -v for d, v in qi.items()}), False
    # Perplexities: recovery = exp(Σ(ll_q − ll_b) / Σw); se = recovery × se(Σd / Σw).
    weights = q.weights if kind == "weighted_perplexity" else None
    rows = [(qi[d] - bi[d], (weights or {}).get(d, 1.0), 1.0) for d in qi]
    log_se = _ratio_stderr(rows)
    return (None if log_se is None else value * log_se), False


def task_recovery(q: Scored, b: Scored) -> Recovery:
    """Recovery of one task's metric (see the module docstring), paired when both runs' per-item values
    reproduce their logged values by the same aggregation over the same items."""
    kind, base_kind = kind_of(q), kind_of(b)
    higher = q.higher_is_better and kind not in LOWER_IS_BETTER_KINDS
    value, independent = _independent(q, b, higher)
    pairable = (
        kind is not None
        and kind == base_kind
        and (q.items or {}).keys() == (b.items or {}).keys()
        and (kind not in ("weighted_perplexity", "bits_per_byte") or q.weights == b.weights)
    )
    if not pairable or not math.isfinite(value):
        return Recovery(value, independent, None if independent is None else "independent", independent)
    assert kind is not None
    stderr, adjusted = _paired(q, b, kind, higher, value)
    if stderr is None:
        return Recovery(value, independent, None if independent is None else "independent", independent)
    return Recovery(value, stderr, "paired", independent, adjusted)


def item_stderr(scored: Scored) -> float | None:
    """A weighted aggregate's own stderr from its per-item values (lm-eval reports none for perplexities):
    the delta method on Σ(−ll) / Σw, carried through exp (perplexity) or 1/ln 2 (bits per byte)."""
    kind = kind_of(scored)
    if kind not in LOWER_IS_BETTER_KINDS or scored.items is None:
        return None
    weights = scored.weights or {}
    se = _ratio_stderr([(-v, weights.get(d, 1.0), 1.0) for d, v in scored.items.items()])
    if se is None:
        return None
    return se / math.log(2) if kind == "bits_per_byte" else scored.value * se
