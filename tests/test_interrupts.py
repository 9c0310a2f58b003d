"""`kill` (SIGTERM) ends a run KILLED even when the KeyboardInterrupt its handler raises lands where Python
ignores exceptions (a `__del__`), as it did on CI on 2026-11-29: the run then finished as if never stopped."""

from __future__ import annotations

import os
import signal

import mlflow
import pytest

from quantsweep import interrupts, tracking


@pytest.fixture
def sigterm_handled(monkeypatch):
    """This process's SIGTERM turned into KeyboardInterrupt, as a run's is; put back afterwards."""
    monkeypatch.setattr(interrupts, "_received", [])
    previous = signal.getsignal(signal.SIGTERM)
    interrupts.interrupt_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, previous)


class KilledWhileCollected:
    """Sends this process SIGTERM from its finaliser: the handler runs inside `__del__`, where the
    KeyboardInterrupt it raises is printed as "Exception ignored" and dropped."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_swallowed_in_a_finaliser_still_ends_the_run_killed(sigterm_handled, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("interrupts")
    after = []
    with pytest.raises(KeyboardInterrupt), tracking.Tracked(experiment, "killed", {}, None) as run:
        KilledWhileCollected()  # collected at once: the signal arrives and its exception is swallowed
        after.append("the body went on")  # as the CI run did
    assert after == ["the body went on"]
    assert mlflow.get_run(run.run_id).info.status == "KILLED"


def test_the_next_phase_does_not_start_after_a_swallowed_sigterm(sigterm_handled):
    from quantsweep import logs

    KilledWhileCollected()
    started = []
    with pytest.raises(KeyboardInterrupt), logs.phase("quantizing"):
        started.append(True)
    assert started == []


def test_nothing_is_raised_without_a_signal(sigterm_handled):
    interrupts.check()
    assert interrupts.pending() is None
