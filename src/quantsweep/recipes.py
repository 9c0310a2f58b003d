"""Recipes: a scheme config + ignore list → llm-compressor modifiers, built from compressed-tensors presets.

Group-size overrides and per-layer-group precision become extra `config_groups` (compressed-tensors gives
exact names and `re:` patterns priority over the class target `Linear`); "bf16" groups join the ignore list.
"""

from __future__ import annotations

from typing import Any

from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationScheme,
    QuantizationStrategy,
    QuantizationType,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

from quantsweep.config import IgnoreConfig, SchemeConfig
from quantsweep.errors import ConfigError

ALGORITHMS = ("RTN", "GPTQ", "AWQ", "SMOOTHQUANT_GPTQ")
KEEP = "bf16"
# Presets that are not a quantization of an LLM's weights.
_NOT_FOR_LLMS = {"UNQUANTIZED"}


def preset_names() -> list[str]:
    return sorted(set(PRESET_SCHEMES) - _NOT_FOR_LLMS)


def check_preset(preset: str, where: str) -> None:
    if preset.upper() not in preset_names():
        raise ConfigError(
            f"{where}={preset!r} is not a compressed-tensors preset; choose one of "
            f"{', '.join(preset_names())}"
        )


def quant_scheme(preset: str, targets: list[str], group_size: int | None = None) -> QuantizationScheme:
    """The preset's scheme for `targets`, with the weights' group size replaced if asked."""
    scheme = preset_name_to_scheme(preset.upper(), targets)
    if group_size is not None:
        weights = scheme.weights
        if weights is None or weights.group_size is None:
            raise ConfigError(
                f"scheme.group_size={group_size}: preset {preset} has no weight groups "
                f"(strategy {getattr(weights, 'strategy', None)}); drop scheme.group_size"
            )
        scheme.weights = weights.model_copy(update={"group_size": group_size})
        if scheme.input_activations is not None and scheme.input_activations.group_size:
            scheme.input_activations = scheme.input_activations.model_copy(update={"group_size": group_size})
    return scheme


def _static(args: QuantizationArgs | None) -> bool:
    return args is not None and not args.dynamic


def needs_calibration(scheme: SchemeConfig) -> bool:
    """Data is needed for data-driven algorithms and for static activation or KV-cache scales."""
    if scheme.algorithm.upper() != "RTN" or scheme.kv_cache_fp8:
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


def _group_size_for(scheme: SchemeConfig, preset: str) -> int | None:
    return scheme.group_size if preset.upper() == scheme.preset.upper() else None


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
    return {
        f"group_{i}": quant_scheme(preset, targets, _group_size_for(scheme, preset))
        for i, (targets, preset) in enumerate(_groups(scheme))
    }


def _kv_cache_scheme(scheme: SchemeConfig) -> QuantizationArgs | None:
    if not scheme.kv_cache_fp8:
        return None
    return QuantizationArgs(
        num_bits=8,
        type=QuantizationType.FLOAT,
        strategy=QuantizationStrategy.TENSOR,
        dynamic=False,
        symmetric=True,
    )


def build_recipe(scheme: SchemeConfig, ignore: list[str]) -> list[Any]:
    """llm-compressor modifiers for the scheme, in the order oneshot applies them."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    algorithm = scheme.algorithm.upper()
    quant_kwargs: dict[str, Any] = {
        "config_groups": config_groups(scheme),
        "ignore": ignore,
        "kv_cache_scheme": _kv_cache_scheme(scheme),
    }
    if algorithm == "RTN":
        return [QuantizationModifier(**quant_kwargs)]
    if algorithm == "GPTQ":
        return [GPTQModifier(dampening_frac=scheme.dampening_frac, **quant_kwargs)]
    if algorithm == "SMOOTHQUANT_GPTQ":
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        return [
            SmoothQuantModifier(smoothing_strength=scheme.smoothing_strength),
            GPTQModifier(dampening_frac=scheme.dampening_frac, **quant_kwargs),
        ]
    if algorithm == "AWQ":
        from llmcompressor.modifiers.transform import AWQModifier

        return [AWQModifier(), QuantizationModifier(**quant_kwargs)]
    raise ConfigError(
        f"scheme.algorithm={scheme.algorithm!r} is unknown; choose one of {', '.join(ALGORITHMS)}"
    )
