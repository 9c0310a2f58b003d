"""A leaderboard's KV-cache columns: each row's KV cache (`scheme.kv_cache`), whether its scores saw it
quantized, and what it takes at a context and concurrency beside the weights (so an FP8 KV cache's half
shows), with the GPUs for both.

The KV bytes per token are the run's logged `kv_cache_bytes_per_token` (sizing.formulas, 1 byte per element
in FP8, 2 otherwise); the context is each model's own (`max_context`) unless the leaderboard is given one.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from quantsweep import kv_cache
from quantsweep.sizing import formulas
from quantsweep.tables import GIB, missing, present

COLUMNS = (
    "kv_cache",
    "kv_cache_applied",
    "kv_cache_bytes_per_token",
    "max_context",
    "kv_context",
    "concurrency",
    "kv_cache_gib",
    "total_vram_gib",
    "gpus_needed_total",
)
KV_RULE = (
    "KV GiB = the run's KV cache bytes per token (2 × layers × KV heads × head dim × 2 bytes, 1 in FP8: "
    "scheme.kv_cache) × context × concurrency; GPUs +KV = ceil((weights vRAM + KV) / (GPU GB × 1e9)); "
    "⚠ = the checkpoint's FP8 KV cache was not quantized while scoring (tag "
    f"{kv_cache.APPLIED_TAG}): its accuracy and recovery measure the weights alone"
)


def cells(run: dict[str, Any], baseline: bool) -> dict[str, Any]:
    """A run's KV cells from an MLflow search_runs record (baselines keep the model's own cache)."""
    params = {k.removeprefix("params."): v for k, v in run.items() if k.startswith("params.") and v}
    return {
        "kv_cache": kv_cache.NONE if baseline else kv_cache.logged(params),
        "kv_cache_applied": present(run, f"tags.{kv_cache.APPLIED_TAG}"),
        "kv_cache_bytes_per_token": present(run, "metrics.kv_cache_bytes_per_token"),
        "max_context": present(run, "metrics.max_context"),
    }


def with_kv(df: pd.DataFrame, context: int | None = None, concurrency: int = 1) -> pd.DataFrame:
    """The KV cache's GiB at `context` tokens (each row's model's own when None) × `concurrency`
    sequences, and the weights' estimated vRAM plus it."""
    if context is not None and context < 1:
        raise ValueError(f"context must be a positive number of tokens, got {context}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1 sequence, got {concurrency}")
    tokens = df["max_context"].astype(float) if context is None else pd.Series(float(context), df.index)
    kv = df["kv_cache_bytes_per_token"].astype(float) * tokens * concurrency / GIB
    return df.assign(
        kv_context=tokens,
        concurrency=concurrency,
        kv_cache_gib=kv,
        total_vram_gib=df["weights_vram_gib"].astype(float) + kv,
    )


def with_gpus_total(df: pd.DataFrame, gpu_mem_gb: float) -> pd.DataFrame:
    """GPUs of `gpu_mem_gb` decimal GB for the weights' vRAM plus the KV cache (sizing's total rule); a
    frame without the KV columns (`with_kv`) is returned as it is."""
    if "total_vram_gib" not in df:
        return df
    gpus = [
        pd.NA if missing(gib) or math.isnan(gib) else formulas.gpus_needed_total(gib * GIB, gpu_mem_gb)
        for gib in df["total_vram_gib"]
    ]
    return df.assign(gpus_needed_total=pd.array(gpus, dtype="Int64"))


def label(kind: str) -> str:
    """What a row's label gains: ` kvfp8`, ` kvfp8head`, nothing for an unquantized KV cache."""
    return kv_cache.suffix(kind).replace("/", " ")


def cell(row: pd.Series) -> str:
    """The KV column: bf16, fp8 or fp8_head, ⚠ when the scores did not see it quantized."""
    kind = row.get("kv_cache")
    if missing(kind) or kind == kv_cache.NONE:
        return "bf16"
    return str(kind) if row.get("kv_cache_applied") == kv_cache.SCORED else f"{kind} ⚠"


def context_note(df: pd.DataFrame) -> str:
    """The context and concurrency the KV columns are at."""
    contexts = sorted({int(c) for c in df["kv_context"].dropna()})
    where = ", ".join(f"{c:,}" for c in contexts) or "-"
    concurrency = int(df["concurrency"].iloc[0]) if len(df) else 1
    return f"{KV_RULE}; here at context {where} tokens × concurrency {concurrency}"
