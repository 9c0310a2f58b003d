"""What `python run.py` does with a composed config: run it, report it, and map failures to exit codes.

Alone, a run prints its summary and exits 2 on bad input, 1 on a failed run. Inside a sweep, every
failure is logged as a FAILED child run and reported to the sweeper, so the other points go on.
"""

from __future__ import annotations

import sys
import time
from typing import cast

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from quantsweep import devices, pipeline
from quantsweep.config import Config
from quantsweep.errors import ConfigError, fail
from quantsweep.interrupts import interrupt_on_sigterm
from quantsweep.outcome import Outcome
from quantsweep.point import run_name
from quantsweep.sweeps import summary
from quantsweep.sweeps.bookkeeping import Context


def report(cfg: Config, ctx: Context) -> Outcome:
    """Run one combination; inside a sweep, a failure before its run started becomes a FAILED run."""
    try:
        return pipeline.run(cfg, parent=ctx.parent, sweep_id=ctx.sweep_id)
    except Exception as exc:
        if ctx.parent is None:
            raise
        return pipeline.record_failure(cfg, exc, ctx.parent, ctx.sweep_id)


def main(composed: DictConfig) -> Outcome | None:
    """Hydra's task function: one combination alone, or one point of a sweep."""
    cfg = cast(Config, composed)  # the structured schema, checked by OmegaConf at composition
    ctx = Context.of(cfg)  # what the sweeper put in the job's overrides; empty alone
    if ctx.parent is None:
        _single(cfg, ctx)
        return None
    devices.claim_gpu(cfg.cache_dir, cfg.resources.gpus_per_point)
    index = HydraConfig.get().job.num
    name = run_name(cfg)
    print(ctx.progress(index, name), flush=True)
    start = time.perf_counter()
    result = report(cfg, ctx)
    print(ctx.progress(index, name, result.status, time.perf_counter() - start), flush=True)
    return result


def _single(cfg: Config, ctx: Context) -> None:
    interrupt_on_sigterm()
    try:
        result = report(cfg, ctx)
    except ConfigError as exc:
        fail(str(exc))
    except Exception as exc:  # before a point run exists (model download, baseline): nothing to summarise
        fail(f"{type(exc).__name__}: {exc}", code=1)
    print(summary.table([result]))
    print(f"MLflow run {result.run_id} in {cfg.tracking.uri} (experiment {cfg.tracking.experiment})")
    if result.status != "FINISHED":
        print(f"quantsweep: run {result.status}: {result.error}", file=sys.stderr)
        sys.exit(1)
