"""The Pareto front of size against accuracy: one rule for the leaderboard and the search report."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_mask(sizes: Sequence[float], scores: Sequence[float]) -> list[bool]:
    """True where no other point is both no larger and no less accurate, and strictly better in one of
    the two (points equal in both do not dominate each other)."""
    pairs = list(zip(sizes, scores, strict=True))
    return [
        not any(s <= size and a >= score and (s < size or a > score) for s, a in pairs)
        for size, score in pairs
    ]
