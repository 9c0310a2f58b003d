"""What both sweepers do around Hydra's launcher: word a composition error in one line, give each worker a
GPU, launch jobs with the sweep's context in their overrides, and turn a launched job's return into the
sweep's `Outcome`."""

from __future__ import annotations

import os

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf

from quantsweep.devices import ENV_GPUS
from quantsweep.errors import ConfigError
from quantsweep.outcome import Outcome
from quantsweep.sweeps.bookkeeping import Context


def compose_error(exc: HydraException) -> ConfigError:
    """Hydra's message without the config search path it lists over several lines."""
    return ConfigError(" ".join(str(exc).split("Config search path")[0].split()))


def share_gpus(config: DictConfig) -> int:
    """The launcher's workers (`hydra.launcher.n_jobs`, one per GPU); with several, each job is told to
    claim a GPU of its own."""
    n_jobs: int = OmegaConf.select(config, "hydra.launcher.n_jobs", default=1) or 1
    if n_jobs > 1:
        os.environ[ENV_GPUS] = str(n_jobs)
    return n_jobs


def launch(launcher: Launcher, jobs: list[list[str]], ctx: Context, first: int = 0) -> list[JobReturn]:
    """The user's jobs, each told its sweep by `sweep_run.*` overrides appended to its own (the sweep id
    was computed from the user's alone), so the context reaches every launcher's workers with the job."""
    return list(launcher.launch([[*job, *ctx.overrides()] for job in jobs], initial_job_idx=first))


def point_report(job: list[str], result: JobReturn) -> Outcome:
    """The job's own report, or a FAILED one naming its overrides and what Hydra caught."""
    if result.status == JobStatus.COMPLETED and isinstance(result.return_value, Outcome):
        return result.return_value
    error = result._return_value if result.status == JobStatus.FAILED else "no report"
    return Outcome(" ".join(job), "FAILED", error=f"{type(error).__name__}: {error}")
