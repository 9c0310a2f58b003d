"""What "smallest" means (`search.objective`): each objective turns a point's measured metrics, or a
checkpoint size predicted before any work, into the value the study minimises, and says how to print it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quantsweep.sizing import formulas
from quantsweep.tables import GIB


@dataclass(frozen=True)
class Objective:
    # (a point's metrics, search.gpu_mem_gb) → the value to minimise.
    measured: Callable[[dict[str, float], float], float]
    # (a predicted checkpoint's bytes, search.gpu_mem_gb) → the same value, predicted.
    predicted: Callable[[float, float], float]
    # How values print: divided by `scale`, with `digits` decimals, then `unit`; `axis` labels a plot's.
    scale: float
    digits: int
    unit: str
    axis: str
    # Whether search.gpu_mem_gb changes the value (then it is part of the study's identity).
    per_gpu: bool = False

    def text(self, value: float | None) -> str:
        return "-" if value is None else f"{value / self.scale:.{self.digits}f} {self.unit}"


def _vram(metrics: dict[str, float]) -> float:
    """The estimated weights vRAM of a measured point, in bytes."""
    return metrics["weights_vram_est_gib"] * GIB


def _gpus(vram: float, gpu_mem_gb: float) -> float:
    return float(formulas.gpus_needed_total(vram, gpu_mem_gb))


OBJECTIVES: dict[str, Objective] = {
    "disk_bytes": Objective(
        measured=lambda metrics, _: float(metrics["disk_bytes"]),
        predicted=lambda disk, _: float(disk),
        scale=GIB,
        digits=4,
        unit="GiB",
        axis="disk_bytes (GiB)",
    ),
    # The vRAM estimate of a predicted checkpoint is its bytes × the weights' overhead, as measured.
    "weights_vram": Objective(
        measured=lambda metrics, _: _vram(metrics),
        predicted=lambda disk, _: disk * formulas.OVERHEAD,
        scale=GIB,
        digits=4,
        unit="GiB",
        axis="weights_vram (GiB)",
    ),
    "gpus": Objective(
        measured=lambda metrics, gpu_mem_gb: _gpus(_vram(metrics), gpu_mem_gb),
        predicted=lambda disk, gpu_mem_gb: _gpus(disk * formulas.OVERHEAD, gpu_mem_gb),
        scale=1.0,
        digits=0,
        unit="GPU",
        axis="GPUs",
        per_gpu=True,
    ),
}
