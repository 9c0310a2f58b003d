"""Pre-flight validation: every bad value gets one ConfigError naming it and the fix, before heavy work.

`check_config` needs nothing but the config (and files' existence); `check_model` needs the model's
config.json and builds the model on the meta device (no weights) to see every layer a recipe targets.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from quantsweep import calibration, models, recipes
from quantsweep.config import Config, EvalConfig, SchemeConfig
from quantsweep.errors import ConfigError
from quantsweep.evaluate import FILE_TASKS

FLOOR_ON = ("recovery", "accuracy")


def check_config(cfg: Config) -> None:
    check_scheme(cfg.scheme)
    check_eval(cfg.eval)
    if recipes.needs_calibration(cfg.scheme):
        calibration.check(cfg.calibration)
    models.check_source(cfg.model)


def check_scheme(scheme: SchemeConfig) -> None:
    recipes.check_preset(scheme.preset, "scheme.preset")
    for target, preset in scheme.layer_overrides.items():
        if preset != recipes.KEEP:
            recipes.check_preset(preset, f"scheme.layer_overrides[{target!r}]")
    if scheme.algorithm.upper() not in recipes.ALGORITHMS:
        raise ConfigError(
            f"scheme.algorithm={scheme.algorithm!r} is unknown; choose one of {', '.join(recipes.ALGORITHMS)}"
        )
    if scheme.group_size is not None and scheme.group_size < 1:
        raise ConfigError(f"scheme.group_size={scheme.group_size} must be a positive integer")
    if scheme.algorithm.upper() == "AWQ":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "scheme.algorithm=AWQ needs a CUDA GPU (llm-compressor's AWQ does not run on CPU); "
                "use scheme.algorithm=GPTQ or RTN here"
            )
    recipes.config_groups(scheme)  # group-size overrides on presets without groups fail here


def check_floor(floor: float, floor_on: str, group: str) -> None:
    """A floor is a fraction in [0, 1] on recovery or accuracy, for `eval.*` and `search.*` alike."""
    if not 0.0 <= floor <= 1.0:
        raise ConfigError(
            f"{group}.floor={floor} is outside [0, 1]; give a fraction, e.g. {group}.floor=0.97 for 97%"
        )
    if floor_on not in FLOOR_ON:
        raise ConfigError(f"{group}.floor_on={floor_on!r}; choose one of {', '.join(FLOOR_ON)}")


def check_eval(cfg: EvalConfig) -> None:
    check_floor(cfg.floor, cfg.floor_on, "eval")
    if not cfg.tasks:
        raise ConfigError("eval.tasks is empty; name at least one lm-eval task, e.g. [hellaswag]")
    if cfg.primary_task is not None and cfg.primary_task not in cfg.tasks:
        raise ConfigError(f"eval.primary_task={cfg.primary_task!r} is not in eval.tasks={list(cfg.tasks)}")
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"eval.limit={cfg.limit} must be positive (a count, or a fraction < 1)")
    if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
        raise ConfigError(f"eval.num_fewshot={cfg.num_fewshot} must be 0 or more")
    if cfg.backend != "hf" and not cfg.python:
        raise ConfigError(
            f"eval.backend={cfg.backend!r} runs in a separate Python environment (vLLM pins other "
            "torch/compressed-tensors versions); set eval.python=/path/to/that/env/bin/python"
        )
    if cfg.python and not Path(cfg.python).is_file():
        raise ConfigError(f"eval.python={cfg.python!r} does not exist; give a Python interpreter's path")
    for task in cfg.tasks:
        if task in FILE_TASKS:
            if not cfg.data_path:
                raise ConfigError(f"eval.tasks has {task!r}, which reads a local file: set eval.data_path")
            FILE_TASKS[task].check(cfg.data_path)
    _check_task_names([t for t in cfg.tasks if t not in FILE_TASKS])


def _check_task_names(tasks: list[str]) -> None:
    if not tasks:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(
            f"eval.tasks has {unknown}, unknown to lm-eval; see `lm-eval ls tasks` or use "
            f"{', '.join(FILE_TASKS)} with eval.data_path"
        )


def meta_model(source: str, trust_remote_code: bool = False) -> Any:
    """The model's module tree with no storage: every name and shape, at no memory cost."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_group_sizes(layers: dict[str, tuple[Any, Any]], scheme: SchemeConfig) -> None:
    """Group-wise weights need each layer's input size divisible by the group size of the config group
    that layer gets. `layers` are matched as compressed-tensors matches them (`predict.quantized_layers`):
    a layer a per-layer-group override takes is held to that override's preset, not to the main scheme."""
    from compressed_tensors.quantization import QuantizationStrategy

    grouped = (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP)
    bad: list[tuple[str, int, int, list[str]]] = []
    for name, (module, group) in layers.items():
        if group.weights.strategy not in grouped:
            continue
        columns, size = int(module.weight.shape[-1]), int(group.weights.group_size)
        if columns % size:
            bad.append((name, columns, size, list(group.targets)))
    if not bad:
        return
    main = [b for b in bad if "Linear" in b[3]]
    name, columns, size, targets = (main or bad)[0]
    if main:
        fits = _largest_dividing_power_of_two(sorted({c for _, c, _, _ in main}), size)
        raise ConfigError(
            f"scheme.group_size={size} does not divide the input size of {len(main)} targeted layers "
            f"(e.g. {name}: {columns}); use scheme.group_size={fits}, or add those layers to ignore"
        )
    target = targets[0]
    raise ConfigError(
        f"scheme.layer_overrides[{target!r}]={scheme.layer_overrides[target]} has groups of {size}, which do "
        f"not divide the input size of {len(bad)} layers it takes (e.g. {name}: {columns}); give them a "
        "channel-wise preset (W8A8, FP8_dynamic), or add them to ignore"
    )


def _largest_dividing_power_of_two(columns: list[int], below: int) -> int:
    common = math.gcd(*columns)
    size = 1
    while size * 2 <= below and common % (size * 2) == 0:
        size *= 2
    return size
