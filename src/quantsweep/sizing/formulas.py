"""Sizing calculator: weights vRAM, KV cache and GPU count from a model's config alone, no weights.

The formulas are the seed's, kept exact so its worked examples (Granite 3.2 8B, Llama 4 Scout and
Maverick) reproduce to the printed digit; `tests/test_sizing.py` pins them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quantsweep.tables import GIB, MIB, fixed_width

# Serving overhead on the raw weights (activations, CUDA context, fragmentation): the seed's 20 %.
OVERHEAD = 1.2

# Bytes per parameter of each weight precision.
PRECISIONS: dict[str, float] = {
    "BF16": 2.0,
    "INT8/FP8": 1.0,
    "INT4": 0.5,
    # NVFP4: 4-bit weights plus one FP8 (8-bit) scale per group of 16 weights = 4 + 8/16 = 4.5 bits.
    "NVFP4": 4.5 / 8,
}

# Bytes per element of the KV cache, by the `kv_dtype` names the CLI accepts.
KV_DTYPES: dict[str, int] = {"bf16": 2, "fp8": 1}

# config.json keys that mark a mixture-of-experts model, for which the dense estimate is wrong.
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class ModelShape:
    """The few numbers sizing needs: parameter count and the KV cache's dimensions."""

    num_parameters: float
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_context: int | None

    def __post_init__(self) -> None:
        """Reject non-positive sizes, so a bad config fails here, not as a zero-GPU table."""
        for name in ("num_parameters", "num_layers", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], num_parameters: float | None = None) -> ModelShape:
        """Read a Hugging Face `config.json`-style dict (text model nested under `text_config`, as
        in Llama 4, is used when present).

        Without `num_parameters`, the count is an estimate for dense Llama-style decoders (see
        `estimate_num_parameters`); mixture-of-experts configs are refused rather than misestimated.
        """
        cfg = text_config(config)
        needed = ["num_hidden_layers"]
        if cfg.get("num_key_value_heads") is None or cfg.get("head_dim") is None:
            needed.append("num_attention_heads")
        if cfg.get("head_dim") is None:
            needed.append("hidden_size")
        _require(cfg, needed, "give a config.json with")
        heads: Any = cfg.get("num_attention_heads")  # present whenever a field below needs it
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        if num_parameters is None:
            num_parameters = estimate_num_parameters(cfg)
        max_context = cfg.get("max_position_embeddings")
        return cls(
            num_parameters=float(num_parameters),
            num_layers=int(cfg["num_hidden_layers"]),
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            max_context=int(max_context) if max_context else None,
        )


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json's text model: its `text_config` over the top level where it has one (Llama 4)."""
    return {**config, **config["text_config"]} if config.get("text_config") else dict(config)


def _require(cfg: dict[str, Any], keys: list[str], fix: str) -> None:
    """Name every missing field at once, so one error message is enough to fix the config."""
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise ValueError(f"model config lacks {', '.join(missing)}: {fix} {', '.join(keys)}")


def estimate_num_parameters(config: dict[str, Any]) -> int:
    """Parameter count of a dense Llama-style decoder (no biases) from its config: an estimate,
    exact for Llama itself, wrong for mixture-of-experts or biased/extra-projection architectures.
    """
    moe = [k for k in _MOE_KEYS if config.get(k)]
    if moe:
        raise ValueError(
            f"config has {moe[0]}={config[moe[0]]}: a mixture-of-experts model, which the dense "
            "parameter estimate does not cover; give num_parameters (params=...) explicitly"
        )
    _require(
        config,
        ["hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"],
        "give num_parameters=... or a config.json with",
    )
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    embeddings = config["vocab_size"] * hidden
    lm_head = 0 if config.get("tie_word_embeddings", False) else embeddings
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * config["intermediate_size"]
    per_layer = attention + mlp + 2 * hidden
    return embeddings + lm_head + config["num_hidden_layers"] * per_layer + hidden


def weights_vram_bytes(num_parameters: float, bytes_per_param: float, overhead: float = OVERHEAD) -> float:
    """Memory to serve the weights: params × bytes × overhead (the seed's model-vRAM rule)."""
    return num_parameters * bytes_per_param * overhead


