"""The samplers `search.sampler` names, all Optuna samplers, so the sweeper asks every one the same way.

`smallest_first` walks the configurations in ascending predicted size; `tpe` is Optuna's TPE; `grid` is
Optuna's GridSampler, every combination once in a seeded order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.space import Key, describe, key

if TYPE_CHECKING:
    from quantsweep.sweeps.search.plan import Plan


class AskTellGridSampler(GridSampler):
    """Optuna's GridSampler without its `study.stop()` after the last cell, which raises outside
    `study.optimize` (optuna#5141); the sweeper stops by itself once every configuration is tried."""

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        return None


class SmallestFirstSampler(BaseSampler):
    """Each new trial gets the smallest configuration by predicted size that is neither evaluated (its
    outcome standing) nor being evaluated, while one predicted smaller than the best feasible trial is left
    (`decisions.next_smallest`, on the study's trials, across resumptions).

    As Optuna's GridSampler does, it chooses in `before_trial` and answers each `suggest_categorical` of
    the trial from that choice; `exhausted` tells the sweeper, before it asks, that nothing is left.
    """

    def __init__(self, order: list[dict[str, str]], predicted: dict[Key, float], first_trial: int) -> None:
        self.order, self.predicted = order, predicted
        # Trials numbered from here on belong to this session: one that failed here is not retried now.
        self.first_trial = first_trial
        self._chosen: dict[int, dict[str, str]] = {}

    def next_configuration(self, study: Study) -> dict[str, str] | None:
        trials = study.get_trials(deepcopy=False)
        busy = [key(self._chosen.get(t.number, t.params)) for t in trials if t.state == TrialState.RUNNING]
        found = decisions.records(trials)
        return decisions.next_smallest(self.order, self.predicted, found, self.first_trial, busy)

    def exhausted(self, study: Study) -> str | None:
        if self.next_configuration(study) is not None:
            return None
        if decisions.best(decisions.records(study.get_trials(deepcopy=False))) is None:
            return "quantsweep: every configuration that can be built has been tried"
        return "quantsweep: every configuration predicted smaller than the best feasible one has been tried"

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        chosen = self.next_configuration(study)
        if chosen is None:
            raise RuntimeError("smallest_first has no configuration left: ask exhausted() before study.ask()")
        self._chosen[trial.number] = chosen

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        chosen = self._chosen[trial.number]
        if param_name not in chosen:
            raise ValueError(
                f"{param_name} is not a parameter of the configuration chosen: {describe(chosen)}"
            )
        return chosen[param_name]


@runtime_checkable
class Finite(Protocol):
    """A sampler that can run out of configurations to propose, and says why."""

    def exhausted(self, study: Study) -> str | None: ...


def exhausted(study: Study) -> str | None:
    """Why the study's sampler has nothing left to propose, or None. TPE and the grid always propose: the
    sweeper stops them by its budget, by repeats, and once every configuration is tried."""
    sampler = study.sampler
    return sampler.exhausted(study) if isinstance(sampler, Finite) else None


@dataclass(frozen=True)
class SamplerKind:
    # (the plan, the number of this session's first trial) → the sampler.
    make: Callable[[Plan, int], BaseSampler]
    # Whether it walks the configurations' predicted sizes (the plan predicts them before any work).
    by_predicted_size: bool = False


SAMPLERS: dict[str, SamplerKind] = {
    "smallest_first": SamplerKind(
        lambda plan, first: SmallestFirstSampler(plan.order, plan.predicted, first), by_predicted_size=True
    ),
    # A resumed TPE study reseeds past the trials it has, so it does not replay the first session's draws.
    "tpe": SamplerKind(lambda plan, first: TPESampler(seed=plan.search.seed + first)),
    "grid": SamplerKind(lambda plan, first: AskTellGridSampler(plan.space.dims, seed=plan.search.seed)),
}
