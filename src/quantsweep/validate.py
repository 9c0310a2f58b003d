"""Pre-flight validation: every bad value gets one ConfigError naming it and the fix, before heavy work.

`check_scheme` and `check_eval` need nothing but the config (and files' existence); `check_group_sizes`
needs the model built on the meta device (no weights) to see every layer a recipe targets.
"""

from __future__ import annotations

import math
from typing import Any

from quantsweep import algorithms, kv_cache, recipes, sparsity
from quantsweep.config import EvalConfig, SchemeConfig, SparsityConfig
from quantsweep.errors import ConfigError
from quantsweep.evaluation import checks
from quantsweep.evaluation.harness import interpreter
from quantsweep.floor import check_floor


def check_scheme(scheme: SchemeConfig) -> None:
    if not recipes.is_dense(scheme):  # scheme=dense: `check_sparsity` says when it may be used
        recipes.check_preset(scheme.preset, "scheme.preset")
    for target, preset in scheme.layer_overrides.items():
        if preset != recipes.KEEP:
            recipes.check_preset(preset, f"scheme.layer_overrides[{target!r}]")
    algorithm = algorithms.get(scheme.algorithm)
    if scheme.group_size is not None and scheme.group_size < 1:
        raise ConfigError(f"scheme.group_size={scheme.group_size} must be a positive integer")
    if algorithm.needs_cuda:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"scheme.algorithm={algorithm.name} needs a CUDA GPU (llm-compressor runs it on CUDA only); "
                "use scheme.algorithm=GPTQ or RTN here"
            )


def check_sparsity(sparse: SparsityConfig, scheme: SchemeConfig) -> None:
    """The sparsity settings and the scheme they compose with. Every compressed-tensors 0.19 format stores
    the zeros as values, so any scheme carries them; the algorithm must keep them (not GPTQ), and
    scheme=dense (nothing quantized) is only a sparsity's."""
    if not sparsity.enabled(sparse):
        if recipes.is_dense(scheme):
            raise ConfigError(
                "scheme=dense quantizes nothing and sparsity=none prunes nothing: that is the baseline; add "
                "sparsity=2of4 (2:4 alone), or choose a quantization scheme"
            )
        return
    if sparse.mask_structure != sparsity.MASK_2_4:
        raise ConfigError(
            f"sparsity.mask_structure={sparse.mask_structure!r} is not supported: 2:4 (2 of every 4 "
            "consecutive weights zero, what NVIDIA's sparse tensor cores run) is the one; use sparsity=2of4"
        )
    n, m = sparsity.structure(sparse)
    if not math.isclose(sparse.sparsity, n / m):
        raise ConfigError(
            f"sparsity.sparsity={sparse.sparsity} contradicts mask_structure {sparse.mask_structure}, which "
            f"zeroes {n / m:g} of each layer; drop it (sparsity.sparsity={n / m:g})"
        )
    if sparse.algorithm.lower() != "sparsegpt":
        raise ConfigError(f"sparsity.algorithm={sparse.algorithm!r} is unknown; use SparseGPT")
    if sparse.block_size < m or sparse.block_size % m:
        raise ConfigError(
            f"sparsity.block_size={sparse.block_size} must be a positive multiple of {m}: SparseGPT chooses "
            f"each group of {m} within a block of columns; use sparsity.block_size=128"
        )
    algorithm = algorithms.get(scheme.algorithm)
    if recipes.is_dense(scheme):
        extra = [f"scheme.algorithm={algorithm.name}"] if algorithm.name != "RTN" else []
        extra += ["scheme.layer_overrides (layers=)"] if scheme.layer_overrides else []
        extra += [f"scheme.kv_cache={scheme.kv_cache}"] if kv_cache.kind(scheme) != kv_cache.NONE else []
        if extra:
            raise ConfigError(
                f"scheme=dense quantizes nothing, so {' and '.join(extra)} cannot apply; drop it, or choose "
                f"a quantization scheme (e.g. scheme=W4A16 sparsity={sparse.name})"
            )
    elif not algorithm.keeps_zeros:
        raise ConfigError(
            f"scheme.algorithm={algorithm.name} with sparsity={sparse.name}: GPTQ's error compensation fills "
            "in the weights SparseGPT zeroed, so the 2:4 pattern would not survive; use scheme.algorithm=RTN"
        )


