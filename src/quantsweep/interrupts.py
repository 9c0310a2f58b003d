"""`kill` ends a run or a sweep like Ctrl-C does: the run is marked KILLED in MLflow, never left RUNNING."""

from __future__ import annotations

import signal
from typing import Any


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt in this process, so the same clean-up paths handle both."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
