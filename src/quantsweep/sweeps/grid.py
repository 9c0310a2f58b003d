"""The `hydra/sweeper=quantsweep_grid` sweeper: Hydra's basic grid, checked whole before any work, under one
parent run, with failures reported in a summary and the exit status instead of aborting the sweep."""

from __future__ import annotations

import sys
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from quantsweep.errors import ConfigError, fail
from quantsweep.interrupts import interrupt_on_sigterm
from quantsweep.sweeps import bookkeeping, hydra_jobs


class QuantsweepGridSweeper(BasicSweeper):
    def grid(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides, each composed once here so a bad value fails before any job runs."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [list(job) for batch in self.split_arguments(overrides, None) for job in batch]
        if not jobs:
            raise ConfigError(
                f"the sweep {' '.join(arguments)} is an empty grid: give each swept key a value"
            )
        try:
            self.validate_batch_is_legal(jobs)
        except HydraException as exc:
            raise hydra_jobs.compose_error(exc) from exc
        return jobs

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        try:
            jobs = self.grid(arguments)
            name = f"sweep/{self.config.hydra.job.name}/{len(jobs)} points"
            ctx = bookkeeping.open_parent(self.config.tracking, jobs, name, total=len(jobs))
        except ConfigError as exc:  # a bad value, or a tracking store that cannot be opened
            fail(str(exc))
        assert ctx.parent is not None and ctx.sweep_id is not None
        print(
            f"quantsweep: sweep {ctx.sweep_id}: {len(jobs)} points, MLflow parent run {ctx.parent}",
            flush=True,
        )
        hydra_jobs.share_gpus(self.config)
        interrupt_on_sigterm()
        try:
            results = hydra_jobs.launch(self.launcher, jobs, ctx)
        except KeyboardInterrupt:
            bookkeeping.kill_parent(ctx.parent)
            raise
        reports = [hydra_jobs.point_report(job, result) for job, result in zip(jobs, results, strict=True)]
        if any(r.status == "FINISHED" for r in reports):
            bookkeeping.log_leaderboard(ctx.parent, self.config.tracking, ctx.sweep_id)
        print(bookkeeping.close_parent(ctx.parent, reports), flush=True)
        failed = [r for r in reports if r.status != "FINISHED"]
        if failed:
            print(f"quantsweep: {len(failed)} of {len(reports)} points failed:", file=sys.stderr)
            for r in failed:
                print(f"  {r.name}: {r.error}", file=sys.stderr)
            sys.exit(1)
        return [results]
