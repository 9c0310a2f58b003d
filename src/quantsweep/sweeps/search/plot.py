"""The search's picture: accuracy against size for every fully evaluated trial, the Pareto front, the best
configuration and the floor, as a PNG logged on the study's parent run."""

from __future__ import annotations

import math
from pathlib import Path

from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.objectives import Objective


def plot(found: list[TrialRecord], objective: Objective, floor_y: float | None, z: float, path: Path) -> Path:
    """Accuracy (± z·stderr) against size; drawn on matplotlib's Agg canvas directly, headless and without
    touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = decisions.distinct_full(found)

    def xy(group: list[TrialRecord]) -> tuple[list[float], list[float]]:
        """Sizes in the objective's unit and accuracies (fully evaluated trials have both)."""
        return [(r.objective or 0.0) / objective.scale for r in group], [r.accuracy or 0.0 for r in group]

    fig = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for verdict, color in ((decisions.FEASIBLE, "tab:green"), (decisions.INFEASIBLE, "tab:gray")):
        group = [r for r in rows if r.verdict == verdict]
        if group:
            ax.errorbar(
                *xy(group),
                yerr=[z * (r.accuracy_stderr or 0.0) for r in group],
                fmt="o",
                color=color,
                capsize=3,
                label=f"{verdict} (± z·stderr)",
            )
    for r, x, y in zip(rows, *xy(rows), strict=True):
        ax.annotate(str(r.number), (x, y), xytext=(4, 4), textcoords="offset points")
    front = decisions.pareto(found)
    if front:
        ax.step(*xy(front), where="post", color="tab:blue", label="Pareto front")
    top = decisions.best(found)
    if top is not None:
        ax.plot(*xy([top]), "*", color="gold", markersize=18, label="best")
    if floor_y is not None and math.isfinite(floor_y):
        ax.axhline(floor_y, color="tab:red", linestyle="--", linewidth=1, label="floor")
    ax.set_xlabel(objective.axis)
    ax.set_ylabel("accuracy")
    ax.set_title("Search: accuracy against size, fully evaluated trials")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
