"""KV-cache quantization: what `scheme.kv_cache` asks for, what it costs per token, and where it was applied.

compressed-tensors offers two static FP8 layouts for the KV cache (its QuantizationStrategy): one scale per
K and V tensor of a layer (`fp8`) and one per KV head (`fp8_head`, strategy `attn_head`). llm-compressor
calibrates the scales and writes them, with `kv_cache_scheme` in the checkpoint's quantization config.
Who quantizes the cache when the checkpoint is scored:

- vLLM stores it in FP8 (`kv_cache_dtype=fp8`, passed by the harness; vLLM also picks it by itself for such
  a checkpoint). Per-head scales are kept by FlashAttention 3 (Hopper GPUs) only; other backends, CPU
  included, use each layer's largest head scale.
- transformers with compressed-tensors (the HF backend in this process) hooks each attention's cache with
  compressed-tensors' QuantizedKVCache, which rounds K and V through FP8 with the checkpoint's scales on
  every forward: the scores see FP8's rounding, the cache is held in the eval dtype.

The point's tag `quantsweep.kv_cache_applied` says what the scores saw: `scored` (the KV cache was
quantized while scoring), `checkpoint_only` (the scales are in the checkpoint, but the scoring model did
not use them: its recovery measures the weights alone) or `unverified` (lm-eval's HF backend in another
environment, whose model this process cannot inspect).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from quantsweep.config import SchemeConfig
from quantsweep.errors import ConfigError
from quantsweep.sizing import formulas, measured

# scheme.kv_cache → compressed-tensors' strategy of the KV scales (None: the cache stays in the model dtype).
KINDS: dict[str, str | None] = {"none": None, "fp8": "tensor", "fp8_head": "attn_head"}
NONE = "none"
APPLIED_TAG = "quantsweep.kv_cache_applied"
SCORED, CHECKPOINT_ONLY, UNVERIFIED = "scored", "checkpoint_only", "unverified"


def kind(scheme: SchemeConfig) -> str:
    """`scheme.kv_cache`, checked: ConfigError naming the fix for an unknown value or the replaced key."""
    old = getattr(scheme, "kv_cache_fp8", None)
    if old is not None:
        raise ConfigError(
            f"scheme.kv_cache_fp8={str(old).lower()} was replaced by scheme.kv_cache: write "
            f"scheme.kv_cache={'fp8' if old else NONE} (fp8_head for a scale per KV head)"
        )
    if scheme.kv_cache not in KINDS:
        raise ConfigError(f"scheme.kv_cache={scheme.kv_cache!r}; choose one of {', '.join(KINDS)}")
    return str(scheme.kv_cache)


def dtype(kv_kind: str) -> str:
    """The KV cache's dtype in serving, as `sizing.formulas.KV_DTYPES` names it."""
    return "bf16" if kv_kind == NONE else "fp8"


def element_bytes(kv_kind: str) -> int:
    """Bytes per cached K or V element: 2 unquantized (bf16), 1 in FP8."""
    return formulas.KV_DTYPES[dtype(kv_kind)]


def bytes_per_token(config: dict[str, Any], kv_kind: str) -> float:
    """KV-cache bytes per token of a model (its config.json as a dict) with this KV cache, by
    `sizing.formulas.kv_cache_bytes_per_token`."""
    shape = formulas.ModelShape.from_hf_config(config, num_parameters=1)
    return formulas.kv_cache_bytes_per_token(shape, element_bytes(kv_kind))


def suffix(kv_kind: str) -> str:
    """What a point's name gains: `/kvfp8`, `/kvfp8head`, nothing unquantized."""
    return "" if kv_kind == NONE else "/kv" + kv_kind.replace("_", "")


def quantization_args(scheme: SchemeConfig) -> Any:
    """The recipe's `kv_cache_scheme`: static symmetric FP8 scales of the chosen strategy, or None."""
    strategy = KINDS[kind(scheme)]
    if strategy is None:
        return None
    from compressed_tensors.quantization import QuantizationArgs, QuantizationStrategy, QuantizationType

    return QuantizationArgs(
        num_bits=8,
        type=QuantizationType.FLOAT,
        strategy=QuantizationStrategy(strategy),
        dynamic=False,
        symmetric=True,
    )


def identity(scheme: SchemeConfig) -> dict[str, Any]:
    """The scheme's fields for a fingerprint, the KV cache spelt as before `scheme.kv_cache` existed
    (`kv_cache_fp8`, the per-head strategy only when used), so earlier points keep their fingerprints."""
    fields = dataclasses.asdict(scheme)
    kv_kind = fields.pop("kv_cache")
    fields["kv_cache_fp8"] = kv_kind != NONE
    if kv_kind not in (NONE, "fp8"):
        fields["kv_cache_strategy"] = KINDS[kv_kind]
    return fields


def logged(params: dict[str, Any]) -> str:
    """A run's KV cache from its params: scheme.kv_cache, for runs logged before it scheme.kv_cache_fp8."""
    found = params.get("scheme.kv_cache")
    if found in KINDS:
        return str(found)
    return "fp8" if str(params.get("scheme.kv_cache_fp8")) == "True" else NONE


def declared(checkpoint: str | Path) -> str | None:
    """The kv_cache_scheme strategy a checkpoint's config declares (`tensor`, `attn_head`), or None."""
    if not (Path(checkpoint) / "config.json").is_file():  # a hub id: nothing local to read
        return None
    quantization = measured.hf_config(checkpoint).get("quantization_config") or {}
    scheme = quantization.get("kv_cache_scheme")
    return None if not scheme else str(scheme.get("strategy"))


def applied_in(model: Any) -> str:
    """Whether a loaded HF model quantizes its KV cache on forward: every attention module carries
    compressed-tensors' QuantizedKVCache with the checkpoint's scales, and its quantization is enabled."""
    from compressed_tensors.modeling.kvcache import KV_CACHE_ATTR

    hooked = [m for m in model.modules() if hasattr(m, KV_CACHE_ATTR)]
    live = [
        m
        for m in hooked
        if getattr(getattr(m, "quantization_scheme", None), "input_activations", None) is not None
        and getattr(m, "quantization_enabled", True)
        and hasattr(m, "k_scale")
        and hasattr(m, "v_scale")
    ]
    return SCORED if hooked and len(live) == len(hooked) else CHECKPOINT_ONLY


def record(name: str, applied: str | None) -> None:
    """Tag the active run with where its KV cache was quantized; say so when its scores do not show it."""
    if applied is None:
        return
    import mlflow

    from quantsweep import logs

    mlflow.set_tag(APPLIED_TAG, applied)
    if applied != SCORED:
        logs.say(
            f"quantsweep: {name}: the KV cache was not quantized while scoring ({applied}): its accuracy and "
            "recovery measure the weights alone (eval.backend=vllm scores it with an FP8 KV cache)",
            err=True,
        )
