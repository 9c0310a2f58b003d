"""Evaluate a checkpoint with lm-eval: in this process (HF backend) or in another Python environment.

vLLM pins torch and compressed-tensors versions that cannot share an environment with llm-compressor, so
eval.backend=vllm runs lm-eval's own CLI in the vLLM environment (`vllm_env.find_python`: eval.python, or
`.venv-vllm/` from `make vllm-env`), which writes the same results JSON and per-item samples. Which tasks
run and where their definitions come from is `taskset`'s; what the output says per task is `scores`'.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsweep import kv_cache
from quantsweep.config import EvalConfig
from quantsweep.devices import accelerator, peak_memory
from quantsweep.errors import ConfigError
from quantsweep.evaluation import vllm_env
from quantsweep.evaluation.scores import TaskScore, add_item_stderrs, task_scores
from quantsweep.evaluation.taskset import cli_include, lm_eval_tasks

# Where callers and tests have always found them.
from quantsweep.evaluation.scores import clean_metrics as clean_metrics  # isort: skip
from quantsweep.evaluation.scores import item_scores as item_scores  # isort: skip
from quantsweep.evaluation.taskset import FILE_TASKS as FILE_TASKS  # isort: skip
from quantsweep.evaluation.taskset import include_dir as include_dir  # isort: skip
from quantsweep.evaluation.taskset import task_manager as task_manager  # isort: skip

SAMPLES_FILE = re.compile(r"samples_(?P<task>.+)_\d{4}-\d{2}-\d{2}T[\d.\-]+\.jsonl")
# lm-eval model types: hf (in this process, or in eval.python's), vllm (in the vLLM environment).
BACKENDS = ("hf", "vllm")


@dataclass
class EvalResult:
    """Per-task metrics (names cleaned of lm-eval's `,filter`), the primary metric, timings, raw JSON."""

    metrics: dict[str, dict[str, float]]
    primary: float
    primary_stderr: float | None
    # None where loading is not separable from scoring (lm-eval's CLI in another environment).
    seconds_load: float | None
    seconds_eval: float
    peak_memory_bytes: int | None
    raw: dict[str, Any] = field(repr=False)
    # Token positions the model ran forward over (padding included): the work behind seconds_eval.
    tokens: int | None = None
    # {task: {metric: {doc_id: value}}} per item, from lm-eval's samples: what a paired comparison of two
    # models scored on the same items needs.
    items: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    # Each task of eval.tasks on the metric it is judged on, in order.
    suite: list[TaskScore] = field(default_factory=list)
    # For a checkpoint that declares a quantized KV cache: whether scoring quantized it (kv_cache.SCORED,
    # CHECKPOINT_ONLY or UNVERIFIED); None for one that does not.
    kv_cache_applied: str | None = None


def _limit(cfg: EvalConfig) -> int | float | None:
    if cfg.limit is None:
        return None
    return int(cfg.limit) if cfg.limit >= 1 else float(cfg.limit)


def eval_device(cfg: EvalConfig) -> str:
    return accelerator() if cfg.device == "auto" else cfg.device


def eval_dtype(cfg: EvalConfig) -> str:
    """The dtype evaluation runs in: part of what a score means, so part of its fingerprint.
    vLLM runs bfloat16 on CPU too (its CPU kernels, quantized ones included, are bf16 ones)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "float32" if eval_device(cfg) == "cpu" and cfg.backend == "hf" else "bfloat16"


def interpreter(cfg: EvalConfig) -> str | None:
    """The Python that runs lm-eval's CLI, or None for this process (hf without eval.python).
    ConfigError, before any work, for an unknown backend or a missing environment."""
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"eval.backend={cfg.backend!r} is not one of {', '.join(BACKENDS)}")
    if cfg.backend == "vllm":
        return vllm_env.find_python(cfg.python)
    if cfg.python and not Path(cfg.python).is_file():
        raise ConfigError(f"eval.python={cfg.python!r} does not exist; give a Python interpreter's path")
    return cfg.python


def _batch_size(cfg: EvalConfig, device: str) -> int | str:
    # lm-eval's "auto" probes by doubling until OOM: useful on a GPU, pathological in CPU RAM.
    if cfg.batch_size == "auto" and device == "cpu":
        return 8
    return int(cfg.batch_size) if cfg.batch_size.isdigit() else cfg.batch_size


def primary_task(cfg: EvalConfig) -> str:
    """The task whose `primary_metric` drives recovery and the floor."""
    return cfg.primary_task or cfg.tasks[0]


def evaluate(
    checkpoint: str, cfg: EvalConfig, cache_dir: str | Path, seed: int, compressed: bool, gpus: int = 1
) -> EvalResult:
    """Score one checkpoint on the configured tasks; the primary metric drives `accuracy` and `recovery`.
    `gpus` > 1 (resources.gpus_per_point) spreads the model over the GPUs this process sees."""
    include = include_dir(cfg, cache_dir)
    python = interpreter(cfg)
    seconds_load: float | None
    # vLLM is told to store the KV cache in FP8; lm-eval's HF model in another environment is not seen.
    applied = kv_cache.SCORED if cfg.backend == "vllm" else kv_cache.UNVERIFIED
    if python:
        folder = cli_include(cfg, include, cache_dir)
        raw, samples, seconds_eval = _evaluate_subprocess(python, checkpoint, cfg, folder, seed, gpus)
        seconds_load, peak, tokens = None, None, None
    else:
        raw, samples, seconds_load, seconds_eval, peak, tokens, applied = _evaluate_in_process(
            checkpoint, cfg, include, seed, compressed, gpus
        )
    metrics = clean_metrics(raw)
    items = {name: item_scores(task_samples) for name, task_samples in samples.items()}
    add_item_stderrs(metrics, items)
    suite = task_scores(cfg, raw, metrics, primary_task(cfg))
    first = next(score for score in suite if score.task == primary_task(cfg))
    result = EvalResult(
        metrics, first.value, first.stderr, seconds_load, seconds_eval, peak, raw, tokens, items, suite
    )
    if compressed and kv_cache.declared(checkpoint) is not None:
        result.kv_cache_applied = applied
    return result


def _evaluate_in_process(
    checkpoint: str, cfg: EvalConfig, include: Path | None, seed: int, compressed: bool, gpus: int
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], float, float, int | None, int, str]:
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    device = eval_device(cfg)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, eval_dtype(cfg))}
    if compressed and (device == "cpu" or gpus > 1):
        # Decompress once at load: CPU has no compressed kernels; decompressing per forward is 4-6x slower.
        # Over several GPUs, the first-forward decompression (the GPU default) swaps accelerate's hooks for
        # compressed-tensors' offloading inside that forward, which then fails ("no attribute '_hf_hook'").
        kwargs["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    with peak_memory(device) as peak:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, device_map=_device_map(device, gpus), **kwargs
        )
        if compressed and device == "cpu":
            # FP4 decompressors hand back bf16 weights whatever dtype was asked: make the model one dtype.
            model = model.to(kwargs["dtype"])
        if gpus > 1:
            # compressed-tensors' dispatch leaves the logits on the last GPU; lm-eval scores them against
            # tokens on the first (model.device).
            first = model.device
            model.register_forward_hook(lambda _module, _args, out: _logits_to(out, first))
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        applied = kv_cache.applied_in(model)
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=_batch_size(cfg, device),
            device=device,
            # bf16 log-softmax rounds different checkpoints to identical scores.
            softmax_dtype="float32",
        )
        loaded = time.perf_counter()
        tokens = [0]
        hook = model.register_forward_pre_hook(
            lambda _module, args, kwargs: tokens.__setitem__(0, tokens[0] + _positions(args, kwargs)),
            with_kwargs=True,
        )
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=lm_eval_tasks(cfg),
            # Per-task shots (eval.task_overrides) are in the settings group; a global count would win.
            num_fewshot=None if cfg.task_overrides else cfg.num_fewshot,
            limit=_limit(cfg),
            task_manager=task_manager(cfg, include),
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        done = time.perf_counter()
        hook.remove()
    del lm, model
    samples = raw.get("samples", {})
    return _jsonable(raw), samples, loaded - start, done - loaded, peak.bytes, tokens[0], applied


def _logits_to(out: Any, device: Any) -> Any:
    out.logits = out.logits.to(device)
    return out


def _positions(args: tuple, kwargs: dict[str, Any]) -> int:
    ids = args[0] if args else kwargs.get("input_ids")
    return int(ids.numel()) if ids is not None else 0


def _device_map(device: str, gpus: int) -> str:
    """One device, or (several GPUs per point) the model's layers spread over every GPU this process sees:
    its launcher (Ray, SLURM, the joblib workers' claims) made those the point's own."""
    return "auto" if gpus > 1 else device


def _parallel_args(backend: str, gpus: int) -> str:
    """More --model_args for a point of several GPUs: vLLM's tensor parallelism, HF's device_map over them."""
    if gpus == 1:
        return ""
    return f",tensor_parallel_size={gpus}" if backend == "vllm" else ",parallelize=True"


def _model_args(checkpoint: str, cfg: EvalConfig, seed: int) -> str:
    """lm-eval's --model_args: vLLM's LLM(...) keywords pass through lm-eval's vLLM wrapper."""
    if cfg.backend == "vllm":
        # A fixed dtype (the fingerprint's) and seed; vLLM sizes its KV cache itself (env on CPU), in FP8
        # when the checkpoint carries KV-cache scales.
        fp8 = ",kv_cache_dtype=fp8" if kv_cache.declared(checkpoint) else ""
        return f"pretrained={checkpoint},dtype={eval_dtype(cfg)},seed={seed}{fp8}"
    return f"pretrained={checkpoint}" + (f",dtype={cfg.dtype}" if cfg.dtype != "auto" else "")


def _evaluate_subprocess(
    python: str, checkpoint: str, cfg: EvalConfig, include: Path | None, seed: int, gpus: int
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], float]:
    """lm-eval's CLI in `python`'s environment; load time is not separable there (counted as eval)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            python, "-m", "lm_eval",
            "--model", cfg.backend,
            "--model_args", _model_args(checkpoint, cfg, seed) + _parallel_args(cfg.backend, gpus),
            "--tasks", ",".join(lm_eval_tasks(cfg)),
            "--batch_size", str(cfg.batch_size),
            "--seed", str(seed),
            "--output_path", out,
            "--log_samples",
        ]  # fmt: skip
        # vLLM takes no device argument (it runs where its build runs; CUDA_VISIBLE_DEVICES picks GPUs).
        if cfg.device != "auto" and cfg.backend != "vllm":
            cmd += ["--device", cfg.device]
        if cfg.num_fewshot is not None and not cfg.task_overrides:
            cmd += ["--num_fewshot", str(cfg.num_fewshot)]
        if cfg.limit is not None:
            cmd += ["--limit", str(_limit(cfg))]
        if include is not None:
            cmd += ["--include_path", str(include)]
        env = vllm_env.subprocess_env(eval_device(cfg)) if cfg.backend == "vllm" else None
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"lm-eval ({cfg.backend}) in {python} failed with exit code {proc.returncode}:\n"
                f"{proc.stderr[-4000:]}"
            )
        found = sorted(Path(out).rglob("results_*.json"))
        if not found:
            raise RuntimeError(f"lm-eval in {python} wrote no results JSON:\n{proc.stderr[-4000:]}")
        return json.loads(found[-1].read_text()), _read_samples(Path(out)), seconds


def _read_samples(out: Path) -> dict[str, list[dict[str, Any]]]:
    """lm-eval's CLI `--log_samples` files, `samples_<task>_<timestamp>.jsonl`, by task."""
    samples: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.rglob("samples_*.jsonl")):
        match = SAMPLES_FILE.fullmatch(path.name)
        if match:
            lines = path.read_text().splitlines()
            samples.setdefault(match["task"], []).extend(json.loads(line) for line in lines if line.strip())
    return samples


def _jsonable(raw: dict[str, Any]) -> dict[str, Any]:
    """The results JSON as lm-eval's CLI writes it (numpy scalars and dtypes stringified)."""
    keep: dict[str, Any] = {
        k: raw[k]
        for k in (
            "results",
            "group_subtasks",
            "configs",
            "versions",
            "n-shot",
            "higher_is_better",
            "n-samples",
        )
        if k in raw
    }
    keep["config"] = {k: v for k, v in raw.get("config", {}).items() if k != "model"}
    return json.loads(json.dumps(keep, default=str))
