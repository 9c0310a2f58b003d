"""What `python run.py` does with a composed config: run it, print the summary, map failures to exit codes."""

from __future__ import annotations

import sys

import mlflow
from omegaconf import DictConfig

from quantsweep import pipeline, summary, tracking
from quantsweep.errors import ConfigError


def point_name(cfg: DictConfig) -> str:
    group = cfg.scheme.group_size if cfg.scheme.group_size is not None else "preset"
    return f"{cfg.model.name} {cfg.scheme.name}/{cfg.scheme.algorithm}/g{group} ignore={cfg.ignore.name}"


def main(cfg: DictConfig) -> None:
    """Exit 2 on bad input (nothing logged), 1 on a failed run (logged FAILED), 0 otherwise."""
    try:
        outcome = pipeline.run(cfg)
    except ConfigError as exc:
        print(f"quantsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # before a point run exists (model download, baseline): nothing to summarise
        print(f"quantsweep: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    rows = []
    if outcome.status == "FINISHED":
        baseline_id = mlflow.get_run(outcome.run_id).data.tags[tracking.BASELINE_RUN]
        rows.append(
            summary.baseline_row(f"{cfg.model.name} baseline", mlflow.get_run(baseline_id).data.metrics)
        )
    rows.append(summary.row(point_name(cfg), outcome))
    print(summary.format_table(rows))
    print(f"MLflow run {outcome.run_id} in {cfg.tracking.uri} (experiment {cfg.tracking.experiment})")
    if outcome.status != "FINISHED":
        print(f"quantsweep: run {outcome.status}: {outcome.error}", file=sys.stderr)
        sys.exit(1)
