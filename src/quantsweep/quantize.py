"""Quantize one model with llm-compressor's `oneshot` and save a compressed-tensors checkpoint vLLM loads."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep import calibration
from quantsweep.config import CalibrationConfig
from quantsweep.devices import accelerator, peak_memory, release


@dataclass
class QuantizeResult:
    checkpoint: Path
    seconds_load: float
    seconds_calibration_data: float
    seconds_quantize: float
    seconds_save: float
    peak_memory_bytes: int | None


def _load(source: str, device: str, gpus: int, trust_remote_code: bool) -> Any:
    """On one device, or for several GPUs through compressed-tensors' offloading: device_map="auto" over
    every visible GPU (CPU memory past them), which oneshot's pipelines then onload layer by layer."""
    from transformers import AutoModelForCausalLM

    if gpus == 1:
        return AutoModelForCausalLM.from_pretrained(
            source, dtype="auto", device_map=device, trust_remote_code=trust_remote_code
        )
    from compressed_tensors.offload import load_offloaded_model

    with load_offloaded_model():
        return AutoModelForCausalLM.from_pretrained(
            source, dtype="auto", device_map="auto", trust_remote_code=trust_remote_code
        )


def quantize(
    source: str,
    recipe: list[Any],
    output: Path,
    calibration_cfg: CalibrationConfig | None,
    seed: int,
    trust_remote_code: bool = False,
    gpus: int = 1,
) -> QuantizeResult:
    """Load, calibrate if the recipe needs data, quantize and save (safetensors, recipe, tokenizer).

    With `gpus` > 1 (resources.gpus_per_point) the model is loaded llm-compressor's way for models larger
    than one GPU, spread over the GPUs this process sees."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    device = accelerator()
    with peak_memory(device) as peak:
        start = time.perf_counter()
        model = _load(source, device, gpus, trust_remote_code)
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
    )
