"""`kill` ends a run or a sweep like Ctrl-C does: the run is marked KILLED in MLflow, never left RUNNING.

The SIGTERM handler raises KeyboardInterrupt where the main thread happens to be. Python drops an exception
raised inside a `__del__`, a weakref callback or a garbage-collection finaliser ("Exception ignored in …"),
and torch and transformers run many, so a handler that only raised could lose the signal and let the run
finish as if never asked to stop. The handler therefore also records the signal, and the run's phases and
its end (`check`) raise it again if it was lost.
"""

from __future__ import annotations

import signal
from typing import Any

_received: list[int] = []


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt in this process, so the same clean-up paths handle both."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def pending() -> KeyboardInterrupt | None:
    """The KeyboardInterrupt of a SIGTERM this process was sent, if any (None otherwise)."""
    return KeyboardInterrupt(f"signal {_received[0]}") if _received else None


def check() -> None:
    """Raise KeyboardInterrupt if this process was sent SIGTERM: a no-op unless the handler's own exception
    was swallowed (then the signal is honoured here, at the next phase)."""
    if (interrupt := pending()) is not None:
        raise interrupt
