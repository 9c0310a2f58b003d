"""What `python run.py` does with a composed config: run it, report it, and map failures to exit codes.

Alone, a run prints its summary and exits 2 on bad input, 1 on a failed run. Inside a sweep, every
failure is logged as a FAILED child run and reported to the sweeper, so the other points go on.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import mlflow
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from quantsweep import devices, pipeline, summary, tracking
from quantsweep.errors import ConfigError
from quantsweep.sweep import Context, PointReport


def interrupt_on_sigterm() -> None:
    """`kill` then ends the run like Ctrl-C does: marked KILLED in MLflow, never left RUNNING."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def baseline_of(run_id: str) -> dict[str, Any]:
    baseline = mlflow.get_run(mlflow.get_run(run_id).data.tags[tracking.BASELINE_RUN])
    name = f"{baseline.data.params.get('model.name', '?')} baseline"
    return {"run_id": baseline.info.run_id, "name": name, "metrics": baseline.data.metrics}


def report(cfg: DictConfig, ctx: Context) -> PointReport:
    """Run one combination and describe the outcome; inside a sweep, failures become FAILED runs."""
    name = pipeline.run_name(cfg)
    try:
        outcome = pipeline.run(cfg, parent=ctx.parent, sweep_id=ctx.sweep_id)
    except Exception as exc:
        if ctx.parent is None:
            raise
        run_id = pipeline.record_failure(cfg, exc, ctx.parent, ctx.sweep_id)
        return PointReport(name, "FAILED", run_id=run_id, error=f"{type(exc).__name__}: {exc}")
    found = baseline_of(outcome.run_id) if outcome.status == "FINISHED" else None
    return PointReport(
        name, outcome.status, outcome.reused, outcome.run_id, outcome.error, outcome.metrics, found
    )


def main(cfg: DictConfig) -> PointReport | None:
    ctx = Context.current()
    if ctx.parent is None:
        return _single(cfg, ctx)
    devices.claim_gpu(cfg.cache_dir)
    index = HydraConfig.get().job.num
    name = pipeline.run_name(cfg)
    print(ctx.progress(index, name), flush=True)
    start = time.perf_counter()
    result = report(cfg, ctx)
    print(ctx.progress(index, name, result.status, time.perf_counter() - start), flush=True)
    return result


def _single(cfg: DictConfig, ctx: Context) -> None:
    interrupt_on_sigterm()
    try:
        result = report(cfg, ctx)
    except ConfigError as exc:
        print(f"quantsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # before a point run exists (model download, baseline): nothing to summarise
        print(f"quantsweep: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    rows = []
    if result.baseline:
        rows.append(summary.baseline_row(result.baseline["name"], result.baseline["metrics"]))
    rows.append(summary.report_row(result))
    print(summary.format_table(rows))
    print(f"MLflow run {result.run_id} in {cfg.tracking.uri} (experiment {cfg.tracking.experiment})")
    if result.status != "FINISHED":
        print(f"quantsweep: run {result.status}: {result.error}", file=sys.stderr)
        sys.exit(1)
