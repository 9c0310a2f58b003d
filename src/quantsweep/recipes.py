"""Recipes: a scheme config + ignore list → llm-compressor modifiers, built from compressed-tensors presets.

`scheme.group_size` sizes the config groups whose preset groups its weights (W4A16's groups, FP8_BLOCK's
square blocks, and activation groups along with them); it is not applicable to channel-wise or per-tensor
presets. Per-layer-group precision becomes extra `config_groups` (compressed-tensors gives exact names and
`re:` patterns priority over the class target `Linear`); "bf16" groups join the ignore list.
"""

from __future__ import annotations

from typing import Any

from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationScheme,
    QuantizationStrategy,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

from quantsweep import algorithms, kv_cache, sparsity
from quantsweep.config import IgnoreConfig, SchemeConfig, SparsityConfig
from quantsweep.errors import ConfigError

KEEP = "bf16"
# Presets that are not a quantization of an LLM's weights.
_NOT_FOR_LLMS = {"UNQUANTIZED"}
# `scheme=dense`: compressed-tensors' preset of no quantization, for a sparsity alone (`sparsity=2of4
# scheme=dense`); validate.check_sparsity refuses it without one, and no layer override may name it.
DENSE = "UNQUANTIZED"


def preset_names() -> list[str]:
    return sorted(set(PRESET_SCHEMES) - _NOT_FOR_LLMS)


def check_preset(preset: str, where: str) -> None:
    if preset.upper() not in preset_names():
        raise ConfigError(
            f"{where}={preset!r} is not a compressed-tensors preset; choose one of "
            f"{', '.join(preset_names())}"
        )


def quant_scheme(preset: str, targets: list[str], group_size: int | None = None) -> QuantizationScheme:
    """The preset's scheme for `targets`, its weight groups (or blocks, then `group_size` square) and
    activation groups resized if asked."""
    scheme = preset_name_to_scheme(preset.upper(), targets)
    if group_size is not None:
        weights = scheme.weights
        if weights is None or _grouping(weights) is None:
            raise ConfigError(
                f"scheme.group_size={group_size}: preset {preset} has no weight groups "
                f"(strategy {getattr(weights, 'strategy', None)}); drop scheme.group_size"
            )
        resized = {"block_structure": [group_size] * 2} if _is_block(weights) else {"group_size": group_size}
        scheme.weights = weights.model_copy(update=resized)
        if scheme.input_activations is not None and scheme.input_activations.group_size:
            scheme.input_activations = scheme.input_activations.model_copy(update={"group_size": group_size})
    return scheme


def _is_block(weights: QuantizationArgs) -> bool:
    return weights.strategy == QuantizationStrategy.BLOCK


def _grouping(weights: QuantizationArgs) -> int | None:
    """The size weights are grouped by along a layer's input: a group's, or a block's input edge."""
    return weights.block_structure[1] if _is_block(weights) else weights.group_size


def preset_group_size(preset: str) -> int | None:
    """The size a preset groups weights by (W4A16: groups of 128, NVFP4: 16, FP8_BLOCK: blocks of 128);
    None for presets with a scale per channel or per tensor (W8A8, FP8_DYNAMIC, FP8)."""
    weights = preset_name_to_scheme(preset.upper(), ["Linear"]).weights
    return None if weights is None else _grouping(weights)


def grouping_unit(preset: str) -> str:
    """What a preset's group size counts, for messages: `groups` or `blocks`."""
    weights = preset_name_to_scheme(preset.upper(), ["Linear"]).weights
    return "blocks" if weights is not None and _is_block(weights) else "groups"


def group_size_targets(scheme: SchemeConfig) -> set[str]:
    """The config-group targets `scheme.group_size` sizes: the main group and the per-layer-group
    overrides in the main preset, when that preset has weight groups (none otherwise)."""
    if preset_group_size(scheme.preset) is None:
        return set()
    same = {t for t, preset in scheme.layer_overrides.items() if preset.upper() == scheme.preset.upper()}
    return {"Linear"} | same


def _static(args: QuantizationArgs | None) -> bool:
    return args is not None and not args.dynamic


def needs_calibration(scheme: SchemeConfig) -> bool:
    """Data is needed for data-driven algorithms and for static activation or KV-cache scales."""
    if algorithms.get(scheme.algorithm).needs_data or kv_cache.kind(scheme) != kv_cache.NONE:
        return True
    presets = [scheme.preset, *(p for p in scheme.layer_overrides.values() if p != KEEP)]
    for preset in presets:
        base = preset_name_to_scheme(preset.upper(), ["Linear"])
        if _static(base.input_activations) or _static(base.output_activations):
            return True
        # NVFP4's activations are "local" dynamic but need a calibrated global scale.
        acts = base.input_activations
        if acts is not None and acts.strategy == QuantizationStrategy.TENSOR_GROUP:
            return True
    return False


def weight_bits(preset: str) -> int:
    """Nominal bits of a quantized weight element (scales and zero points not counted)."""
    weights = preset_name_to_scheme(preset.upper(), ["Linear"]).weights
    return 16 if weights is None else weights.num_bits


def _groups(scheme: SchemeConfig) -> list[tuple[list[str], str]]:
    """(targets, preset) for the main group and each per-layer-group override."""
    groups = [(["Linear"], scheme.preset)]
    groups += [([target], preset) for target, preset in scheme.layer_overrides.items() if preset != KEEP]
    return groups


def ignore_list(ignore: IgnoreConfig, scheme: SchemeConfig, num_layers: int) -> list[str]:
    """The ignore patterns, with first/last decoder layers and "bf16" overrides expanded."""
    patterns = list(ignore.patterns)
    if ignore.keep_first_last_layers:
        patterns += [r"re:.*layers\.0\..*", rf"re:.*layers\.{num_layers - 1}\..*"]
    patterns += [target for target, preset in scheme.layer_overrides.items() if preset == KEEP]
    return patterns


def config_groups(scheme: SchemeConfig) -> dict[str, QuantizationScheme]:
    sized = group_size_targets(scheme)
    return {
        f"group_{i}": quant_scheme(preset, targets, scheme.group_size if targets[0] in sized else None)
        for i, (targets, preset) in enumerate(_groups(scheme))
    }


def is_dense(scheme: SchemeConfig) -> bool:
    """`scheme=dense`: the weights are not quantized."""
    return is_dense_preset(scheme.preset)


def is_dense_preset(preset: str) -> bool:
    """The preset `scheme=dense` names (any case): no quantization."""
    return preset.upper() == DENSE


def build_recipe(scheme: SchemeConfig, ignore: list[str], sparse: SparsityConfig | None = None) -> list[Any]:
    """llm-compressor modifiers in the order oneshot applies them: pruning first (`sparse`, llm-compressor's
    2:4 examples' order, so the quantization scales see the pruned weights), then the scheme's (none for
    scheme=dense)."""
    pruning = sparsity.modifiers(sparse, ignore) if sparse is not None else []
    if is_dense(scheme):
        return pruning
    quant_kwargs: dict[str, Any] = {
        "config_groups": config_groups(scheme),
        "ignore": ignore,
        "kv_cache_scheme": kv_cache.quantization_args(scheme),
    }
    return pruning + algorithms.get(scheme.algorithm).build(scheme, quant_kwargs)
