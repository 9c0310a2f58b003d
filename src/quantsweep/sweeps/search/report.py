"""The study's answer, over every session's trials: printed, logged on the MLflow parent run (metrics, the
trial and Pareto tables, the picture, the grid's leaderboard files), and told by the exit status."""

from __future__ import annotations

import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from quantsweep.config import SearchConfig, TrackingConfig
from quantsweep.floor import floor_accuracy
from quantsweep.outcome import Outcome
from quantsweep.sweeps import bookkeeping
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.objectives import OBJECTIVES
from quantsweep.sweeps.search.plan import Plan
from quantsweep.sweeps.search.plot import plot
from quantsweep.sweeps.search.space import describe, override_line
from quantsweep.tables import markdown, pm

# Exit status when the study ran but no configuration cleared the floor (2 is bad input, 1 a crash).
EXIT_NO_FEASIBLE = 3


def counts(found: list[TrialRecord]) -> dict[str, int]:
    """The study's totals, across resumptions; repeats cost nothing and are counted apart."""
    own = [r for r in found if r.duplicate_of is None]
    pruned = [r for r in own if r.verdict in (decisions.PRUNED_FLOOR, decisions.PRUNED_SIZE)]
    return {
        "trials": len(found),
        "trials_complete": sum(r.verdict in (decisions.FEASIBLE, decisions.INFEASIBLE) for r in own),
        "trials_feasible": sum(r.verdict == decisions.FEASIBLE for r in own),
        "trials_pruned_floor": sum(r.verdict == decisions.PRUNED_FLOOR for r in own),
        "trials_pruned_size": sum(r.verdict == decisions.PRUNED_SIZE for r in own),
        "trials_failed": sum(r.verdict == decisions.FAILED for r in own),
        "trials_refused": sum(r.verdict == decisions.REFUSED for r in own),
        "trials_repeated": len(found) - len(own),
        # Evaluations that produced numbers (a failed point is counted among the failures).
        "evaluations_low": sum(
            r.stage is not None and r.low_run_id is not None and not r.low_reused for r in own
        ),
        "evaluations_full": sum(r.stage == "full" and not r.full_reused for r in own),
        "evaluations_reused": sum(r.low_reused for r in own) + sum(r.full_reused for r in own),
        "full_evaluations_saved": len(pruned),
    }


def table(found: list[TrialRecord], s: SearchConfig) -> str:
    """A Markdown table of trials: configuration, size, accuracy and recovery ± stderr, the bound, verdict."""
    objective = OBJECTIVES[s.objective]
    head = [
        "trial",
        "configuration",
        f"size ({s.objective})",
        "accuracy",
        "recovery",
        f"{s.floor_on} {s.confidence:.0%} lower bound",
        "evaluation",
        "verdict",
        "MLflow run",
    ]
    rows = []
    for r in found:
        verdict = r.verdict + (f" (= trial {r.duplicate_of})" if r.duplicate_of is not None else "")
        rows.append(
            [
                str(r.number),
                describe(r.params),
                objective.text(r.objective),
                pm(r.accuracy, r.accuracy_stderr),
                pm(r.recovery, r.recovery_stderr),
                pm(r.lower),
                r.stage or "-",
                verdict + (f": {r.error}" if r.error else ""),
                r.full_run_id or r.low_run_id or "-",
            ]
        )
    return markdown(head, rows)


def summary(found: list[TrialRecord], plan: Plan) -> str:
    """The printed report: the totals, the Pareto front, and the best trial with the line that reruns it,
    or the trials that came closest to the floor."""
    s, objective = plan.search, plan.objective
    n = counts(found)
    top = decisions.best(found)
    lines = [
        f"quantsweep: study {s.study_name}: {n['trials']} trials: {n['trials_complete']} fully "
        f"evaluated ({n['trials_feasible']} feasible), {n['trials_pruned_floor']} pruned below "
        f"the floor, {n['trials_pruned_size']} pruned as no smaller, "
        f"{n['trials_failed']} failed, {n['trials_repeated']} repeats (not re-evaluated)"
        + (f", {n['trials_refused']} refused before any work" if n["trials_refused"] else ""),
        f"evaluations: {n['evaluations_low']} at {plan.low_limit or '-'} items, "
        f"{n['evaluations_full']} full, {n['evaluations_reused']} reused from MLflow; "
        f"{n['full_evaluations_saved']} full evaluations saved by pruning",
        "Pareto front (size vs accuracy, fully evaluated trials):",
        table(decisions.pareto(found), s),
    ]
    if top is not None:
        lines += [
            f"best: trial {top.number} {describe(top.params)}: "
            f"{objective.text(top.objective)}, {s.floor_on} {pm(top.value)} "
            f"(lower bound {pm(top.lower)} ≥ floor {s.floor}), run {top.full_run_id}",
            f"reproduce: {override_line(plan.space.fixed, top.params)}",
        ]
        return "\n".join(lines)
    floor_text = f"{s.floor_on} {s.confidence:.0%} lower bound ≥ {s.floor}"
    lines.append(
        f"quantsweep: no configuration clears the floor ({floor_text}) in {n['trials']} trials; closest:"
    )
    lines += [
        f"  trial {r.number} {describe(r.params)}: lower bound {pm(r.lower)}, {s.floor_on} "
        f"{pm(r.value)} ({r.stage} evaluation, {r.verdict})"
        for r in decisions.closest(found)
    ]
    return "\n".join(lines)


def log(parent: str, found: list[TrialRecord], plan: Plan, text: str) -> None:
    """The totals and the best trial's numbers as metrics, the result as a tag, the tables and the picture
    as files under `search/`."""
    from mlflow import MlflowClient

    s = plan.search
    client = MlflowClient()
    metrics: dict[str, Any] = {k: float(v) for k, v in counts(found).items()}
    top = decisions.best(found)
    if top is not None:
        best = {"objective": top.objective, "lower_bound": top.lower, "trial": top.number}
        best |= {"accuracy": top.accuracy, "disk_bytes": top.disk_bytes}
        metrics |= {f"best_{k}": v for k, v in best.items()}
    for name, value in metrics.items():
        if value is not None:
            client.log_metric(parent, name, value)
    client.set_tag(parent, "quantsweep.search.result", "best" if top else "no feasible configuration")
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "pareto.md").write_text(table(decisions.pareto(found), s) + "\n")
        (out / "trials.md").write_text(table(found, s) + "\n")
        (out / "result.txt").write_text(text + "\n")
        floor_y = floor_accuracy(s.floor, s.floor_on, decisions.baseline_accuracy(found))
        plot(found, plan.objective, floor_y, plan.z, out / "pareto.png")
        client.log_artifacts(parent, str(out), "search")


def finish(
    found: list[TrialRecord],
    plan: Plan,
    parent: str,
    sweep_id: str,
    tracking: TrackingConfig,
    reports: list[Outcome],
) -> list[list[Outcome]]:
    """Report the study, log it on the parent run and close that; exits with EXIT_NO_FEASIBLE when no trial
    cleared the floor, so scripts need not parse the output."""
    text = summary(found, plan)
    log(parent, found, plan, text)
    # The grid's leaderboard files too, over the runs this study made in any session.
    bookkeeping.log_leaderboard(parent, tracking, sweep_id)
    bookkeeping.close_parent(parent, reports)
    print(text, flush=True)
    for r in found:
        if r.verdict == decisions.FAILED and r.duplicate_of is None:
            print(f"  failed: trial {r.number} {describe(r.params)}: {r.error}", file=sys.stderr)
    if decisions.best(found) is None:
        sys.exit(EXIT_NO_FEASIBLE)
    return [reports]
