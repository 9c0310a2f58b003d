"""Which accelerator to use and how much of its memory a phase took (measured, not estimated)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


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
