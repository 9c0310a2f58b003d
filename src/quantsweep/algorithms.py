"""The registry of quantization algorithms: name → llm-compressor modifiers, and what each one needs.

One entry per algorithm, so validation (unknown name, CUDA only), the calibration decision and the recipe
read the same facts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantsweep.config import SchemeConfig
from quantsweep.errors import ConfigError

# (scheme, QuantizationModifier/GPTQModifier keyword arguments) → modifiers in the order oneshot applies them.
Builder = Callable[[SchemeConfig, dict[str, Any]], list[Any]]


@dataclass(frozen=True)
class Algorithm:
    name: str
    build: Builder
    # Observes activations, so it needs calibration data whatever the scheme.
    needs_data: bool
    # llm-compressor runs it on CUDA only.
    needs_cuda: bool = False
    # Leaves a pruned (zero) weight zero: scaling and rounding do, GPTQ's error compensation, which updates
    # the weights not yet quantized, does not (measured: 2:4 held in about 80 % of the groups after it).
    keeps_zeros: bool = True
    # Accumulates a Hessian per Linear (the GPTQ family): the larger working memory quantize_memory counts.
    hessians: bool = False


def _rtn(scheme: SchemeConfig, quant: dict[str, Any]) -> list[Any]:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(**quant)]


def _gptq(scheme: SchemeConfig, quant: dict[str, Any]) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier

    return [GPTQModifier(dampening_frac=scheme.dampening_frac, **quant)]


def _smoothquant_gptq(scheme: SchemeConfig, quant: dict[str, Any]) -> list[Any]:
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    return [SmoothQuantModifier(smoothing_strength=scheme.smoothing_strength), *_gptq(scheme, quant)]


def _awq(scheme: SchemeConfig, quant: dict[str, Any]) -> list[Any]:
    from llmcompressor.modifiers.transform import AWQModifier

    return [AWQModifier(), *_rtn(scheme, quant)]


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("RTN", _rtn, needs_data=False),
        Algorithm("GPTQ", _gptq, needs_data=True, keeps_zeros=False, hessians=True),
        Algorithm("AWQ", _awq, needs_data=True, needs_cuda=True),
        Algorithm("SMOOTHQUANT_GPTQ", _smoothquant_gptq, needs_data=True, keeps_zeros=False, hessians=True),
    )
}


def get(name: str) -> Algorithm:
    """The algorithm `scheme.algorithm` names (any case), or one line naming the choices."""
    found = ALGORITHMS.get(name.upper())
    if found is None:
        raise ConfigError(f"scheme.algorithm={name!r} is unknown; choose one of {', '.join(ALGORITHMS)}")
    return found
