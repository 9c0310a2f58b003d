"""Claims: one worker at a time works on a fingerprint, across processes and hosts, through the MLflow store.

A worker claims a fingerprint by starting its run (RUNNING, tagged with the fingerprint, its owner and a
heartbeat), then looks at every live RUNNING run of that fingerprint: the earliest started (run id breaking
ties) wins, the others withdraw their run and wait for the winner to finish, then reuse its result. A claim is
live while its heartbeat is fresher than LEASE_S and, on the claimant's own host, its process exists; a dead
claim (kill -9, a lost node) is marked KILLED by the next worker that meets it, so work resumes after a crash.
The store is the only thing workers share, so this works with SQLite on one host and a tracking server for a
cluster alike.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from quantsweep.tracking import FINGERPRINT, Tracked, find_finished

OWNER = "quantsweep.owner"
HEARTBEAT = "quantsweep.heartbeat"
# A claimant refreshes its heartbeat this often; one silent for LEASE_S is taken to be dead.
INTERVAL_S = 15.0
LEASE_S = 120.0
# How often a waiting worker looks again, and the longest it waits for one claim before giving up.
POLL_S = 2.0
MAX_WAIT_S = 24 * 3600.0


def owner_tags() -> dict[str, str]:
    """The tags that make a new run a claim: who holds it, and since when it is known alive."""
    return {OWNER: f"{socket.gethostname()}:{os.getpid()}", HEARTBEAT: f"{time.time():.3f}"}


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def owner_alive(owner: str, beat: float, now: float | None = None) -> bool:
    """Whether a claimant (`host:pid` with its last heartbeat) still works: its heartbeat is fresher than
    LEASE_S and, on this host, its process exists (so a killed worker's claim is free at once here)."""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid)):
        return False
    return (now if now is not None else time.time()) - beat < LEASE_S


def alive(run: Any, now: float | None = None) -> bool:
    """Whether a RUNNING run's claimant still works on it."""
    tags = run.data.tags
    return owner_alive(tags.get(OWNER, ""), float(tags.get(HEARTBEAT, run.info.start_time / 1000)), now)


def _running(experiment_id: str, fp: str) -> list[Any]:
    from mlflow import MlflowClient

    query = f"tags.`{FINGERPRINT}` = '{fp}' and attributes.status = 'RUNNING'"
    return MlflowClient().search_runs([experiment_id], filter_string=query)


def reap(experiment_id: str, fp: str) -> list[str]:
    """Mark dead claims of this fingerprint KILLED; returns their run ids."""
    from mlflow import MlflowClient

    dead = [run.info.run_id for run in _running(experiment_id, fp) if not alive(run)]
    for run_id in dead:
        MlflowClient().set_terminated(run_id, "KILLED")
    return dead


def live_claims(experiment_id: str, fp: str) -> list[str]:
    """Run ids of the live claims on this fingerprint, earliest first."""
    live = [run for run in _running(experiment_id, fp) if alive(run)]
    return [run.info.run_id for run in sorted(live, key=lambda r: (r.info.start_time, r.info.run_id))]


def wait_for(experiment_id: str, fp: str, what: str) -> None:
    """Block while other workers hold live claims (bounded by their liveness and MAX_WAIT_S)."""
    deadline = time.monotonic() + MAX_WAIT_S
    announced = False
    while held := live_claims(experiment_id, fp):
        if not announced:
            print(f"quantsweep: {what} is being evaluated by run {held[0]}; waiting for it", flush=True)
            announced = True
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: run {held[0]} held its claim for over {MAX_WAIT_S:.0f} s")
        time.sleep(POLL_S)
        reap(experiment_id, fp)


def acquire(experiment_id: str, fp: str, what: str, start: Callable[[], Tracked], reuse: bool = True) -> Any:
    """This worker's open run once it alone holds the claim, or (with `reuse`) the FINISHED run another
    worker made meanwhile.

    A worker proceeds only when its own run is the one live claim: each claimant starts its run before it
    looks, so of two that overlap at least one sees the other and withdraws; both withdrawing is resolved by a
    random pause before the next try. A claim that wins looks for a FINISHED run once more, because the
    other worker may have finished between the first look and this claim (its run is then no longer live)."""
    while True:
        done = find_finished(experiment_id, fp) if reuse else None
        if done is not None:
            return done
        reap(experiment_id, fp)
        tracked = start()
        if live_claims(experiment_id, fp) == [tracked.run_id]:
            done = find_finished(experiment_id, fp) if reuse else None
            if done is None:
                return tracked
            tracked.withdraw()
            return done
        tracked.withdraw()
        wait_for(experiment_id, fp, what)
        time.sleep(random.uniform(0.0, POLL_S))


@contextmanager
def heartbeat(run_id: str) -> Iterator[None]:
    """Refresh the claim's heartbeat in the background while the body works."""
    from mlflow import MlflowClient

    stop = threading.Event()

    def beat() -> None:
        client = MlflowClient()
        while not stop.wait(INTERVAL_S):
            try:
                client.set_tag(run_id, HEARTBEAT, f"{time.time():.3f}")
            except Exception:  # a store hiccup (server restart): the next beat retries
                continue

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=INTERVAL_S)
