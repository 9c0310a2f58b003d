"""Which accelerator to use and how much of its memory a phase took (measured, not estimated)."""

from __future__ import annotations

import fcntl
import gc
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from quantsweep.errors import ConfigError
from quantsweep.tables import GIB

# Set by the sweeper when the joblib launcher runs points in parallel worker processes on one host: the
# number of workers, each owning resources.gpus_per_point GPUs. Ray and SLURM set CUDA_VISIBLE_DEVICES per
# point themselves, so their points never see it.
ENV_GPUS = "QUANTSWEEP_PARALLEL_GPUS"
_claimed: list[IO] = []


def gpu_count() -> int:
    """GPUs this process can see (0 on CPU); safe before CUDA is initialised (it does not initialise it)."""
    import torch

    return torch.cuda.device_count()


def check_gpus_per_point(gpus: int) -> int:
    if gpus < 1:
        raise ConfigError(f"resources.gpus_per_point={gpus} must be at least 1")
    return gpus


def parallel_points(gpus_per_point: int = 1) -> int:
    """The joblib launcher's workers on this host: one per share of gpus_per_point GPUs (1 on CPU)."""
    return max(1, gpu_count() // check_gpus_per_point(gpus_per_point))


def claim_gpu(cache_dir: str, gpus: int = 1) -> str | None:
    """In a parallel sweep worker on one host, hold `gpus` free GPUs for the worker's lifetime; returns the
    CUDA_VISIBLE_DEVICES it pinned ("2,3"), or None where there is nothing to share out.

    Worker slot k owns GPUs k*gpus .. k*gpus+gpus-1; an exclusive lock per GPU, all taken or none, before
    this process touches CUDA, so sweeps asking for different shares still never share a card. The locks go
    with the process: a crashed worker frees its GPUs.
    """
    check_gpus_per_point(gpus)
    workers = int(os.environ.get(ENV_GPUS, "0"))
    if workers < 2 or _claimed:
        return None
    locks = Path(cache_dir).expanduser() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    for slot in range(workers):
        indices = range(slot * gpus, (slot + 1) * gpus)
        handles = _lock_all([locks / f"gpu-{index}.lock" for index in indices])
        if handles:
            _claimed.extend(handles)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in indices)
            return os.environ["CUDA_VISIBLE_DEVICES"]
    raise RuntimeError(f"all {workers} shares of {gpus} GPU(s) are held by other quantsweep workers")


def _lock_all(paths: list[Path]) -> list[IO]:
    """Exclusive locks on every path, or none (those taken are released) if one is held elsewhere."""
    handles: list[IO] = []
    for path in paths:
        handle = path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            for taken in handles:
                taken.close()
            return []
        handles.append(handle)
    return handles


def accelerator() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


@dataclass
class Peak:
    """A phase's peak memory: `bytes` is the sum over the cards the process sees (each card's own peak,
    so what the phase needed of all of them), `max_card` the largest one card held; None on CPU."""

    bytes: int | None = None
    max_card: int | None = None
    per_card: list[int] = field(default_factory=list)

    @classmethod
    def from_cards(cls, per_card: Sequence[int]) -> Peak:
        """The aggregate of per-card peaks (torch.cuda.max_memory_allocated(i) for each card i)."""
        cards = [int(b) for b in per_card]
        if not cards:
            return cls()
        return cls(bytes=sum(cards), max_card=max(cards), per_card=cards)


@contextmanager
def peak_memory(device: str) -> Iterator[Peak]:
    """Peak CUDA memory allocated inside the block on every visible card (None on CPU, where no figure is
    comparable). A point's process sees only its own cards (CUDA_VISIBLE_DEVICES), and a card it does not
    use reports 0, so the sum is over the cards the point used."""
    import torch

    peak = Peak()
    on_cuda = device.startswith("cuda") and torch.cuda.is_available()
    cards = range(torch.cuda.device_count()) if on_cuda else range(0)
    if on_cuda:
        release()
        for card in cards:
            torch.cuda.reset_peak_memory_stats(card)
    try:
        yield peak
    finally:
        if on_cuda:
            found = Peak.from_cards([torch.cuda.max_memory_allocated(card) for card in cards])
            peak.bytes, peak.max_card, peak.per_card = found.bytes, found.max_card, found.per_card


def cap_fraction(cap_gib: float, total_bytes: int) -> float | None:
    """The share of a card's memory a cap of `cap_gib` is (torch's per-process memory fraction), or None
    when the card holds no more than that (nothing to cap)."""
    fraction = cap_gib * GIB / total_bytes
    return fraction if fraction < 1 else None


@contextmanager
def memory_cap(cap_gib: float | None) -> Iterator[float | None]:
    """Inside the block torch's allocator may reserve at most `cap_gib` GiB on cuda:0, the card
    llm-compressor onloads to (more raises torch.OutOfMemoryError instead of silently taking it); yields
    the fraction set, None where nothing is capped (no cap, no GPU, or a card no larger than the cap).
    Restored afterwards. Other cards are left alone: the onloading path does not use them."""
    import torch

    if cap_gib is None or not torch.cuda.is_available():
        yield None
        return
    fraction = cap_fraction(cap_gib, torch.cuda.get_device_properties(0).total_memory)
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
    try:
        yield fraction
    finally:
        if fraction is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)


def release() -> None:
    """Hand cached GPU memory back so the next phase's peak is its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
