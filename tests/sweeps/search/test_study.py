"""The study in a real SQLite storage: created, resumed, refused when begun with other settings, and
cleared of trials a killed session left RUNNING; repeats carry their original's record."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import asdict

import optuna
import pytest
from optuna.trial import TrialState

from quantsweep import claims
from quantsweep.errors import ConfigError
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.samplers import SmallestFirstSampler
from quantsweep.sweeps.search.study import InFlight, claim, copy_repeat, earlier, fail_stale, open_study


def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_a_study_is_resumed_and_refused_when_its_settings_changed(make_plan):
    study, first = open_study(make_plan(sampler="smallest_first"))
    assert first == 0 and isinstance(study.sampler, SmallestFirstSampler)
    killed = study.ask()  # a session killed mid-trial (its process gone) leaves it RUNNING
    killed.set_user_attr(claims.OWNER, f"{socket.gethostname()}:{dead_pid()}")
    resumed, first = open_study(make_plan(sampler="smallest_first"))
    assert first == 1 and [t.state for t in resumed.trials] == [TrialState.FAIL]
    assert resumed.sampler.first_trial == 1
    with pytest.raises(
        ConfigError, match=r"search.study_name='s' in .* was run with other settings \(floor: 0.5 -> 0.6\)"
    ):
        open_study(make_plan(floor=0.6))


def test_a_storage_that_cannot_be_opened_is_refused_in_one_line(make_plan):
    bad = make_plan()
    bad.search.storage = "nosuchdb://x"
    with pytest.raises(ConfigError, match="search.storage='nosuchdb://x' cannot be opened"):
        open_study(bad)


def test_trials_left_running_by_a_dead_worker_are_failed_and_live_ones_kept(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=storage, study_name="s")
    killed_here = study.ask()  # a session on this host whose process is gone
    claim(killed_here)
    killed_here.set_user_attr(claims.OWNER, f"{socket.gethostname()}:{dead_pid()}")
    lost_node = study.ask()  # another host's worker, silent for longer than the lease
    lost_node.set_user_attr(claims.OWNER, "elsewhere:1")
    lost_node.set_user_attr(claims.HEARTBEAT, str(time.time() - claims.LEASE_S - 1))
    busy = study.ask()  # another worker evaluating right now
    claim(busy)
    busy.set_user_attr(claims.OWNER, "elsewhere:2")
    fail_stale(optuna.load_study(study_name="s", storage=storage))
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]


def test_a_repeat_carries_the_original_record_and_is_not_an_observation():
    study = optuna.create_study()
    original = study.ask()
    record = TrialRecord({"scheme": "a"}, decisions.FEASIBLE, full_run_id="run-1")
    original.set_user_attr(decisions.RECORD, asdict(record))
    study.tell(original, 1.0)
    # The trial whose outcome stands for a configuration; none for one never tried.
    assert earlier(study, {"scheme": "a"}, 0) == 0 and earlier(study, {"scheme": "b"}, 0) is None
    handle = study.ask()
    copy_repeat(study, InFlight(handle, TrialRecord({"scheme": "a"}, decisions.FAILED), []), 0)
    repeat = study.trials[1]
    assert repeat.state == TrialState.FAIL
    copied = decisions.records([repeat])[0]
    assert (copied.duplicate_of, copied.full_run_id, copied.verdict) == (0, "run-1", decisions.FEASIBLE)
    # A repeat's copy is not its configuration's outcome: nothing stands on it.
    assert not decisions.stands(copied, 0)
