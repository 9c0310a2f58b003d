"""What "smallest" means (`search.objective`): each objective turns a configuration's sizes — a point's
measured metrics, or its checkpoint and KV cache predicted from the model's config before any work — into
the value the study minimises, and says how to print it.

`weights_vram` and `gpus` count the weights alone; `deployment` and `deployment_gpus` add the KV cache of
`search.concurrency` sequences of `search.context` tokens (default: the model's context), so an FP8 KV
cache (`scheme.kv_cache`), which halves it, can win where the weights alone would not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quantsweep.config import SearchConfig
from quantsweep.sizing import formulas
from quantsweep.tables import GIB


@dataclass(frozen=True)
class Sizes:
    """What an objective reads of one configuration, in bytes; None where the point's metrics lack it."""

    disk: float
    # The weights' serving estimate: params x stored bytes per param x the overhead (sizing.formulas).
    weights_vram: float | None
    kv_per_token: float | None
    # The model's context (max_position_embeddings), None when its config has none.
    max_context: int | None

    @classmethod
    def measured(cls, metrics: dict[str, float]) -> Sizes:
        """A point's logged size metrics (`sizing.measured.footprint`)."""
        vram, per_token, context = (
            metrics.get(name) for name in ("weights_vram_est_gib", "kv_cache_bytes_per_token", "max_context")
        )
        return cls(
            disk=float(metrics["disk_bytes"]),
            weights_vram=None if vram is None else vram * GIB,
            kv_per_token=per_token,
            max_context=None if context is None else int(context),
        )

    @classmethod
    def predicted(cls, disk: float, kv_per_token: float, max_context: int | None) -> Sizes:
        """A checkpoint predicted before quantizing: its vRAM estimate is its bytes x the overhead."""
        return cls(disk, disk * formulas.OVERHEAD, kv_per_token, max_context)


def context(s: SearchConfig, max_context: int | None) -> int:
    """The tokens per sequence the KV cache is sized for: search.context, else the model's context."""
    tokens = s.context if s.context is not None else max_context
    if tokens is None:
        raise ValueError("the model's config has no max_position_embeddings: give search.context=<tokens>")
    return tokens


def _known(value: float | None, metric: str) -> float:
    if value is None:
        raise ValueError(f"the point's metrics lack {metric}, which this search.objective needs")
    return value


def _vram(sizes: Sizes) -> float:
    return _known(sizes.weights_vram, "weights_vram_est_gib")


def kv_cache_bytes(sizes: Sizes, s: SearchConfig) -> float:
    """The KV cache of search.concurrency sequences of the context's tokens."""
    per_token = _known(sizes.kv_per_token, "kv_cache_bytes_per_token")
    return per_token * context(s, sizes.max_context) * s.concurrency


def _deployment(sizes: Sizes, s: SearchConfig) -> float:
    return _vram(sizes) + kv_cache_bytes(sizes, s)


def _gpus(vram: float, s: SearchConfig) -> float:
    return float(formulas.gpus_needed_total(vram, s.gpu_mem_gb))


@dataclass(frozen=True)
class Objective:
    # (a configuration's sizes, the search's settings) → the value to minimise.
    value: Callable[[Sizes, SearchConfig], float]
    # How values print: divided by `scale`, with `digits` decimals, then `unit`; `axis` labels a plot's.
    scale: float
    digits: int
    unit: str
    axis: str
    # The search settings that change the value (then part of the study's identity).
    uses: tuple[str, ...] = ()

    def measured(self, metrics: dict[str, float], s: SearchConfig) -> float:
        return self.value(Sizes.measured(metrics), s)

    def text(self, value: float | None) -> str:
        return "-" if value is None else f"{value / self.scale:.{self.digits}f} {self.unit}"


_DEPLOYED = ("context", "concurrency")
OBJECTIVES: dict[str, Objective] = {
    "disk_bytes": Objective(lambda sizes, _: sizes.disk, GIB, 4, "GiB", "disk_bytes (GiB)"),
    "weights_vram": Objective(lambda sizes, _: _vram(sizes), GIB, 4, "GiB", "weights_vram (GiB)"),
    "gpus": Objective(lambda sizes, s: _gpus(_vram(sizes), s), 1.0, 0, "GPU", "GPUs", ("gpu_mem_gb",)),
    "deployment": Objective(_deployment, GIB, 4, "GiB", "weights vRAM + KV cache (GiB)", _DEPLOYED),
    "deployment_gpus": Objective(
        lambda sizes, s: _gpus(_deployment(sizes, s), s),
        1.0,
        0,
        "GPU",
        "GPUs (weights + KV cache)",
        ("gpu_mem_gb", *_DEPLOYED),
    ),
}