def check_eval(cfg: EvalConfig) -> None:
    check_floor(cfg.floor, cfg.floor_on, "eval", list(cfg.tasks))
    if not cfg.tasks:
        raise ConfigError("eval.tasks is empty; name at least one lm-eval task, e.g. [hellaswag]")
    if cfg.primary_task is not None and cfg.primary_task not in cfg.tasks:
        raise ConfigError(f"eval.primary_task={cfg.primary_task!r} is not in eval.tasks={list(cfg.tasks)}")
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"eval.limit={cfg.limit} must be positive (a count, or a fraction < 1)")
    if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
        raise ConfigError(f"eval.num_fewshot={cfg.num_fewshot} must be 0 or more")
    check_batch_size(cfg.batch_size)
    # The backend is known and its interpreter exists (vllm: eval.python or a built `.venv-vllm/`).
    interpreter(cfg)
    checks.check(cfg)


def check_batch_size(batch_size: str) -> None:
    """lm-eval takes a positive count, `auto` (probe the largest that fits) or `auto:N` (probe N times)."""
    count = batch_size.removeprefix("auto:") if batch_size.startswith("auto:") else batch_size
    if batch_size != "auto" and not (count.isdigit() and int(count) > 0):
        raise ConfigError(
            f"eval.batch_size={batch_size!r} is not a batch size; give a positive integer "
            "(eval.batch_size=8), auto or auto:N"
        )


# How to fill the mandatory values a shipped config leaves open.
_MANDATORY_FIXES = {
    "model.source": "model=custom needs it: add model.source=/path/to/checkpoint or model.source=<org>/<name>"
}


def check_complete(cfg: Any, prefix: str = "") -> None:
    """Every mandatory value (`???` in a config) is set: one line naming it, not OmegaConf's dump."""
    from omegaconf import DictConfig, OmegaConf

    for key in cfg:
        name = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            fix = _MANDATORY_FIXES.get(name, f"add {name}=<value> to the command line")
            raise ConfigError(f"{name} is not set; {fix}")
        if not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            check_complete(cfg[key], name + ".")


def meta_model(source: str, trust_remote_code: bool = False) -> Any:
    """The model's module tree with no storage: every name and shape, at no memory cost."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def divided_widths(module: Any, weights: Any) -> list[tuple[int, int]]:
    """(a layer's width, the size that must divide it) for weights grouped along the input (groups: the
    input size) or in blocks (both edges: activations are grouped by the input edge, and vLLM merges
    layers along the output); none for weights with a scale per channel or per tensor."""
    from compressed_tensors.quantization import QuantizationStrategy

    rows, columns = (int(d) for d in module.weight.shape)
    if weights.strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        return [(columns, int(weights.group_size))]
    if weights.strategy == QuantizationStrategy.BLOCK:
        block_rows, block_columns = weights.block_structure
        return [(columns, int(block_columns)), (rows, int(block_rows))]
    return []


def check_group_sizes(layers: dict[str, tuple[Any, Any]], scheme: SchemeConfig) -> None:
    """Grouped weights need each layer's widths divisible by the group (or block) size of the config group
    that layer gets. `layers` are matched as compressed-tensors matches them (`predict.quantized_layers`):
    a layer a per-layer-group override takes is held to that override's preset, not to the main scheme."""
    bad: list[tuple[str, int, int, list[str]]] = []
    for name, (module, group) in layers.items():
        misfit = [(width, size) for width, size in divided_widths(module, group.weights) if width % size]
        if misfit:
            bad.append((name, *misfit[0], list(group.targets)))
    if not bad:
        return
    main = [b for b in bad if "Linear" in b[3]]
    name, width, size, targets = (main or bad)[0]
    if main:
        fits = _largest_dividing_power_of_two(sorted({w for _, w, _, _ in main}), size)
        raise ConfigError(
            f"scheme.group_size={size} does not divide the widths of {len(main)} targeted layers "
            f"(e.g. {name}: {width}); use scheme.group_size={fits}, or add those layers to ignore"
        )
    target = targets[0]
    raise ConfigError(
        f"scheme.layer_overrides[{target!r}]={scheme.layer_overrides[target]} has groups of {size}, which do "
        f"not divide the widths of {len(bad)} layers it takes (e.g. {name}: {width}); give them a "
        "channel-wise preset (W8A8, FP8_dynamic), or add them to ignore"
    )


def _largest_dividing_power_of_two(columns: list[int], below: int) -> int:
    common = math.gcd(*columns)
    size = 1
    while size * 2 <= below and common % (size * 2) == 0:
        size *= 2
    return size
