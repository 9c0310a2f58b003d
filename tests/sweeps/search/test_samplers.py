"""The samplers on real Optuna studies, asked and told the way the sweeper does: `smallest_first` walks the
predicted sizes up to the best feasible configuration; the grid runs out without raising."""

from __future__ import annotations

from dataclasses import asdict

import optuna
import pytest
from optuna.trial import TrialState

from quantsweep.sweeps.search import decisions, samplers
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.samplers import AskTellGridSampler, SmallestFirstSampler
from quantsweep.sweeps.search.space import key

NAMES = ["a", "b", "c", "d"]
ORDER = [{"scheme": n} for n in NAMES]
PREDICTED = {key(c): size for c, size in zip(ORDER, (1.0, 2.0, 3.0, 4.0), strict=True)}
STATES = {decisions.FEASIBLE: TrialState.COMPLETE, decisions.INFEASIBLE: TrialState.COMPLETE}
STATES |= {decisions.PRUNED_FLOOR: TrialState.PRUNED, decisions.FAILED: TrialState.FAIL}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ask(study: optuna.Study) -> optuna.trial.Trial:
    trial = study.ask()
    trial.suggest_categorical("scheme", NAMES[::-1])  # the sampler's choice, not the list's order
    return trial


def tell(study: optuna.Study, trial: optuna.trial.Trial, verdict: str) -> None:
    trial.set_user_attr(decisions.RECORD, asdict(TrialRecord(trial.params, verdict)))
    value = PREDICTED[key(trial.params)] if STATES[verdict] == TrialState.COMPLETE else None
    study.tell(trial, value, state=STATES[verdict])


def test_smallest_first_asks_in_ascending_size_and_stops_below_the_best_feasible(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=storage, sampler=SmallestFirstSampler(ORDER, PREDICTED, 0))
    # A batch of two: the two smallest, the second skipping the one being evaluated.
    first, second = ask(study), ask(study)
    assert [first.params, second.params] == ORDER[:2]
    tell(study, first, decisions.PRUNED_FLOOR)
    tell(study, second, decisions.FAILED)
    # Failed in this session: not retried now; c is next, and feasible.
    third = ask(study)
    assert third.params == ORDER[2]
    tell(study, third, decisions.FEASIBLE)
    assert samplers.exhausted(study) == (
        "quantsweep: every configuration predicted smaller than the best feasible one has been tried"
    )
    # The next session retries b, the only configuration that can still beat c, then stops.
    resumed = optuna.load_study(
        study_name=study.study_name,
        storage=storage,
        sampler=SmallestFirstSampler(ORDER, PREDICTED, len(study.trials)),
    )
    assert samplers.exhausted(resumed) is None
    again = ask(resumed)
    assert again.params == ORDER[1]
    tell(resumed, again, decisions.INFEASIBLE)
    assert samplers.exhausted(resumed) is not None
    assert [t.params["scheme"] for t in resumed.trials] == ["a", "b", "c", "b"]


def test_smallest_first_without_a_feasible_one_walks_to_the_largest():
    study = optuna.create_study(sampler=SmallestFirstSampler(ORDER, PREDICTED, 0))
    for expected in ORDER:
        assert samplers.exhausted(study) is None
        trial = ask(study)
        assert trial.params == expected
        tell(study, trial, decisions.INFEASIBLE)
    assert samplers.exhausted(study) == "quantsweep: every configuration that can be built has been tried"


def test_smallest_first_answers_only_its_configurations_parameters():
    study = optuna.create_study(sampler=SmallestFirstSampler(ORDER, PREDICTED, 0))
    trial = ask(study)
    with pytest.raises(ValueError, match="scheme.group_size is not a parameter"):
        trial.suggest_categorical("scheme.group_size", ["32", "64"])


def test_samplers_that_never_run_out_are_not_exhausted():
    space = {"scheme": NAMES}
    for sampler in (optuna.samplers.TPESampler(seed=0), AskTellGridSampler(space, seed=0)):
        assert samplers.exhausted(optuna.create_study(sampler=sampler)) is None


def test_grid_sampler_exhausts_in_ask_and_tell_without_error():
    """Optuna's GridSampler calls study.stop() after the last cell, which raises outside optimize()."""
    space = {"scheme": ["W4A16", "W8A8"], "ignore": ["none", "lm_head"]}
    study = optuna.create_study(sampler=AskTellGridSampler(space, seed=0))
    seen = set()
    for _ in range(4):
        trial = study.ask()
        seen.add(tuple(trial.suggest_categorical(k, v) for k, v in space.items()))
        study.tell(trial, 1.0)
    assert len(seen) == 4 and study.sampler.is_exhausted(study)
