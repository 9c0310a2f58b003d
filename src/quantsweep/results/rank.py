"""Ranking a leaderboard: which rows compare, the Pareto front, statistical ties, GPUs, pass/fail.

Rows are compared only with rows scored against the same baseline run (same model and eval settings,
which is per model unless one model was evaluated two ways): accuracies from different evaluations are
not comparable. Every function takes and returns the DataFrame `query.collect` builds.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from quantsweep.floor import TASK_RECOVERY, TASK_RECOVERY_STDERR, judge, z_value
from quantsweep.results import kv
from quantsweep.results.pareto import pareto_mask
from quantsweep.sizing import formulas
from quantsweep.tables import GIB

GPU_RULE = (
    "GPUs = ceil(estimated weights vRAM (stored bytes x 1.2) / (GPU GB x 1e9)): sizing's total rule "
    "(gpus_needed_total) applied to the weights alone, KV cache not included"
)
TIE_RULE = (
    "≈ #k: accuracy differs from row #k's (same baseline) by less than sqrt(se1² + se2²), "
    "their combined standard error: statistically tied"
)
PARETO_RULE = (
    "Pareto ✓: no other row of the same model (same baseline) is both no larger on disk and no less "
    "accurate, and strictly better in one"
)


def comparable(df: pd.DataFrame) -> pd.Series:
    """Rows whose numbers can be ranked: finished, with an accuracy and a size."""
    return (df["status"] == "FINISHED") & df["accuracy"].notna() & df["disk_gib"].notna()


def suite_tasks(df: pd.DataFrame) -> list[str]:
    """The tasks of the suites in the table, when some row's suite has more than one (else none: a
    one-task table's accuracy and recovery columns already say it all)."""
    if "suite" not in df or not (df["suite"].fillna("").str.count(", ") > 0).any():
        return []
    return [c.removeprefix("recovery_pct:") for c in df.columns if c.startswith("recovery_pct:")]


def pareto_flags(df: pd.DataFrame) -> pd.Series:
    """`pareto_mask` within each baseline's comparable rows; rows that are not comparable are False."""
    flags = pd.Series(False, index=df.index)
    for _, group in df[comparable(df)].groupby("baseline_run_id"):
        flags[group.index] = pareto_mask(group["disk_gib"].tolist(), group["accuracy"].tolist())
    return flags


def ties(df: pd.DataFrame) -> pd.Series:
    """Run ids each row is statistically tied with: same baseline and |acc₁ − acc₂| < sqrt(se₁² + se₂²).

    The stderrs are lm-eval's (sample standard error of the mean over items); a missing one counts as
    zero. Both runs are scored on the same items, so the errors are positively correlated and this
    combined error is conservative: it calls more pairs tied, never fewer.
    """
    tied: dict[Any, list[str]] = {i: [] for i in df.index}
    for _, group in df[comparable(df)].groupby("baseline_run_id"):
        acc, se = group["accuracy"], group["accuracy_stderr"].fillna(0.0)
        for i in group.index:
            close = (acc - acc.at[i]).abs() < (se**2 + se.at[i] ** 2) ** 0.5
            tied[i] = [df.at[j, "run_id"] for j in group.index[close] if j != i]
    return pd.Series(tied, dtype=object)


def with_gpus(df: pd.DataFrame, gpu_mem_gb: float) -> pd.DataFrame:
    """GPUs of `gpu_mem_gb` decimal GB needed for each row's estimated weights vRAM (see GPU_RULE), and
    for it plus the KV cache (`kv.with_gpus_total`)."""
    if gpu_mem_gb <= 0:
        raise ValueError(f"gpu_mem_gb must be positive (e.g. 80 for an H100), got {gpu_mem_gb}")
    gpus = [
        pd.NA if math.isnan(gib) else formulas.gpus_needed_total(gib * GIB, gpu_mem_gb)
        for gib in df["weights_vram_gib"]
    ]
    df = df.assign(gpu_mem_gb=float(gpu_mem_gb), gpus_needed=pd.array(gpus, dtype="Int64"))
    return kv.with_gpus_total(df, gpu_mem_gb)


def _judged(row: pd.Series, floor_on: str) -> float:
    """The lower bound of what `floor_on` names in a leaderboard row, at the run's eval.confidence (its
    point estimate for runs without one), by `floor.judge` as the run itself was judged."""
    names = {"recovery_pct": "recovery", "recovery_mean_pct": "recovery_mean"}
    metrics: dict[str, float] = {
        "accuracy": row.get("accuracy"),
        "accuracy_stderr": row.get("accuracy_stderr"),
    }
    for column, name in names.items():
        metrics[name] = row.get(column, math.nan) / 100
        metrics[f"{name}_stderr"] = row.get(f"{column}_stderr", math.nan) / 100
    for column in row.index:
        if isinstance(column, str) and column.startswith("recovery_pct:") and not pd.isna(row[column]):
            task = column.removeprefix("recovery_pct:")
            metrics[TASK_RECOVERY + task] = row[column] / 100
            metrics[TASK_RECOVERY_STDERR + task] = row.get(f"recovery_pct_stderr:{task}", math.nan) / 100
    clean = {k: float(v) for k, v in metrics.items() if v is not None and not pd.isna(v)}
    confidence = row.get("confidence", math.nan)
    bound = judge(clean, floor_on, z_value(0.5 if pd.isna(confidence) else float(confidence)))
    return math.nan if bound is None else bound.lower


def with_floor(df: pd.DataFrame, floor: float) -> pd.DataFrame:
    """Re-judge every point against another floor, on what each run's floor_on names (`floor.judge`)."""
    if not 0 <= floor <= 1:
        raise ValueError(f"floor={floor} is outside [0, 1]: a fraction of the baseline (or an accuracy)")
    points = df["role"] == "point"
    judged = [
        _judged(r, r["floor_on"]) if isinstance(r["floor_on"], str) else math.nan for _, r in df.iterrows()
    ]
    measured = pd.Series(judged, index=df.index, dtype=float)
    passed = (measured >= floor).astype("boolean").where(points & measured.notna(), pd.NA)
    return df.assign(floor=df["floor"].where(~points, floor), passed=passed)


def ranked(df: pd.DataFrame, gpu_mem_gb: float) -> pd.DataFrame:
    """Sorted by model then size on disk (most accurate first at equal size), with the Pareto flags, the
    ties and the GPU count for this card."""
    df = df.sort_values(["model", "disk_gib", "accuracy"], ascending=[True, True, False], ignore_index=True)
    df["pareto"] = pareto_flags(df)
    df["tied_with"] = ties(df)
    return with_gpus(kv.with_kv(df), gpu_mem_gb)


def adjusted(df: pd.DataFrame, gpu_mem_gb: float, floor: float | None = None) -> pd.DataFrame:
    """The table as exported: GPUs counted for this card, pass/fail against `floor` when one is given."""
    df = with_gpus(df, gpu_mem_gb)
    return df if floor is None else with_floor(df, floor)
