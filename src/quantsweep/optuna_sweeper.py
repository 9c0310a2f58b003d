"""The `hydra/sweeper=quantsweep_optuna` plugin: an Optuna study for the smallest configuration whose accuracy
clears a floor, launched through Hydra's launcher like the grid, every point a child of one MLflow run.

By default (`search.sampler=smallest_first`) every configuration's size is predicted from the model's
config before anything is quantized (`predict`), and trials are enqueued in ascending predicted size: the
first feasible one is the smallest, and the study stops there, having evaluated nothing larger.

Each trial is first evaluated on `search.low_fidelity_limit` items. It stops there (PRUNED) when even its
upper confidence bound misses the floor (Optuna's ThresholdPruner) or when it is no smaller than the best
feasible trial so far; only the others get the full evaluation. Feasibility is an Optuna constraint
(`trial.set_constraint`), so an infeasible trial is never the study's best. The study lives in
`search.storage`: rerunning the command resumes it, and points already FINISHED in MLflow are reused by
the pipeline's fingerprints, so nothing is evaluated twice. Optuna is imported only when a study runs, not
when Hydra scans its plugins at every start of run.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from quantsweep import cli, models, pipeline, recipes, search, sweep, validate
from quantsweep.config import SearchConfig
from quantsweep.devices import ENV_GPUS
from quantsweep.errors import ConfigError
from quantsweep.grid_sweeper import QuantsweepGridSweeper
from quantsweep.search import TrialRecord

# Exit status when the study ran but no configuration cleared the floor (2 is bad input, 1 a crash).
EXIT_NO_FEASIBLE = 3
# Consecutive repeats after which the sampler is taken to have converged and the session stops.
MAX_REPEATS = 25
IDENTITY = "quantsweep.identity"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.quantsweep_sweepers.OptunaSweeper"
    # Trials evaluated at once; None: one per launcher worker (hydra.launcher.n_jobs, one per GPU).
    max_batch_size: int | None = None
    params: dict[str, str] | None = field(default_factory=dict)


def _grid_sampler(space: dict[str, list[str]], seed: int) -> Any:
    """Optuna's GridSampler without its `study.stop()` after the last cell, which raises outside
    `study.optimize` (optuna#5141); the sweeper stops by itself once every configuration is tried."""
    from optuna.samplers import GridSampler

    class AskTellGridSampler(GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Sequence[float] | None) -> None:
            return None

    return AskTellGridSampler(space, seed=seed)


@dataclass
class _Plan:
    """Everything checked before any work: the space, presets per scheme, the two evaluation sizes."""

    search: SearchConfig
    space: search.Space
    base_preset: str
    presets: dict[str, str]
    z: float
    # The upper bound's z at low fidelity (search.prune_confidence).
    z_prune: float
    # None: every trial gets the full evaluation only.
    low_limit: int | None
    identity: dict[str, Any]
    # smallest_first: the buildable configurations in ascending predicted objective, and those predictions.
    order: list[dict[str, str]] | None = None
    predicted: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def grouped(self, params: dict[str, str]) -> bool:
        return search.has_groups(self.presets.get(params.get("scheme", ""), self.base_preset))

    @functools.cached_property
    def configurations(self) -> list[dict[str, str]]:
        return self.space.configurations(self.grouped)


@dataclass
class _Trial:
    """A trial in flight: Optuna's handle and what it has found so far."""

    handle: Any
    record: TrialRecord
    overrides: list[str]


class QuantsweepOptunaSweeper(Sweeper):
    def __init__(self, params: dict[str, str] | None = None, max_batch_size: int | None = None) -> None:
        self.params = dict(params or {})
        self.max_batch_size = max_batch_size
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_idx = 0
        self.reports: list[sweep.PointReport] = []
        # Trials numbered from here on belong to this session (a failure is retried only in a later one).
        self.first_trial = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ---- checks, before any work -------------------------------------------------------------------

    def plan(self, arguments: list[str]) -> _Plan:
        """Check the settings, the space (each value composed once) and the model and eval settings."""
        assert self.config is not None and self.hydra_context is not None
        cfg = self.config
        settings: SearchConfig = OmegaConf.to_object(cfg.search)  # type: ignore[assignment]
        search.check(settings)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{k}={v}" for k, v in self.params.items()]
        try:
            space = search.parse_space(parser.parse_overrides([*lines, *arguments]))
            base = self._compose(space.fixed)
            presets = {}
            for key, values in space.dims.items():
                for value in values:
                    composed = self._compose([*space.fixed, f"{key}={value}"])
                    if key == "scheme":
                        presets[value] = composed.scheme.preset
        except HydraException as exc:  # Hydra's message lists the valid options over several lines
            raise ConfigError(" ".join(str(exc).split("Config search path")[0].split())) from exc
        for preset in {base.scheme.preset, *presets.values()}:
            recipes.check_preset(preset, "scheme.preset")
        validate.check_eval(base.eval)
        models.check_source(base.model)
        full = base.eval.limit
        low = settings.low_fidelity_limit
        if low is not None and full is not None and full >= 1 and low >= full:
            low = None
        identity = {
            "floor": settings.floor,
            "floor_on": settings.floor_on,
            "confidence": settings.confidence,
            "objective": settings.objective,
            "gpu_mem_gb": settings.gpu_mem_gb if settings.objective == "gpus" else None,
            "low_fidelity_limit": low,
            "prune_confidence": settings.prune_confidence if low is not None else None,
            "evaluation": pipeline.baseline_fingerprint(base),
        }
        plan = _Plan(
            settings,
            space,
            base.scheme.preset,
            presets,
            search.z_value(settings.confidence),
            search.z_value(settings.prune_confidence),
            low,
            identity,
        )
        if settings.sampler == "smallest_first":
            self._order(plan, base)
        return plan

    def _order(self, plan: _Plan, base: DictConfig) -> None:
        """Predict every configuration's objective from the model's config (meta device, no weights) and
        order them smallest first; those the model cannot be built with (a group size that does not divide
        its layers) are left out, and said so."""
        s = plan.search
        source = models.resolve(base.model, base.cache_dir)
        meta = validate.meta_model(source, base.model.trust_remote_code)
        sizes: dict[tuple[tuple[str, str], ...], tuple[float, int]] = {}
        left_out = []
        for params in plan.configurations:
            cfg = self._compose([*plan.space.fixed, *(f"{k}={v}" for k, v in params.items())])
            try:
                _, size = pipeline.fit(meta, OmegaConf.to_object(cfg.scheme), cfg.ignore)
            except ConfigError as exc:
                left_out.append(f"{search.describe(params)} ({exc})")
                continue
            sizes[search.key(params)] = (search.predicted_objective(size, s.objective, s.gpu_mem_gb), size)
        plan.order = sorted(
            (c for c in plan.configurations if search.key(c) in sizes), key=lambda c: sizes[search.key(c)]
        )
        plan.predicted = {k: v[0] for k, v in sizes.items()}
        if plan.order:
            low, high = (
                search.size_text(plan.predicted[search.key(c)], s.objective)
                for c in (plan.order[0], plan.order[-1])
            )
            print(
                f"quantsweep: smallest first: {len(plan.order)} configurations ordered by predicted "
                f"{s.objective}, {low} to {high}",
                flush=True,
            )
        if left_out:
            print(f"quantsweep: {len(left_out)} configurations left out: {left_out[0]}", flush=True)
        if not plan.order:
            raise ConfigError(f"no configuration of the space can be built for this model: {left_out[0]}")

    def _compose(self, overrides: list[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(
            master_config=self.config, sweep_overrides=overrides
        )

    def open_study(self, plan: _Plan) -> Any:
        """Create or resume the study; refuse one begun with other settings (its constraints would lie)."""
        import optuna
        from optuna.pruners import ThresholdPruner
        from optuna.samplers import TPESampler

        s = plan.search
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if s.storage.startswith("sqlite:///"):
            Path(s.storage.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            storage = optuna.storages.RDBStorage(s.storage)
            existing = len(optuna.load_study(study_name=s.study_name, storage=storage).trials)
        except KeyError:  # no such study yet
            existing = 0
        except Exception as exc:  # a bad URL, a missing driver, an unreadable database
            raise ConfigError(f"search.storage={s.storage!r} cannot be opened: {exc}") from exc
        # A resumed TPE study reseeds past the trials it has, so it does not replay the first session's draws.
        sampler = (
            _grid_sampler(plan.space.dims, s.seed)
            if s.sampler == "grid"
            else TPESampler(seed=s.seed + existing)
        )
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=ThresholdPruner(lower=s.floor),
            study_name=s.study_name,
            direction="minimize",
            load_if_exists=True,
        )
        stored = study.user_attrs.get(IDENTITY)
        if stored is None:
            study.set_user_attr(IDENTITY, plan.identity)
        elif stored != plan.identity:
            changed = sorted(k for k in plan.identity if stored.get(k) != plan.identity[k])
            raise ConfigError(
                f"search.study_name={s.study_name!r} in {s.storage} was run with other settings "
                f"({', '.join(f'{k}: {stored.get(k)} -> {plan.identity[k]}' for k in changed)}); "
                "give another search.study_name to start a new study"
            )
        return study

    # ---- the study -----------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        try:
            plan = self.plan(arguments)
            study = self.open_study(plan)
        except ConfigError as exc:
            print(f"quantsweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
        _fail_stale(study)
        self.first_trial = len(study.trials)
        s = plan.search
        name = f"search/{s.study_name}"
        parent, sweep_id = sweep.open_parent(
            self.config.tracking, [[f"search.storage={s.storage}", f"search.study_name={s.study_name}"]], name
        )
        # Jobs per study are not known ahead (one or two per trial): progress lines show no total.
        os.environ.pop(sweep.ENV_TOTAL, None)
        n_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=1) or 1
        if n_jobs > 1:
            os.environ[ENV_GPUS] = str(n_jobs)
        batch = min(n_jobs, self.max_batch_size or n_jobs)
        configurations = plan.configurations
        print(
            f"quantsweep: study {s.study_name} in {s.storage}: {len(configurations)} configurations, "
            f"budget {s.n_trials} configurations, MLflow parent run {parent}",
            flush=True,
        )
        cli.interrupt_on_sigterm()
        in_flight: list[_Trial] = []
        repeats = 0
        try:
            while True:
                records = _records(study.get_trials(deepcopy=False))
                tried = [r for r in records if r.duplicate_of is None]
                if len(tried) >= s.n_trials:
                    break
                if {search.key(c) for c in configurations} <= {search.key(r.params) for r in tried}:
                    print("quantsweep: every configuration of the space has been tried", flush=True)
                    break
                if repeats >= MAX_REPEATS:
                    print(f"quantsweep: {repeats} repeats in a row: the sampler has converged", flush=True)
                    break
                size = min(batch, s.n_trials - len(tried))
                if plan.order is None:
                    in_flight = [self._ask(study, plan) for _ in range(size)]
                else:
                    picks = search.next_smallest(plan.order, plan.predicted, records, self.first_trial, size)
                    if not picks:
                        print(_exhausted(records), flush=True)
                        break
                    in_flight = [self._ask(study, plan, params) for params in picks]
                fresh = self._run_batch(study, plan, in_flight)
                repeats = 0 if fresh else repeats + len(in_flight)
                in_flight = []
        except BaseException:  # Ctrl-C, kill, or a crash: nothing is left RUNNING
            for t in in_flight:
                study.tell(t.handle, state=_state("FAIL"), skip_if_finished=True)
            sweep.kill_parent(parent)
            raise
        return self._finish(study, plan, parent, sweep_id)

    def _ask(self, study: Any, plan: _Plan, enqueue: dict[str, str] | None = None) -> _Trial:
        """A new trial: the sampler's choice, or the given configuration enqueued in the study's storage."""
        if enqueue is not None:
            study.enqueue_trial(enqueue)
        trial = study.ask()
        params: dict[str, str] = {}
        for key, values in plan.space.dims.items():
            if key != search.GROUP_SIZE:
                params[key] = trial.suggest_categorical(key, values)
        if search.GROUP_SIZE in plan.space.dims and plan.grouped(params):
            params[search.GROUP_SIZE] = trial.suggest_categorical(
                search.GROUP_SIZE, plan.space.dims[search.GROUP_SIZE]
            )
        floor = [f"eval.floor={plan.search.floor}", f"eval.floor_on={plan.search.floor_on}"]
        overrides = [*plan.space.fixed, *(f"{k}={v}" for k, v in params.items()), *floor]
        return _Trial(trial, TrialRecord(params, search.FAILED, number=trial.number), overrides)

    def _run_batch(self, study: Any, plan: _Plan, batch: list[_Trial]) -> int:
        """Evaluate a batch (one trial per launcher worker): low, then full fidelity, then repeats copied.

        Returns how many trials were new configurations.
        """
        fresh: list[_Trial] = []
        repeats: list[tuple[_Trial, _Trial | None, Any]] = []
        for t in batch:
            same_fresh = next((f for f in fresh if f.record.params == t.record.params), None)
            earlier = None if same_fresh else _earlier(study, t.record.params, self.first_trial)
            if same_fresh or earlier:
                repeats.append((t, same_fresh, earlier))
            else:
                fresh.append(t)
        survivors = fresh
        if plan.low_limit is not None and fresh:
            # A configuration already evaluated in full (by a grid, another study) skips the cheap evaluation.
            known = [t for t in fresh if self._fully_evaluated(t)]
            screened = [t for t in fresh if t not in known]
            passed = []
            extra = [f"eval.limit={plan.low_limit}"]
            launched = self._launch([[*t.overrides, *extra] for t in screened]) if screened else []
            for t, report in zip(screened, launched, strict=True):
                t.record.low_run_id, t.record.low_reused = report.run_id, report.reused
                if self._low_fidelity(study, plan, t, report):
                    passed.append(t)
            survivors = [t for t in fresh if t in known or t in passed]
        if survivors:
            for t, report in zip(survivors, self._launch([t.overrides for t in survivors]), strict=True):
                t.record.full_run_id, t.record.full_reused = report.run_id, report.reused
                self._full_fidelity(study, plan, t, report)
        for t, same_fresh, earlier in repeats:
            _copy(study, t, same_fresh.handle.number if same_fresh else earlier.number)
        return len(fresh)

    def _fully_evaluated(self, t: _Trial) -> bool:
        """Whether MLflow holds a FINISHED full evaluation of this trial's configuration (nothing loaded)."""
        try:
            cfg = self._compose(t.overrides)
            with read_write(cfg), open_dict(cfg):  # the job's config, as the task function gets it
                del cfg["hydra"]
            done = pipeline.finished_run(cfg) is not None
        except (ConfigError, HydraException):  # the launched job reports it
            return False
        if done:
            print(
                f"quantsweep: trial {t.record.number} {search.describe(t.record.params)}: evaluated in full "
                "before, no low-fidelity evaluation",
                flush=True,
            )
        return done

    def _launch(self, jobs: list[list[str]]) -> list[sweep.PointReport]:
        assert self.launcher is not None
        results = list(self.launcher.launch(jobs, initial_job_idx=self.job_idx))
        self.job_idx += len(jobs)
        reports = [QuantsweepGridSweeper._report(job, r) for job, r in zip(jobs, results, strict=True)]
        self.reports += reports
        return reports

    def _low_fidelity(self, study: Any, plan: _Plan, t: _Trial, report: sweep.PointReport) -> bool:
        """Score the cheap evaluation; True when the trial goes on to the full one."""
        s = plan.search
        if report.status != "FINISHED":
            _tell_failed(study, t, report)
            return False
        b = search.bound(report.metrics, s.floor_on, plan.z, plan.z_prune)
        if b is None:  # recovery undefined on these few items: judge it on the full evaluation
            return True
        size = search.objective_value(report.metrics, s.objective, s.gpu_mem_gb)
        t.record.measured("low", report.metrics, b, size)
        verdict = low_fidelity_verdict(t.handle, b, plan.low_limit or 0, size, _best_size(study))
        if verdict is None:
            return True
        t.record.verdict = verdict
        t.handle.set_constraint("floor", search.constraint(b.lower, s.floor))
        t.handle.set_user_attr(search.RECORD, asdict(t.record))
        study.tell(t.handle, state=_state("PRUNED"))
        why = (
            f"{s.floor_on} ≤ {b.upper:.3f} (upper bound) < floor {s.floor}"
            if verdict == search.PRUNED_FLOOR
            else f"{search.size_text(size, s.objective)} is no smaller than the best feasible"
        )
        print(
            f"quantsweep: trial {t.record.number} {search.describe(t.record.params)}: pruned at "
            f"{plan.low_limit} items, {why}",
            flush=True,
        )
        return False

    def _full_fidelity(self, study: Any, plan: _Plan, t: _Trial, report: sweep.PointReport) -> None:
        s = plan.search
        if report.status != "FINISHED":
            _tell_failed(study, t, report)
            return
        b = search.bound(report.metrics, s.floor_on, plan.z)
        if b is None:
            error = f"{s.floor_on} is undefined (baseline accuracy 0?); use search.floor_on=accuracy"
            _tell_failed(
                study, t, sweep.PointReport(report.name, "FAILED", run_id=report.run_id, error=error)
            )
            return
        size = search.objective_value(report.metrics, s.objective, s.gpu_mem_gb)
        t.record.measured("full", report.metrics, b, size)
        feasible = b.lower >= s.floor
        t.record.verdict = search.FEASIBLE if feasible else search.INFEASIBLE
        t.handle.set_constraint("floor", search.constraint(b.lower, s.floor))
        t.handle.set_user_attr(search.RECORD, asdict(t.record))
        study.tell(t.handle, size)
        print(
            f"quantsweep: trial {t.record.number} {search.describe(t.record.params)}: "
            f"{search.size_text(size, s.objective)}, {s.floor_on} {b.value:.3f} ± {b.stderr:.3f}, "
            f"lower bound {b.lower:.3f} → {t.record.verdict}",
            flush=True,
        )

    # ---- the report ----------------------------------------------------------------------------------

    def _finish(self, study: Any, plan: _Plan, parent: str, sweep_id: str) -> Any:
        """Report the whole study (every session's trials): print it, log it on the parent run, close that.

        Exits with EXIT_NO_FEASIBLE when no trial cleared the floor, so scripts need not parse the output.
        """
        from mlflow import MlflowClient

        assert self.config is not None
        s = plan.search
        records = _records(study.get_trials(deepcopy=False))
        top = search.best(records)
        counts = _counts(records)
        front = search.pareto(records)
        front_table = search.table(front, s.objective, s.floor_on, s.confidence)
        lines = [
            f"quantsweep: study {s.study_name}: {counts['trials']} trials: {counts['trials_complete']} fully "
            f"evaluated ({counts['trials_feasible']} feasible), {counts['trials_pruned_floor']} pruned below "
            f"the floor, {counts['trials_pruned_size']} pruned as no smaller, "
            f"{counts['trials_failed']} failed, {counts['trials_repeated']} repeats (not re-evaluated)",
            f"evaluations: {counts['evaluations_low']} at {plan.low_limit or '-'} items, "
            f"{counts['evaluations_full']} full, {counts['evaluations_reused']} reused from MLflow; "
            f"{counts['full_evaluations_saved']} full evaluations saved by pruning",
            "Pareto front (size vs accuracy, fully evaluated trials):",
            front_table,
        ]
        floor_text = f"{s.floor_on} {s.confidence:.0%} lower bound ≥ {s.floor}"
        if top is not None:
            reproduce = search.override_line(plan.space.fixed, top.params)
            lines += [
                f"best: trial {top.number} {search.describe(top.params)}: "
                f"{search.size_text(top.objective, s.objective)}, {s.floor_on} {top.value:.3f} "
                f"(lower bound {top.lower:.3f} ≥ floor {s.floor}), run {top.full_run_id}",
                f"reproduce: {reproduce}",
            ]
        else:
            lines.append(
                f"quantsweep: no configuration clears the floor ({floor_text}) in {counts['trials']} trials; "
                "closest:"
            )
            lines += [
                f"  trial {r.number} {search.describe(r.params)}: lower bound {r.lower:.3f}, {s.floor_on} "
                f"{r.value:.3f} ({r.stage} evaluation, {r.verdict})"
                for r in search.closest(records)
            ]
        text = "\n".join(lines)
        client = MlflowClient()
        metrics = {k: float(v) for k, v in counts.items()}
        if top is not None:
            best = {"objective": top.objective, "lower_bound": top.lower, "trial": top.number}
            best |= {"accuracy": top.accuracy, "disk_bytes": top.disk_bytes}
            metrics |= {f"best_{k}": v for k, v in best.items()}
        for key, value in metrics.items():
            if value is not None:
                client.log_metric(parent, key, value)
        client.set_tag(parent, "quantsweep.search.result", "best" if top else "no feasible configuration")
        all_trials = search.table(records, s.objective, s.floor_on, s.confidence)
        with TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "pareto.md").write_text(front_table + "\n")
            (out / "trials.md").write_text(all_trials + "\n")
            (out / "result.txt").write_text(text + "\n")
            floor_y = search.floor_accuracy(records, s.floor, s.floor_on)
            search.plot(records, s.objective, floor_y, plan.z, out / "pareto.png")
            client.log_artifacts(parent, str(out), "search")
        # The grid's leaderboard files too, over the runs this study made in any session; none when every
        # point was reused from another sweep (then no run carries this study's sweep id).
        with contextlib.suppress(ValueError):
            sweep.log_leaderboard(parent, self.config.tracking, sweep_id)
        sweep.close_parent(parent, self.reports)
        print(text, flush=True)
        failed = [r for r in records if r.verdict == search.FAILED and r.duplicate_of is None]
        for r in failed:
            print(f"  failed: trial {r.number} {search.describe(r.params)}: {r.error}", file=sys.stderr)
        if top is None:
            sys.exit(EXIT_NO_FEASIBLE)
        return [self.reports]


def low_fidelity_verdict(
    trial: Any, b: search.Bound, step: int, size: float, best: float | None
) -> str | None:
    """Report the upper bound to Optuna and ask its pruner; then prune what cannot become the best.

    Returns the pruning verdict, or None when the trial deserves the full evaluation.
    """
    trial.report(b.upper, step)
    if trial.should_prune():
        return search.PRUNED_FLOOR
    if search.not_smaller(size, best):
        return search.PRUNED_SIZE
    return None


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _exhausted(records: list[TrialRecord]) -> str:
    if search.best(records) is None:
        return "quantsweep: every configuration that can be built has been tried"
    return "quantsweep: every configuration predicted smaller than the best feasible one has been tried"


def _records(trials: list[Any]) -> list[TrialRecord]:
    """The records of finished trials (interrupted ones have none), numbered."""
    found = []
    for trial in trials:
        if search.RECORD in trial.user_attrs:
            found.append(TrialRecord(**(trial.user_attrs[search.RECORD] | {"number": trial.number})))
    return found


def _best_size(study: Any) -> float | None:
    """The smallest feasible size so far, across resumptions (from the storage, not this session)."""
    feasible = [
        t.value
        for t in study.get_trials(deepcopy=False, states=(_state("COMPLETE"),))
        if all(v <= 0 for v in t.constraints.values())
    ]
    return min(feasible, default=None)


def _earlier(study: Any, params: dict[str, str], first_trial: int) -> Any:
    """The trial that evaluated this configuration and whose outcome `search.stands`."""
    trials = study.get_trials(deepcopy=False)
    for r in _records(trials):
        if r.params == params and search.stands(r, first_trial):
            return trials[r.number]
    return None


def _copy(study: Any, t: _Trial, number: int) -> None:
    """A repeated configuration: nothing is evaluated; the trial carries the original's record and is closed
    as FAIL, so the sampler does not take one observation for two (TPE ignores failed trials, and a repeat
    told as COMPLETE would pull it back to the same configuration again and again)."""
    original = study.get_trials(deepcopy=False)[number]
    record = original.user_attrs[search.RECORD] | {"duplicate_of": number, "number": t.handle.number}
    t.handle.set_user_attr(search.RECORD, record)
    study.tell(t.handle, state=_state("FAIL"))
    print(f"quantsweep: trial {t.handle.number} repeats trial {number}: {record['verdict']}", flush=True)


def _tell_failed(study: Any, t: _Trial, report: sweep.PointReport) -> None:
    t.record.verdict, t.record.error = search.FAILED, report.error
    t.handle.set_user_attr(search.RECORD, asdict(t.record))
    study.tell(t.handle, state=_state("FAIL"))
    print(
        f"quantsweep: trial {t.record.number} {search.describe(t.record.params)}: failed: {report.error}",
        flush=True,
    )


def _fail_stale(study: Any) -> None:
    """Trials left RUNNING by a killed session are marked FAIL; their configurations may come up again."""
    for trial in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
        study.tell(trial.number, state=_state("FAIL"), skip_if_finished=True)


def _counts(records: list[TrialRecord]) -> dict[str, int]:
    """The study's totals, across resumptions; repeats cost nothing and are counted apart."""
    own = [r for r in records if r.duplicate_of is None]
    pruned = [r for r in own if r.verdict in (search.PRUNED_FLOOR, search.PRUNED_SIZE)]
    return {
        "trials": len(records),
        "trials_complete": sum(r.verdict in (search.FEASIBLE, search.INFEASIBLE) for r in own),
        "trials_feasible": sum(r.verdict == search.FEASIBLE for r in own),
        "trials_pruned_floor": sum(r.verdict == search.PRUNED_FLOOR for r in own),
        "trials_pruned_size": sum(r.verdict == search.PRUNED_SIZE for r in own),
        "trials_failed": sum(r.verdict == search.FAILED for r in own),
        "trials_repeated": len(records) - len(own),
        # Evaluations that produced numbers (a failed point is counted among the failures).
        "evaluations_low": sum(
            r.stage is not None and r.low_run_id is not None and not r.low_reused for r in own
        ),
        "evaluations_full": sum(r.stage == "full" and not r.full_reused for r in own),
        "evaluations_reused": sum(r.low_reused for r in own) + sum(r.full_reused for r in own),
        "full_evaluations_saved": len(pruned),
    }
