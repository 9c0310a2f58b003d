"""A quantized checkpoint's size on disk, predicted from the model's config and the recipe alone.

The search orders its candidates by this number, so it can try the smallest first without quantizing any;
each point run logs it next to the measured `disk_bytes`. It counts what compressed-tensors writes per
quantized Linear: the weights at their bit width, one scale per tensor, channel, group or block, zero points
for asymmetric schemes (packed like the weights in the pack-quantized format), FP4's global scale; with an
FP8 KV cache, each attention's k_scale and v_scale (one, or one per KV head); and every other parameter
(embeddings, norms, ignored layers) at the checkpoint's dtype, tied weights once.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationScheme,
    QuantizationStrategy,
    QuantizationType,
)

from quantsweep import recipes
from quantsweep.config import SchemeConfig

# A safetensors header entry: the tensor's name plus its JSON dtype, shape and offsets.
HEADER_BYTES_PER_TENSOR = 64


def checkpoint_dtype(config: Any) -> torch.dtype:
    """The dtype the checkpoint is loaded and saved in (`dtype="auto"`): config.json's, else float32."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def quantized_layers(model: Any, scheme: SchemeConfig, ignore: list[str]) -> dict[str, tuple[Any, Any]]:
    """{module name: (module, its QuantizationScheme)}: per-layer-group targets win over `Linear`, as
    compressed-tensors resolves them (exact names and `re:` patterns before the class target)."""
    from compressed_tensors.utils import match_named_modules

    groups = recipes.config_groups(scheme)
    overrides = [t for group in groups.values() for t in group.targets if t != "Linear"]
    found: dict[str, tuple[Any, Any]] = {}
    for group in groups.values():
        if group.weights is None:
            continue
        for target in group.targets:
            skip = ignore + (overrides if target == "Linear" else [])
            for name, module in match_named_modules(model, [target], skip):
                found.setdefault(name, (module, group))
    return found


def _scale_count(args: QuantizationArgs, rows: int, columns: int) -> int:
    strategy = args.strategy
    if strategy == QuantizationStrategy.TENSOR:
        return 1
    if strategy == QuantizationStrategy.CHANNEL:
        return rows
    if strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        return rows * math.ceil(columns / args.group_size)
    if strategy == QuantizationStrategy.BLOCK:
        block_rows, block_columns = args.block_structure
        return math.ceil(rows / block_rows) * math.ceil(columns / block_columns)
    raise ValueError(f"no size model for weight strategy {strategy}")


def _bytes_of(dtype: Any, fallback: torch.dtype) -> float:
    return (dtype or fallback).itemsize


def linear_bytes(name: str, scheme: QuantizationScheme, rows: int, columns: int, dtype: torch.dtype) -> float:
    """What one quantized Linear's weight becomes on disk (its bias is counted with the unquantized rest).

    Integer weights are packed into int32 (with their shape) when below 8 bits or weight-only, the
    pack-quantized format; FP4 is packed two to a byte; FP8 and W8A8's INT8 are stored as they are.
    """
    args = scheme.weights
    int_packed = args.type == QuantizationType.INT and (args.num_bits < 8 or scheme.input_activations is None)
    scales = _scale_count(args, rows, columns)
    total = rows * columns * args.num_bits / 8 + scales * _bytes_of(args.scale_dtype, dtype)
    packed = int_packed or args.num_bits < 8
    tensors = ["weight_packed" if packed else "weight", "weight_scale"]
    if not args.symmetric:
        zero_point = args.num_bits / 8 if args.num_bits < 8 else _bytes_of(args.zp_dtype, dtype)
        total += scales * zero_point
        tensors.append("weight_zero_point")
    if int_packed:
        total += 16  # weight_shape, two int64
        tensors.append("weight_shape")
    if args.strategy == QuantizationStrategy.TENSOR_GROUP:
        total += 4  # weight_global_scale, float32
        tensors.append("weight_global_scale")
    return total + sum(len(f"{name}.{t}") + HEADER_BYTES_PER_TENSOR for t in tensors)


def kv_scale_bytes(model: Any, strategy: str | None, dtype: torch.dtype) -> float:
    """The KV cache's scales a checkpoint stores for the KV scales' `strategy` (`kv_cache.KINDS`: tensor,
    attn_head, None): k_scale and v_scale of every attention compressed-tensors quantizes the cache of."""
    if strategy is None:
        return 0.0
    from compressed_tensors.quantization.lifecycle.initialize import is_cached_attention_module
    from compressed_tensors.utils.helpers import get_num_kv_heads

    scales = get_num_kv_heads(model.config) if strategy == QuantizationStrategy.ATTN_HEAD else 1
    attention = [name for name, module in model.named_modules() if is_cached_attention_module(module)]
    return sum(
        scales * dtype.itemsize + len(f"{name}.{kv}_scale") + HEADER_BYTES_PER_TENSOR
        for name in attention
        for kv in "kv"
    )


def disk_bytes(model: Any, layers: dict[str, tuple[Any, Any]], kv_strategy: str | None = None) -> int:
    """Predicted bytes of the checkpoint's safetensors files for `model` (built on the meta device), its
    quantized `layers` as `quantized_layers` finds them, its KV cache's scales by `kv_strategy`."""
    dtype = checkpoint_dtype(model.config)
    quantized = {f"{name}.weight" for name in layers}
    total = kv_scale_bytes(model, kv_strategy, dtype)
    for name, module_and_args in layers.items():
        module, group = module_and_args
        rows, columns = module.weight.shape
        total += linear_bytes(name, group, int(rows), int(columns), dtype)
    for name, param in model.named_parameters():  # a tied parameter comes once, under its first name
        if name not in quantized:
            total += param.numel() * dtype.itemsize + len(name) + HEADER_BYTES_PER_TENSOR
    return int(total)
