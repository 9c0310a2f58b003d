"""The table printed at the end of a run or sweep: what a practitioner reads first."""

from __future__ import annotations

import json

from quantsweep.outcome import Outcome
from quantsweep.tables import fixed_width, pm
from quantsweep.tracking import DATA_SOURCE

COLUMNS = ("point", "status", "GiB", "accuracy", "recovery", "pass")


def _gib(metrics: dict[str, float]) -> str:
    return f"{metrics['disk_gib']:.3f}" if "disk_gib" in metrics else "-"


def point_row(outcome: Outcome) -> list[str]:
    m, passed = outcome.metrics, outcome.metrics.get("passed")
    return [
        outcome.name,
        outcome.status + (" (reused)" if outcome.reused else ""),
        _gib(m),
        pm(m.get("accuracy"), m.get("accuracy_stderr")),
        pm(m.get("recovery"), m.get("recovery_stderr"), digits=1, scale=100, unit="%"),
        "-" if passed is None else ("yes" if passed else "no"),
    ]


def baseline_row(name: str, metrics: dict[str, float]) -> list[str]:
    return [
        name,
        "baseline",
        _gib(metrics),
        pm(metrics.get("accuracy"), metrics.get("accuracy_stderr")),
        "100%",
        "-",
    ]


def baselines(outcomes: list[Outcome]) -> list[dict]:
    """The distinct baselines the outcomes were compared with, in order of first use."""
    seen: dict[str, dict] = {}
    for o in outcomes:
        if o.baseline and o.baseline["run_id"] not in seen:
            seen[o.baseline["run_id"]] = o.baseline
    return list(seen.values())


def eval_line(params: dict[str, str], tags: dict[str, str]) -> str:
    """How a run was evaluated, from its params and tags: `hellaswag_file, 0-shot, 100 items, from
    file:<path> sha256:<digest>` (or `hub:hellaswag`), with `vllm backend` after the items when not HF."""
    tasks = ", ".join(json.loads(params.get("eval.tasks", "[]")))
    shots, limit = params.get("eval.num_fewshot", "None"), params.get("eval.limit", "None")
    parts = [tasks, "task's default shots" if shots == "None" else f"{shots}-shot"]
    if limit == "None":
        parts.append("every item")
    else:
        parts.append(f"{float(limit):g} items" if float(limit) >= 1 else f"{float(limit):.0%} of the items")
    backend = params.get("eval.backend", "hf")
    if backend != "hf":  # a sweep over eval.backend=hf,vllm: its two baselines told apart
        parts.append(f"{backend} backend")
    source = tags.get(DATA_SOURCE)
    return ", ".join(parts) + (f", from {source}" if source else "")


def _tasks(outcomes: list[Outcome]) -> list[str]:
    """The suite's tasks, in eval.tasks order, when a point logged per-task recoveries for more than one."""
    for o in outcomes:
        logged = [k.removeprefix("recovery.") for k in o.metrics if k.startswith("recovery.")]
        if len(logged) > 1:
            named = json.loads(str(o.params.get("eval.tasks", "[]")))
            return [t for t in named if t in logged] or sorted(logged)
    return []


def suite_table(outcomes: list[Outcome], tasks: list[str]) -> str:
    """Recovery by task, one column per task: each baseline's scores, then each point's recovery ± stderr
    (points numbered as in the table above, so six tasks still fit a terminal)."""
    rows = [["baseline", *(pm(b["metrics"].get(f"score.{t}")) for t in tasks)] for b in baselines(outcomes)]
    for i, o in enumerate(outcomes, 1):
        m = o.metrics
        rows.append(
            [
                f"#{i}",
                *(pm(m.get(f"recovery.{t}"), m.get(f"recovery_stderr.{t}"), 1, 100, "%") for t in tasks),
            ]
        )
    return fixed_width(["", *tasks], rows, right=[False, *[True] * len(tasks)])


def _suite_cells(m: dict[str, float]) -> list[str]:
    """Mean and worst recovery ± stderr, the worst task named."""
    mean = pm(m.get("recovery_mean"), m.get("recovery_mean_stderr"), digits=1, scale=100, unit="%")
    worst = pm(m.get("recovery_worst"), m.get("recovery_worst_stderr"), digits=1, scale=100, unit="%")
    by_task = {k.removeprefix("recovery."): v for k, v in m.items() if k.startswith("recovery.")}
    return [mean, f"{worst} {min(by_task, key=by_task.__getitem__)}" if by_task else worst]


def table(outcomes: list[Outcome]) -> str:
    """Each distinct baseline once, then every point; below, how each baseline (and so its points) was
    evaluated: tasks, shots, items and where the items came from. A suite of several tasks adds its mean
    and worst recovery, and a second table of recovery by task."""
    found = baselines(outcomes)
    tasks = _tasks(outcomes)
    if not tasks:
        rows = [baseline_row(b["name"], b["metrics"]) for b in found]
        text = fixed_width(COLUMNS, rows + [point_row(o) for o in outcomes])
        return "\n".join([text, *(f"{b['name']}: {b['eval']}" for b in found if b.get("eval"))])
    # The primary task's recovery is in the table by task: the suite's mean and worst take its place.
    header = ("", *COLUMNS[:-2], "mean rec.", "worst rec.", COLUMNS[-1])
    rows = [["", *baseline_row(b["name"], b["metrics"])[:-2], "100%", "100%", "-"] for b in found]
    for i, o in enumerate(outcomes, 1):
        cells = point_row(o)
        rows.append([f"#{i}", *cells[:-2], *_suite_cells(o.metrics), cells[-1]])
    evaluated = [f"{b['name']}: {b['eval']}" for b in found if b.get("eval")]
    return "\n".join(
        [fixed_width(header, rows), *evaluated, "", "recovery by task:", suite_table(outcomes, tasks)]
    )
