"""Accuracy against size on disk, one panel per model: the trade-off a leaderboard table cannot show.

Drawn with matplotlib's Agg canvas directly (no pyplot), so it works headless and leaves the caller's
backend alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from quantsweep.floor import floor_accuracy
from quantsweep.results.rank import comparable, suite_tasks


def _floor_lines(ax: Axes, points: pd.DataFrame) -> None:
    """The accuracy a point must reach (`floor_accuracy`): floor × baseline accuracy when judged on
    recovery, else the floor; none drawn on recovery when the baseline accuracy is unknown."""
    judged = points.dropna(subset=["floor"])
    for (floor, on, base), _ in judged.groupby(["floor", "floor_on", "baseline_accuracy"], dropna=False):
        y = floor_accuracy(floor, on, None if pd.isna(base) else base)
        if y is None:
            continue
        if on == "accuracy":
            text = f"floor: accuracy ≥ {floor:.3f} (floor_on={on})"
        else:
            text = f"floor: {floor:.0%} recovery = {floor:g} × baseline {base:.3f} = {y:.3f}"
        ax.axhline(y, color="tab:red", linestyle="--", linewidth=1, label=text)


def _panel(ax: Axes, group: pd.DataFrame, title: str) -> None:
    """One model's rows: the ones the table ranks (finished, measured), the front, the floor."""
    ok = group[comparable(group)]
    for role, style in {"baseline": ("s", "tab:blue"), "point": ("o", "tab:orange")}.items():
        rows = ok[ok["role"] == role]
        if rows.empty:
            continue
        marker, color = style
        ax.errorbar(
            rows["disk_gib"],
            rows["accuracy"],
            yerr=rows["accuracy_stderr"].fillna(0),
            fmt=marker,
            color=color,
            capsize=3,
            label=f"{role} (± 1 stderr)",
        )
        for _, r in rows.iterrows():
            ax.annotate(
                r["label"],
                (r["disk_gib"], r["accuracy"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
    front = ok[ok["pareto"]].sort_values("disk_gib")
    if not front.empty:
        # Held to the largest size shown: nothing larger is more accurate than the front's last point.
        x = [*front["disk_gib"], ok["disk_gib"].max()]
        y = [*front["accuracy"], front["accuracy"].iloc[-1]]
        ax.step(x, y, where="post", color="tab:green", label="Pareto front")
    _floor_lines(ax, ok[ok["role"] == "point"])
    metric = ", ".join(sorted(set(ok["metric"].dropna()))) or "accuracy"
    ax.set(title=title, xlabel="size on disk (GiB)", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _recovery_panel(ax: Axes, group: pd.DataFrame, tasks: list[str], title: str) -> None:
    """A suite's recovery against size: the mean ± its stderr, the worst task, each task faintly; the
    floor where it is on the suite's recovery."""
    ok = group[comparable(group)].sort_values("disk_gib")
    ax.errorbar(
        ok["disk_gib"],
        ok["recovery_mean_pct"],
        yerr=ok["recovery_mean_pct_stderr"].fillna(0),
        fmt="o",
        color="tab:orange",
        capsize=3,
        label="mean recovery (± 1 stderr)",
    )
    ax.plot(ok["disk_gib"], ok["recovery_worst_pct"], "v", color="tab:red", label="worst task")
    for task in tasks:
        column = f"recovery_pct:{task}"
        if column in ok and ok[column].notna().any():
            ax.plot(ok["disk_gib"], ok[column], ".", alpha=0.4, label=task)
    floors = ok[(ok["role"] == "point") & ok["floor"].notna()]
    for (floor, on), _ in floors.groupby(["floor", "floor_on"]):
        if on != "accuracy":
            ax.axhline(
                100 * floor, color="tab:red", linestyle="--", linewidth=1, label=f"floor: {floor:.0%} ({on})"
            )
    ax.set(title=f"{title}: suite recovery", xlabel="size on disk (GiB)", ylabel="recovery (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def figure(df: pd.DataFrame) -> Figure:
    """A panel per model (per baseline when a model was evaluated two ways), on an Agg canvas; with a suite
    of several tasks, its recovery panel beside each."""
    tasks = suite_tasks(df)
    groups = list(df.groupby(["model", "baseline_run_id"], sort=True))
    per_group = 2 if tasks else 1
    cols = 2 if tasks else min(2, len(groups))
    rows = math.ceil(len(groups) * per_group / cols)
    fig = Figure(figsize=(7 * cols, 4.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for i, ((model, baseline), group) in enumerate(groups):
        several = df.loc[df["model"] == model, "baseline_run_id"].nunique() > 1
        title = f"{model} (baseline {baseline[:8]})" if several else str(model)
        _panel(axes[i * per_group], group, title)
        if tasks:
            _recovery_panel(axes[i * per_group + 1], group, tasks, title)
    for ax in axes[len(groups) * per_group :]:
        ax.set_visible(False)
    return fig


def accuracy_vs_size(df: pd.DataFrame, stem: Path) -> dict[str, Path]:
    """The figure written as `<stem>.png` and `<stem>.svg`; returns {"png": path, "svg": path}."""
    fig = figure(df)
    paths = {fmt: stem.with_suffix(f".{fmt}") for fmt in ("png", "svg")}
    for fmt, path in paths.items():
        fig.savefig(path, format=fmt, dpi=120)
    return paths
