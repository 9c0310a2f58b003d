"""`python -m quantsweep agree a=<run id> b=<run id>`: how far two evaluations of the same items agree.

Made for the most common doubt about lm-eval with quantized models, HF against vLLM on one checkpoint: a sweep
over `eval.backend=hf,vllm` scores the same checkpoint with both (the checkpoint is quantized once), and this
compares the two runs' per-item scores (their `items.json`). Per task and metric: the items both scored, the
share of them on which the two scores are equal, and the mean difference b − a with its paired standard error
(the standard deviation of the per-item differences over √n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quantsweep import keyvalue, tracking
from quantsweep.config import TrackingConfig
from quantsweep.errors import ConfigError, fail
from quantsweep.tables import fixed_width, pm


@dataclass(frozen=True)
class Agreement:
    task: str
    metric: str
    items: int
    # Share of the common items scored equally by both runs.
    agree: float
    # mean(b) − mean(a) over the common items, and its paired standard error.
    difference: float
    stderr: float


def compare(a: dict[int, float], b: dict[int, float]) -> tuple[int, float, float, float] | None:
    """(items, agreement, mean difference b − a, paired stderr) over the items both scored; None if < 2."""
    common = sorted(a.keys() & b.keys())
    n = len(common)
    if n < 2:
        return None
    diffs = [b[d] - a[d] for d in common]
    mean = sum(diffs) / n
    variance = sum((x - mean) ** 2 for x in diffs) / (n - 1)
    return n, sum(x == 0 for x in diffs) / n, mean, math.sqrt(variance / n)


def agreements(a_run: str, b_run: str) -> list[Agreement]:
    """Every task and metric both runs logged per-item scores for."""
    a, b = tracking.load_items(a_run), tracking.load_items(b_run)
    if not a or not b:
        missing = a_run if not a else b_run
        raise ConfigError(
            f"run {missing} has no per-item scores (items.json): evaluate it again with this version"
        )
    found = []
    for task in sorted(a.keys() & b.keys()):
        for metric in sorted(a[task].keys() & b[task].keys()):
            result = compare(a[task][metric], b[task][metric])
            if result is not None:
                found.append(Agreement(task, metric, *result))
    if not found:
        raise ConfigError(f"runs {a_run} and {b_run} share no task, metric and items to compare")
    return found


def table(found: list[Agreement]) -> str:
    rows = [
        [f.task, f.metric, str(f.items), f"{f.agree:.1%}", pm(f.difference, f.stderr, digits=4)]
        for f in found
    ]
    header = ["task", "metric", "items", "agree", "b − a ± paired se"]
    return fixed_width(header, rows, right=[False, False, True, True, True])


def main(argv: list[str]) -> int:
    defaults = {"tracking_uri": TrackingConfig().uri, "a": None, "b": None}
    try:
        args, _ = keyvalue.parse(
            argv, {"tracking_uri": str, "a": str, "b": str}, defaults, "a=<MLflow run id>"
        )
        if not args["a"] or not args["b"]:
            raise ConfigError("give both runs: a=<MLflow run id> b=<MLflow run id>")
        import mlflow

        mlflow.set_tracking_uri(args["tracking_uri"])
        print(table(agreements(args["a"], args["b"])))
    except ConfigError as exc:
        fail(str(exc), command="agree")
    return 0
