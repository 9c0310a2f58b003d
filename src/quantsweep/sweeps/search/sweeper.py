"""The `hydra/sweeper=quantsweep_optuna` sweeper: an Optuna study for the smallest configuration whose
accuracy clears a floor, launched through Hydra's launcher like the grid, every point a child of one MLflow
run (docs/search.md).

One loop for every sampler: ask the study for a batch of trials (one per launcher worker), evaluate them
(`fidelity`: the cheap evaluation, then the full one for the survivors) and tell the study; until the
budget (`search.n_trials`) is spent, every configuration is tried, the sampler keeps repeating itself, or
has nothing left to propose. Rerunning the command resumes the study from `search.storage`, and points
already FINISHED in MLflow are reused by the pipeline's fingerprints, so nothing is evaluated twice.
"""

from __future__ import annotations

from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.trial import TrialState

from quantsweep.config import SearchConfig
from quantsweep.errors import ConfigError, fail
from quantsweep.interrupts import interrupt_on_sigterm
from quantsweep.outcome import Outcome
from quantsweep.sweeps import bookkeeping, hydra_jobs
from quantsweep.sweeps.search import decisions, fidelity, report, samplers
from quantsweep.sweeps.search.plan import Plan, check_settings, make_plan
from quantsweep.sweeps.search.space import GROUP_SIZE, describe, key
from quantsweep.sweeps.search.study import (
    InFlight,
    beating,
    claim,
    copy_repeat,
    earlier,
    open_study,
    tell_failed,
)
from quantsweep.tracking import redact

# Consecutive repeats after which the sampler is taken to have converged and the session stops.
MAX_REPEATS = 25


