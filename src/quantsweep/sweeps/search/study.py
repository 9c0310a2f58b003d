"""The Optuna study in its storage: created or resumed, refused when begun with other settings, cleared of
trials a dead worker left RUNNING (several workers may share one study); and the trial bookkeeping that reads,
copies or closes trials."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.pruners import ThresholdPruner
from optuna.trial import Trial, TrialState

from quantsweep import claims
from quantsweep.errors import ConfigError
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.plan import Plan
from quantsweep.sweeps.search.samplers import SAMPLERS
from quantsweep.sweeps.search.space import describe
from quantsweep.tracking import redact

# The study user attribute that holds the settings its constraints were computed with.
IDENTITY = "quantsweep.identity"


@dataclass
class InFlight:
    """A trial being evaluated: Optuna's handle, what it has found so far, and its job's overrides."""

    handle: Trial
    record: TrialRecord
    overrides: list[str]


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The study storage; workers starting together on a new database race to create its tables, and the
    losers find them made on the next try."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(2):
        with suppress(SQLAlchemyError):
            return optuna.storages.RDBStorage(url)
        time.sleep(1.0 + attempt)
    return optuna.storages.RDBStorage(url)


def open_study(plan: Plan) -> tuple[optuna.Study, int]:
    """Create or resume the study; refuse one begun with other settings (its constraints would lie).

    Returns the study and the number of this session's first trial (a failure is retried only in a later
    session)."""
    s = plan.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if s.storage.startswith("sqlite:///"):
        Path(s.storage.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = _storage(s.storage)
        existing = len(optuna.load_study(study_name=s.study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        existing = 0
    except Exception as exc:  # a bad URL, a missing driver, an unreadable database
        raise ConfigError(
            f"search.storage={redact(s.storage)!r} cannot be opened: {redact(str(exc))}"
        ) from exc
    study = optuna.create_study(
        storage=storage,
        sampler=SAMPLERS[s.sampler].make(plan, existing),
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
            f"search.study_name={s.study_name!r} in {redact(s.storage)} was run with other settings "
            f"({', '.join(f'{k}: {stored.get(k)} -> {plan.identity[k]}' for k in changed)}); "
            "give another search.study_name to start a new study"
        )
    fail_stale(study)
    return study, existing


def claim(trial: Trial) -> None:
    """Mark a new trial as this worker's, with a first heartbeat: workers sharing the study tell a trial in
    flight elsewhere from one a killed session left RUNNING (quantsweep.claims' rule, on trial attributes)."""
    for key, value in claims.owner_tags().items():
        trial.set_user_attr(key, value)


@contextmanager
def beating(trials: list[InFlight]) -> Iterator[None]:
    """Refresh the heartbeat of the trials in flight while their batch is evaluated."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(claims.INTERVAL_S):
            for t in trials:
                with suppress(Exception):  # a finished trial, or a storage hiccup: the next beat retries
                    t.handle.set_user_attr(claims.HEARTBEAT, f"{time.time():.3f}")

    thread = threading.Thread(target=beat, name="trial-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=claims.INTERVAL_S)


def fail_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by a dead worker (a killed session, a lost node) are marked FAIL, so their
    configurations may come up again; trials other live workers are evaluating are left alone."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        if not claims.owner_alive(attrs.get(claims.OWNER, ""), float(attrs.get(claims.HEARTBEAT, started))):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def best_size(study: optuna.Study) -> float | None:
    """The smallest feasible size so far, across resumptions (from the storage, not this session)."""
    feasible = [
        t.value
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and all(v <= 0 for v in t.constraints.values())
    ]
    return min(feasible, default=None)


def earlier(study: optuna.Study, params: dict[str, str], first_trial: int) -> int | None:
    """The number of the trial that evaluated this configuration and whose outcome `decisions.stands`."""
    for r in decisions.records(study.get_trials(deepcopy=False)):
        if r.params == params and decisions.stands(r, first_trial):
            return r.number
    return None


def copy_repeat(study: optuna.Study, t: InFlight, number: int) -> None:
    """A repeated configuration: nothing is evaluated; the trial carries the original's record and is closed
    as FAIL, so the sampler does not take one observation for two (TPE ignores failed trials, and a repeat
    told as COMPLETE would pull it back to the same configuration again and again)."""
    original = study.get_trials(deepcopy=False)[number]
    record = original.user_attrs[decisions.RECORD] | {"duplicate_of": number, "number": t.handle.number}
    t.handle.set_user_attr(decisions.RECORD, record)
    study.tell(t.handle, state=TrialState.FAIL)
    print(f"quantsweep: trial {t.handle.number} repeats trial {number}: {record['verdict']}", flush=True)


def tell_failed(study: optuna.Study, t: InFlight, verdict: str, error: str | None) -> None:
    """Close a trial as FAIL with its verdict and why: a failed evaluation, or a configuration the plan
    refused (no job launched; the grid counts its cell visited, TPE ignores it as it does repeats)."""
    t.record.verdict, t.record.error = verdict, error
    t.handle.set_user_attr(decisions.RECORD, asdict(t.record))
    study.tell(t.handle, state=TrialState.FAIL)
    print(f"quantsweep: trial {t.record.number} {describe(t.record.params)}: {verdict}: {error}", flush=True)
