"""Where output goes: quantsweep's own lines to the terminal, the libraries' output to each run's log.

The libraries print every which way: Python logging through the root's or their own handlers
(transformers, lm-eval, datasets, mlflow), llm-compressor's loguru sink, `warnings`, tqdm bars, torch's
C++ messages, lm-eval's subprocess. So during an MLflow run (`tracking.Tracked`) file descriptors 1 and 2
point into a pipe whose reader writes the run's `logs.txt`; quantsweep's own lines (`say`, `phase`) go to
the terminal the capture saved. `verbose=true` copies the captured output to the terminal as it comes;
otherwise, on a terminal, the bars of the long phases (lm-eval's requests, llm-compressor's layer passes,
vLLM's prompts) show as one line, cleared when the bar ends. Outside runs, library records are kept off
the console by a filter; they still reach Hydra's `<job>.log`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from quantsweep import interrupts
from quantsweep.tables import duration

# tqdm bars of the phases that take minutes on a real model.
LONG_BARS = re.compile(
    rb"(Running \w+ requests|\(\d+/\d+\): (Calibrating|Propagating)|Processed prompts): +\d+%"
)
CLEAR_LINE = b"\r\x1b[K"
# Libraries whose loggers print through handlers of their own rather than the root's.
OWN_HANDLERS = ("mlflow", "transformers", "torch", "datasets")
# Logger names whose records are quantsweep's own.
OWN_LOGGERS = ("quantsweep",)

# Until setup(): code that runs the pipeline in-process (tests, notebooks) keeps the libraries' output.
_verbose = True
_active: list[Capture] = []


class Callback(HydraCallback):
    """`hydra.callbacks` entry (conf/config.yaml): `setup` once Hydra has configured logging, in the
    sweeper's process and in every job (each job's logging is configured anew)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        setup(config.verbose)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        setup(config.verbose)


def setup(verbose: bool) -> None:
    """Library records stay off the console outside runs (they still reach Hydra's `<job>.log`), and
    the libraries' output in runs stays off the terminal, unless `verbose`."""
    global _verbose
    _verbose = verbose
    import mlflow  # noqa: F401  (configures its own handler on import: filter it after)

    for name in OWN_HANDLERS:  # Hydra's console handlers have the filter from its logging configs
        for handler in logging.getLogger(name).handlers:
            console = not isinstance(handler, logging.FileHandler)
            if console and not any(isinstance(f, LibraryFilter) for f in handler.filters):
                handler.addFilter(LibraryFilter())


class LibraryFilter(logging.Filter):
    """A console handler passes library records when verbose or captured into a run, or from ERROR up."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in OWN_LOGGERS
        return own or _verbose or bool(_active) or record.levelno >= logging.ERROR


class Capture:
    """File descriptors 1 and 2 go into `path` (and the terminal, when verbose) from start() to stop()."""

    def __init__(self, path: Path):
        self.path = path

    def start(self) -> Capture:
        _flush()
        self.saved = (os.dup(1), os.dup(2))
        err = (_active[0] if _active else self).saved[1]
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self.pump = Pump(read, self.path.open("ab"), err, _verbose, bars=not _verbose and os.isatty(err))
        self.pump.start()
        _active.append(self)
        return self

    def stop(self) -> None:
        """Give the terminal back; the log is whole once every writer of the pipe has closed it."""
        _flush()
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        _active.remove(self)
        # A child process still holding the pipe (none should) must not hang the run's end.
        self.pump.join(timeout=30)


class Pump(threading.Thread):
    """Copies the pipe into the log, a line as a terminal would show it (a bar's last state, not every
    redraw); to the terminal, everything when verbose, else the long phases' bars if `bars`."""

    def __init__(self, read: int, log: IO[bytes], err: int, verbose: bool, bars: bool):
        super().__init__(name="quantsweep-logs", daemon=True)
        self.read, self.log, self.err = read, log, err
        self.verbose, self.bars = verbose, bars
        self.lock = threading.Lock()
        self.line = b""
        self.shown = False

    def run(self) -> None:
        try:
            while chunk := os.read(self.read, 1 << 16):
                with self.lock, suppress(OSError):  # a full disk or a closed terminal must not stop the
                    if self.verbose:  # draining: the run's writers would block on a full pipe
                        _write(self.err, chunk)
                    self.feed(chunk)
        finally:
            with self.lock, suppress(OSError):
                if self.line:
                    self.log.write(self.line + b"\n")
                self.clear()
            self.log.close()
            os.close(self.read)

    def feed(self, chunk: bytes) -> None:
        for piece in re.split(rb"([\r\n])", chunk):
            if piece == b"\n":
                self.log.write(self.line + b"\n")
                if LONG_BARS.match(self.line):  # a bar's last state: its phase is over
                    self.clear()
                self.line = b""
            elif piece == b"\r":
                self.line = b""
            elif piece:
                self.line += piece
                if self.bars and LONG_BARS.match(self.line):
                    self.show(self.line)
        self.log.flush()

    def show(self, bar: bytes) -> None:
        """The bar on one terminal line, cut to the terminal's width so that `\\r` returns to its start."""
        width = (os.get_terminal_size(self.err).columns or 80) - 1  # 0: a terminal that never said
        text = bar.decode(errors="replace").rstrip()[:width]
        _write(self.err, b"\r" + text.encode() + b"\x1b[K")
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            _write(self.err, CLEAR_LINE)
            self.shown = False

    def print(self, data: bytes, fd: int) -> None:
        """A line of quantsweep's own on the terminal, in place of the bar shown (if one is)."""
        with self.lock:
            self.clear()
            _write(fd, data)


def say(message: str, err: bool = False) -> None:
    """One of quantsweep's own lines: on the terminal (stderr if `err`), and in the run's log if capturing.

    In a run the line also goes through the pipe, after what the libraries wrote before it; when verbose
    the pump shows it from there, in the same order."""
    if not _active:
        print(message, file=sys.stderr if err else sys.stdout, flush=True)
        return
    data = message.encode() + b"\n"
    _flush()
    pump = _active[-1].pump
    if not pump.verbose:
        pump.print(data, _active[0].saved[1 if err else 0])
    _write(1, data)


@contextmanager
def phase(what: str) -> Iterator[None]:
    """`quantsweep: <what>…`, then `quantsweep: <what>: done in 1m05s` once it has succeeded."""
    interrupts.check()  # a SIGTERM whose KeyboardInterrupt was lost stops the run before more work
    say(f"quantsweep: {what}…")
    start = time.perf_counter()
    yield
    say(f"quantsweep: {what}: done in {duration(time.perf_counter() - start)}")


def relay(stream: IO[bytes], keep: int = 4000) -> str:
    """Copy a subprocess's piped output to fd 2 as it comes (in a run: its log, live when verbose);
    returns the last `keep` characters, for an error message."""
    tail = b""
    _flush()
    while chunk := os.read(stream.fileno(), 1 << 16):
        _write(2, chunk)
        tail = (tail + chunk)[-4 * keep :]
    return tail.decode(errors="replace")[-keep:]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None and not stream.closed:
            stream.flush()


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