class QuantsweepOptunaSweeper(Sweeper):
    def __init__(self, params: dict[str, str] | None = None, max_batch_size: int | None = None) -> None:
        self.params = dict(params or {})
        self.max_batch_size = max_batch_size
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_idx = 0
        self.reports: list[Outcome] = []
        # The sweep every launched job is told it belongs to (its overrides), once the parent run is open.
        self.ctx = bookkeeping.Context()
        # Trials numbered from here on belong to this session (a failure is retried only in a later one).
        self.first_trial = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _plan(self, arguments: list[str]) -> Plan:
        """The settings, the sweeper's params and then the command line's, checked before any work."""
        assert self.config is not None and self.hydra_context is not None
        settings: SearchConfig = OmegaConf.to_object(self.config.search)  # type: ignore[assignment]
        check_settings(settings)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{k}={v}" for k, v in self.params.items()]
        try:
            return make_plan(settings, parser.parse_overrides([*lines, *arguments]), self._compose)
        except HydraException as exc:
            raise hydra_jobs.compose_error(exc) from exc

    def _compose(self, overrides: list[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(
            master_config=self.config, sweep_overrides=overrides
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        try:
            plan = self._plan(arguments)
            study, self.first_trial = open_study(plan)
        except ConfigError as exc:
            fail(str(exc))
        s = plan.search
        # Jobs per study are not known ahead (one or two per trial): no total, progress lines show none.
        self.ctx = bookkeeping.open_parent(
            self.config.tracking,
            [[f"search.storage={redact(s.storage)}", f"search.study_name={s.study_name}"]],
            f"search/{s.study_name}",
        )
        parent, sweep_id = self.ctx.parent, self.ctx.sweep_id
        assert parent is not None and sweep_id is not None
        n_jobs = hydra_jobs.share_gpus(self.config)
        # Trials at once: max_batch_size, else one per worker of the host launcher (Ray and SLURM launchers
        # have no n_jobs: they take as many as the sweeper hands them, so give max_batch_size there).
        batch = self.max_batch_size or n_jobs
        print(
            f"quantsweep: study {s.study_name} in {redact(s.storage)}: "
            f"{len(plan.configurations)} configurations, budget {s.n_trials} configurations, "
            f"MLflow parent run {parent}",
            flush=True,
        )
        interrupt_on_sigterm()
        in_flight: list[InFlight] = []
        try:
            repeats = 0
            while (size := self._next_batch_size(study, plan, batch, repeats)) > 0:
                in_flight, refused = self._ask_batch(study, plan, size)
                if not in_flight and not refused:  # the sampler has nothing left to propose
                    print(samplers.exhausted(study), flush=True)
                    break
                with beating(in_flight):
                    fresh = self._run_batch(study, plan, in_flight) if in_flight else 0
                # A refused draw is work avoided, as a repeat is: a sampler that keeps drawing them converges.
                repeats = 0 if fresh else repeats + len(in_flight) + refused
                in_flight = []
        except BaseException:  # Ctrl-C, kill, or a crash: nothing is left RUNNING
            for t in in_flight:
                study.tell(t.handle, state=TrialState.FAIL, skip_if_finished=True)
            bookkeeping.kill_parent(parent)
            raise
        found = decisions.records(study.get_trials(deepcopy=False))
        return report.finish(found, plan, parent, sweep_id, self.config.tracking, self.reports)

    def _next_batch_size(self, study: optuna.Study, plan: Plan, batch: int, repeats: int) -> int:
        """How many trials to ask next; 0 once the budget is spent, every configuration is tried, or the
        sampler has converged (said so)."""
        s = plan.search
        found = decisions.records(study.get_trials(deepcopy=False))
        tried = [r for r in found if r.duplicate_of is None and r.verdict != decisions.REFUSED]
        if len(tried) >= s.n_trials:
            return 0
        if {key(c) for c in plan.configurations} <= {key(r.params) for r in tried}:
            print("quantsweep: every configuration of the space has been tried", flush=True)
            return 0
        if repeats >= MAX_REPEATS:
            print(f"quantsweep: {repeats} repeats in a row: the sampler has converged", flush=True)
            return 0
        return min(batch, s.n_trials - len(tried))

    def _ask_batch(self, study: optuna.Study, plan: Plan, size: int) -> tuple[list[InFlight], int]:
        """Up to `size` new trials to evaluate, fewer when the sampler runs out of configurations to propose
        or draws refused ones (closed at once, no job; counted second)."""
        asked: list[InFlight] = []
        refused = 0
        while len(asked) + refused < size and samplers.exhausted(study) is None:
            t = self._ask(study, plan)
            reason = plan.refused.get(key(t.record.params))
            if reason is None:
                asked.append(t)
            else:
                tell_failed(study, t, decisions.REFUSED, reason)
                refused += 1
        return asked, refused

    def _ask(self, study: optuna.Study, plan: Plan) -> InFlight:
        """A new trial: the sampler's configuration, `scheme.group_size` asked only where it applies."""
        trial = study.ask()
        claim(trial)
        dims = plan.space.dims
        params: dict[str, str] = {
            k: trial.suggest_categorical(k, v) for k, v in dims.items() if k != GROUP_SIZE
        }
        if GROUP_SIZE in dims and plan.grouped(params):
            params[GROUP_SIZE] = trial.suggest_categorical(GROUP_SIZE, dims[GROUP_SIZE])
        s = plan.search
        floor = [f"eval.floor={s.floor}", f"eval.floor_on={s.floor_on}"]
        overrides = [*plan.space.fixed, *(f"{k}={v}" for k, v in params.items()), *floor]
        return InFlight(
            trial, decisions.TrialRecord(params, decisions.FAILED, number=trial.number), overrides
        )

    def _run_batch(self, study: optuna.Study, plan: Plan, batch: list[InFlight]) -> int:
        """Evaluate a batch (one trial per launcher worker): low, then full fidelity, then repeats copied.

        Returns how many trials were new configurations.
        """
        fresh: list[InFlight] = []
        repeats: list[tuple[InFlight, int]] = []
        for t in batch:
            same = next((f.handle.number for f in fresh if f.record.params == t.record.params), None)
            if same is None:
                same = earlier(study, t.record.params, self.first_trial)
            if same is None:
                fresh.append(t)
            else:
                repeats.append((t, same))
        survivors = fresh
        if plan.low_limit is not None and fresh:
            # A configuration already evaluated in full (by a grid, another study) skips the cheap evaluation.
            known = [t for t in fresh if self._fully_evaluated(t)]
            screened = [t for t in fresh if t not in known]
            extra = [f"eval.limit={plan.low_limit}"]
            launched = self._launch([[*t.overrides, *extra] for t in screened]) if screened else []
            passed = []
            for t, point in zip(screened, launched, strict=True):
                t.record.low_run_id, t.record.low_reused = point.run_id, point.reused
                if fidelity.judge_low(study, plan, t, point):
                    passed.append(t)
            survivors = [t for t in fresh if t in known or t in passed]
        if survivors:
            for t, point in zip(survivors, self._launch([t.overrides for t in survivors]), strict=True):
                t.record.full_run_id, t.record.full_reused = point.run_id, point.reused
                fidelity.judge_full(study, plan, t, point)
        for t, number in repeats:
            copy_repeat(study, t, number)
        return len(fresh)

    def _fully_evaluated(self, t: InFlight) -> bool:
        """Whether MLflow holds a FINISHED full evaluation of this trial's configuration (nothing loaded)."""
        from quantsweep import pipeline

        try:
            cfg = self._compose(t.overrides)
            with read_write(cfg), open_dict(cfg):  # the job's config, as the task function gets it
                del cfg["hydra"]
            done = pipeline.finished_run(cfg) is not None  # type: ignore[arg-type]
        except (ConfigError, HydraException):  # the launched job reports it
            return False
        if done:
            print(
                f"quantsweep: trial {t.record.number} {describe(t.record.params)}: "
                "evaluated in full before, no low-fidelity evaluation",
                flush=True,
            )
        return done

    def _launch(self, jobs: list[list[str]]) -> list[Outcome]:
        assert self.launcher is not None
        results = hydra_jobs.launch(self.launcher, jobs, self.ctx, self.job_idx)
        self.job_idx += len(jobs)
        reports = [hydra_jobs.point_report(job, r) for job, r in zip(jobs, results, strict=True)]
        self.reports += reports
        return reports