def kv_cache_bytes_per_token(shape: ModelShape, kv_bytes: float = 2) -> float:
    """K and V for every layer and KV head: 2 × layers × kv_heads × head_dim × bytes."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * kv_bytes


def gpus_needed(num_parameters: float, bytes_per_param: float, gpu_mem_gb: float = 80.0) -> int:
    """The seed's rule: weights only, no overhead, decimal GB: ceil(params × bytes / GPU bytes)."""
    return math.ceil(num_parameters * bytes_per_param / (gpu_mem_gb * 1e9))


def gpus_needed_total(total_bytes: float, gpu_mem_gb: float) -> int:
    """The stricter rule: GPUs to hold weights with overhead plus the KV cache."""
    return math.ceil(total_bytes / (gpu_mem_gb * 1e9))


def size_table(
    shape: ModelShape,
    context: int,
    concurrency: int = 1,
    gpu_mem_gb: float = 80.0,
    kv_dtype: str = "bf16",
    extra_rows: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per precision (then per extra row, e.g. a checkpoint's measured bytes per param)."""
    if context <= 0:
        raise ValueError(f"context must be a positive number of tokens, got {context}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1 sequence, got {concurrency}")
    if gpu_mem_gb <= 0:
        raise ValueError(f"gpu_mem_gb must be positive (e.g. 80 for an H100), got {gpu_mem_gb}")
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype={kv_dtype!r} is unknown: use one of {', '.join(KV_DTYPES)}")
    kv_per_token = kv_cache_bytes_per_token(shape, KV_DTYPES[kv_dtype])
    kv_total = kv_per_token * context * concurrency
    rows = []
    for precision, bytes_per_param in {**PRECISIONS, **(extra_rows or {})}.items():
        weights = weights_vram_bytes(shape.num_parameters, bytes_per_param)
        rows.append(
            {
                "precision": precision,
                "bytes_per_param": bytes_per_param,
                "weights_vram_gib": weights / GIB,
                "kv_cache_mib_per_token": kv_per_token / MIB,
                "kv_cache_gib": kv_total / GIB,
                "total_gib": (weights + kv_total) / GIB,
                "gpus_needed": gpus_needed(shape.num_parameters, bytes_per_param, gpu_mem_gb),
                "gpus_needed_total": gpus_needed_total(weights + kv_total, gpu_mem_gb),
            }
        )
    return rows


# (row key, column title, decimals): the seed prints GiB to 0.1 and MiB/token to 0.01.
_COLUMNS = (
    ("precision", "precision", None),
    ("bytes_per_param", "bytes/param", 4),
    ("weights_vram_gib", f"weights GiB (x{OVERHEAD})", 1),
    ("kv_cache_mib_per_token", "KV MiB/token", 2),
    ("kv_cache_gib", "KV GiB", 1),
    ("total_gib", "total GiB", 1),
    ("gpus_needed", "GPUs (seed rule)", None),
    ("gpus_needed_total", "GPUs (total rule)", None),
)

RULES = "\n".join(
    (
        f"Rules: weights = params x bytes x {OVERHEAD} (serving overhead); "
        "KV/token = 2 x layers x kv_heads x head_dim x bytes",
        "       KV GiB = KV/token x context x concurrency; GiB = 2^30 bytes, MiB = 2^20 bytes",
        "       GPUs (seed rule)  = ceil(params x bytes / (GPU GB x 1e9)), weights only",
        f"       GPUs (total rule) = ceil((weights x {OVERHEAD} + KV) / (GPU GB x 1e9))",
    )
)


def _cell(value: Any, decimals: int | None) -> str:
    """Fixed decimals, but values too small to show at that precision keep 2 significant digits
    (a tiny model's KV cache would otherwise print as 0.00)."""
    if decimals is None:
        return str(value)
    if value and abs(value) < 10**-decimals:
        return f"{value:.2g}"
    return f"{value:.{decimals}f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of `size_table` rows (precision left, numbers right), the rules as a footer."""
    header = [title for _, title, _ in _COLUMNS]
    cells = [[_cell(row[key], dec) for key, _, dec in _COLUMNS] for row in rows]
    return fixed_width(header, cells, right=[i > 0 for i in range(len(_COLUMNS))]) + "\n" + RULES
