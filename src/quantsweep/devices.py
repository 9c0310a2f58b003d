"""Which accelerator to use and how much of its memory a phase took (measured, not estimated)."""

from __future__ import annotations

import fcntl
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Set by the sweeper when its launcher runs points in parallel worker processes: the number of GPUs.
ENV_GPUS = "QUANTSWEEP_PARALLEL_GPUS"
_claimed: IO | None = None


def gpu_count() -> int:
    """GPUs on this host (0 on CPU): the sweep launcher's number of parallel workers."""
    import torch

    return torch.cuda.device_count()


def claim_gpu(cache_dir: str) -> int | None:
    """In a parallel sweep worker, hold one free GPU for the worker's lifetime (one point per GPU).

    An exclusive lock per GPU, taken before this process touches CUDA, pins it with CUDA_VISIBLE_DEVICES;
    the lock goes with the process, so a crashed worker frees its GPU.
    """
    global _claimed
    count = int(os.environ.get(ENV_GPUS, "0"))
    if count < 2 or _claimed is not None:
        return None
    locks = Path(cache_dir).expanduser() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        handle = (locks / f"gpu-{index}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _claimed = handle
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
        return index
    raise RuntimeError(f"all {count} GPUs are held by other quantsweep workers")


def accelerator() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


@dataclass
class Peak:
    bytes: int | None = None


@contextmanager
def peak_memory(device: str) -> Iterator[Peak]:
    """Peak CUDA memory allocated inside the block (None on CPU, where no figure is comparable)."""
    import torch

    peak = Peak()
    on_cuda = device.startswith("cuda") and torch.cuda.is_available()
    if on_cuda:
        release()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield peak
    finally:
        if on_cuda:
            peak.bytes = int(torch.cuda.max_memory_allocated())


def release() -> None:
    """Hand cached GPU memory back so the next phase's peak is its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
