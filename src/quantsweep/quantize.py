"""Quantize one model with llm-compressor's `oneshot` and save a compressed-tensors checkpoint vLLM loads.

With `quantize.max_gpu_memory_gib` the model is loaded on the CPU and llm-compressor 0.14 does the onloading:
its pipelines call `set_onload_device(model, get_main_device())`, which makes every module of a CPU-resident
model move its weights to the first GPU only while it is used (the sequential pipeline keeps one subgraph,
a decoder layer, onloaded for its calibration passes; the data-free one a module at a time); calibration
activations stay in a CPU cache between layers. The cap is enforced with torch's per-process memory
fraction, so needing more fails rather than silently using it. Same pipeline, same device for the
arithmetic: the checkpoint is the one the uncapped run writes, and no fingerprint depends on the cap.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep import algorithms, calibration, logs
from quantsweep.config import CalibrationConfig, Config
from quantsweep.devices import accelerator, memory_cap, peak_memory, release
from quantsweep.errors import ConfigError
from quantsweep.sizing.quantize_memory import DecoderShape, quantize_memory
from quantsweep.tables import GIB


@dataclass
class QuantizeResult:
    checkpoint: Path
    seconds_load: float
    seconds_calibration_data: float
    seconds_quantize: float
    seconds_save: float
    # Summed over the cards used (devices.Peak), and the most one card held; None on CPU.
    peak_memory_bytes: int | None
    peak_memory_max_card_bytes: int | None = None


def check_memory_cap(cfg: Config, model_config: dict[str, Any], uses_calibration: bool) -> None:
    """Pre-flight: refuse a `quantize.max_gpu_memory_gib` that cannot work, before any work.

    Below the floor of `sizing.quantize_memory` (data-calibrated: one decoder layer's weights, its GPTQ
    Hessians and one sample's activations; data-free RTN: the largest Linear and its working copy) no
    onloading fits. Between the floor and the predicted peak it may still fit (the peak's GPTQ working memory
    is llm-compressor's own upper estimate): a warning, and the allocator's cap decides. The cap is checked
    on every host, so a config refused on a GPU host is refused here too. `model_config` is the model's
    config.json as a dict (the point's meta model has it: no second read)."""
    cap = cfg.quantize.max_gpu_memory_gib
    if cap is None:
        return
    if cap <= 0:
        raise ConfigError(f"quantize.max_gpu_memory_gib={cap} must be positive GiB, or null for no cap")
    try:
        shape = DecoderShape.from_hf_config(model_config)
    except (ValueError, KeyError) as exc:  # not a dense Llama-style decoder: no estimate, the cap decides
        logs.say(f"quantsweep: quantize.max_gpu_memory_gib={cap}: no memory estimate for this model ({exc})")
        return
    samples, seq_len = cfg.calibration.num_samples, cfg.calibration.max_seq_length
    memory = quantize_memory(shape, samples, seq_len)
    gptq = algorithms.get(cfg.scheme.algorithm).hessians
    floor, peak = memory.floor(gptq, uses_calibration), memory.peak(gptq, onloaded=True)
    data = f"one {seq_len}-token sample" if uses_calibration else "no calibration data"
    if cap * GIB < floor:
        raise ConfigError(
            f"quantize.max_gpu_memory_gib={cap} is below the {floor / GIB:.3g} GiB that quantizing "
            f"{cfg.model.name} with {cfg.scheme.algorithm} holds on the GPU at once, even onloading one "
            f"layer at a time ({data}); raise it to at least {floor / GIB:.3g}"
            + (", lower calibration.max_seq_length" if uses_calibration else "")
            + ", or set it to null"
        )
    if cap * GIB < peak:
        logs.say(
            f"quantsweep: quantize.max_gpu_memory_gib={cap} is below the {peak / GIB:.3g} GiB predicted for "
            f"{cfg.scheme.algorithm} onloading one layer at a time: it may run out of memory"
        )


def _load(source: str, device: str, gpus: int, trust_remote_code: bool) -> Any:
    """On one device ("cpu" for onloading), or for several GPUs through compressed-tensors' offloading:
    device_map="auto" over every visible GPU (CPU memory past them), which oneshot's pipelines then onload
    layer by layer."""
    from transformers import AutoModelForCausalLM

    if gpus == 1 or device == "cpu":
        return AutoModelForCausalLM.from_pretrained(
            source, dtype="auto", device_map=device, trust_remote_code=trust_remote_code
        )
    from compressed_tensors.offload import load_offloaded_model

    with load_offloaded_model():
        return AutoModelForCausalLM.from_pretrained(
            source, dtype="auto", device_map="auto", trust_remote_code=trust_remote_code
        )


def _say_cap(cap_gib: float, fraction: float | None, device: str, gpus: int) -> None:
    """What the cap does on this host, in one line."""
    if device == "cpu":
        logs.say(
            f"quantsweep: quantize.max_gpu_memory_gib={cap_gib}: no CUDA GPU here; the model is quantized on "
            "the CPU as without a cap (nothing to limit)"
        )
        return
    limit = (
        f"its allocator capped at {cap_gib} GiB" if fraction else f"the card holds no more than {cap_gib} GiB"
    )
    others = f" ({gpus - 1} other card(s) of the point unused)" if gpus > 1 else ""
    logs.say(
        f"quantsweep: quantize.max_gpu_memory_gib={cap_gib}: model loaded on the CPU, llm-compressor onloads "
        f"one layer at a time to cuda:0, {limit}{others}"
    )


def quantize(
    source: str,
    recipe: list[Any],
    output: Path,
    calibration_cfg: CalibrationConfig | None,
    seed: int,
    trust_remote_code: bool = False,
    gpus: int = 1,
    max_gpu_memory_gib: float | None = None,
) -> QuantizeResult:
    """Load, calibrate if the recipe needs data, quantize and save (safetensors, recipe, tokenizer).

    With `gpus` > 1 (resources.gpus_per_point) the model is loaded llm-compressor's way for models larger
    than one GPU, spread over the GPUs this process sees. With `max_gpu_memory_gib` it is loaded on the CPU
    and onloaded a layer at a time to the first GPU, under that cap (the module docstring)."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    device = accelerator()
    capped = max_gpu_memory_gib is not None
    with peak_memory(device) as peak, memory_cap(max_gpu_memory_gib) as fraction:
        if max_gpu_memory_gib is not None:
            _say_cap(max_gpu_memory_gib, fraction, device, gpus)
        start = time.perf_counter()
        model = _load(source, "cpu" if capped else device, gpus, trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        loaded = time.perf_counter()
        data_kwargs: dict[str, Any] = {}
        if calibration_cfg is not None:
            data_kwargs = {
                "dataset": calibration.load(calibration_cfg, tokenizer),
                "num_calibration_samples": calibration_cfg.num_samples,
                "max_seq_length": calibration_cfg.max_seq_length,
            }
        prepared = time.perf_counter()
        # Calibration order and GPTQ's tie-breaking draw on torch's RNG: seed it for reproducible runs.
        torch.manual_seed(seed)
        # oneshot's default pipeline infers per modifier: `sequential` for data-needing ones, `datafree`
        # otherwise; both onload a CPU-resident model to get_main_device().
        oneshot(model=model, recipe=recipe, tokenizer=tokenizer, **data_kwargs)
        quantized = time.perf_counter()
        partial = output.with_name(output.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, save_compressed=True)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(output, ignore_errors=True)
        partial.rename(output)
        saved = time.perf_counter()
    del model
    release()
    return QuantizeResult(
        checkpoint=output,
        seconds_load=loaded - start,
        seconds_calibration_data=prepared - loaded,
        seconds_quantize=quantized - prepared,
        seconds_save=saved - quantized,
        peak_memory_bytes=peak.bytes,
        peak_memory_max_card_bytes=peak.max_card,
    )
