"""The `hydra/sweeper=quantsweep_grid` plugin: Hydra's basic grid, checked whole before any work, under one
parent run, with failures reported in a summary and the exit status instead of aborting the sweep."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf

from quantsweep import sweep
from quantsweep.devices import ENV_GPUS
from quantsweep.errors import ConfigError


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.quantsweep_sweepers.GridSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = field(default_factory=dict)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
        except HydraException as exc:  # Hydra's message lists the valid options over several lines
            raise ConfigError(" ".join(str(exc).split("Config search path")[0].split())) from exc
        return jobs

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        try:
            jobs = self.grid(arguments)
        except ConfigError as exc:
            print(f"quantsweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
        parent, sweep_id = sweep.open_parent(
            self.config.tracking, jobs, f"sweep/{self.config.hydra.job.name}/{len(jobs)} points"
        )
        print(f"quantsweep: sweep {sweep_id}: {len(jobs)} points, MLflow parent run {parent}", flush=True)
        n_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=1)
        if n_jobs and n_jobs > 1:
            os.environ[ENV_GPUS] = str(n_jobs)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            results = list(self.launcher.launch(jobs, initial_job_idx=0))
        except KeyboardInterrupt:
            sweep.kill_parent(parent)
            raise
        reports = [self._report(job, result) for job, result in zip(jobs, results, strict=True)]
        if any(r.status == "FINISHED" for r in reports):
            sweep.log_leaderboard(parent, self.config.tracking, sweep_id)
        print(sweep.close_parent(parent, reports), flush=True)
        failed = [r for r in reports if r.status != "FINISHED"]
        if failed:
            print(f"quantsweep: {len(failed)} of {len(reports)} points failed:", file=sys.stderr)
            for r in failed:
                print(f"  {r.name}: {r.error}", file=sys.stderr)
            sys.exit(1)
        return [results]

    @staticmethod
    def _report(job: list[str], result: JobReturn) -> sweep.PointReport:
        if result.status == JobStatus.COMPLETED and isinstance(result.return_value, sweep.PointReport):
            return result.return_value
        error = result._return_value if result.status == JobStatus.FAILED else "no report"
        return sweep.PointReport(" ".join(job), "FAILED", error=f"{type(error).__name__}: {error}")
