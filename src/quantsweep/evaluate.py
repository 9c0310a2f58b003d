"""Evaluate a checkpoint with lm-eval: in this process (HF backend) or in another Python environment.

vLLM pins torch and compressed-tensors versions that cannot share an environment with llm-compressor, so
`eval.python` names another environment's interpreter; lm-eval's own CLI runs there and writes the same
results JSON. Local-file tasks (`*_file`) are lm-eval task YAMLs shipped in `quantsweep/tasks/`, with the
data file filled in and written to an include folder that both paths hand to lm-eval's TaskManager.
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

import yaml

from quantsweep import hellaswag_file
from quantsweep.config import EvalConfig
from quantsweep.devices import accelerator, peak_memory

TASKS_DIR = Path(__file__).parent / "tasks"
SAMPLES_FILE = re.compile(r"samples_(?P<task>.+)_\d{4}-\d{2}-\d{2}T[\d.\-]+\.jsonl")
# Converters from a user's local file to the JSONL a shipped task YAML reads.
FILE_TASKS = {"hellaswag_file": hellaswag_file}


@dataclass
class EvalResult:
    """Per-task metrics (names cleaned of lm-eval's `,filter`), the primary metric, timings, raw JSON."""

    metrics: dict[str, dict[str, float]]
    primary: float
    primary_stderr: float | None
    seconds_load: float
    seconds_eval: float
    peak_memory_bytes: int | None
    raw: dict[str, Any] = field(repr=False)
    # Token positions the model ran forward over (padding included): the work behind seconds_eval.
    tokens: int | None = None
    # {task: {metric: {doc_id: value}}} per item, from lm-eval's samples: what a paired comparison of two
    # models scored on the same items needs.
    items: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def include_dir(cfg: EvalConfig, cache_dir: str | Path) -> Path | None:
    """Write the shipped task YAMLs this eval uses, pointed at their prepared data, into a cache folder."""
    used = [task for task in cfg.tasks if task in FILE_TASKS]
    if not used:
        return None
    prepared = {task: FILE_TASKS[task].prepare(cfg.data_path, cache_dir) for task in used}
    folder = Path(cache_dir).expanduser() / "tasks" / "-".join(p.stem for p in prepared.values())
    folder.mkdir(parents=True, exist_ok=True)
    for task, data in prepared.items():
        spec = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
        spec["dataset_kwargs"]["data_files"]["validation"] = str(data)
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def _limit(cfg: EvalConfig) -> int | float | None:
    if cfg.limit is None:
        return None
    return int(cfg.limit) if cfg.limit >= 1 else float(cfg.limit)


def eval_device(cfg: EvalConfig) -> str:
    return accelerator() if cfg.device == "auto" else cfg.device


def eval_dtype(cfg: EvalConfig) -> str:
    """The dtype evaluation runs in: part of what a score means, so part of its fingerprint."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "float32" if eval_device(cfg) == "cpu" else "bfloat16"


def _batch_size(cfg: EvalConfig, device: str) -> int | str:
    # lm-eval's "auto" probes by doubling until OOM: useful on a GPU, pathological in CPU RAM.
    if cfg.batch_size == "auto" and device == "cpu":
        return 8
    return int(cfg.batch_size) if cfg.batch_size.isdigit() else cfg.batch_size


def clean_metrics(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}}: lm-eval's `acc,none` → `acc`, non-numeric values (stderr "N/A") dropped."""
    cleaned: dict[str, dict[str, float]] = {}
    for task, values in raw["results"].items():
        out = cleaned.setdefault(task, {})
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            metric, _, filt = key.partition(",")
            out[_clean_name(metric, filt)] = float(value)
    return cleaned


def _clean_name(metric: str, filt: str) -> str:
    """lm-eval's metric under a filter as quantsweep names it: `acc` (filter none), or
    `exact_match_strict-match`."""
    return metric if filt == "none" else f"{metric}_{filt}"


def primary_task(cfg: EvalConfig) -> str:
    """The task whose `primary_metric` drives recovery and the floor."""
    return cfg.primary_task or cfg.tasks[0]


def evaluate(
    checkpoint: str, cfg: EvalConfig, cache_dir: str | Path, seed: int, compressed: bool
) -> EvalResult:
    """Score one checkpoint on the configured tasks; the primary metric drives recovery and the floor."""
    include = include_dir(cfg, cache_dir)
    if cfg.python:
        raw, samples, seconds_load, seconds_eval, peak = _evaluate_subprocess(checkpoint, cfg, include, seed)
        tokens = None
    else:
        raw, samples, seconds_load, seconds_eval, peak, tokens = _evaluate_in_process(
            checkpoint, cfg, include, seed, compressed
        )
    metrics = clean_metrics(raw)
    task = primary_task(cfg)
    primary = metrics[task][cfg.primary_metric]
    stderr = metrics[task].get(f"{cfg.primary_metric}_stderr")
    items = {name: item_scores(task_samples) for name, task_samples in samples.items()}
    return EvalResult(metrics, primary, stderr, seconds_load, seconds_eval, peak, raw, tokens, items)


def item_scores(samples: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{metric: {doc_id: value}} from lm-eval's logged samples, metric names as `clean_metrics` gives them
    (`acc`, or `exact_match_strict-match` under a filter); non-numeric per-item values are left out."""
    scores: dict[str, dict[int, float]] = {}
    for sample in samples:
        filt = sample.get("filter", "none")
        for metric in sample.get("metrics", []):
            value = sample.get(metric)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            scores.setdefault(_clean_name(metric, filt), {})[int(sample["doc_id"])] = float(value)
    return scores


def task_manager(cfg: EvalConfig, include: Path | None) -> Any:
    """lm-eval's TaskManager; indexing its thousands of built-in YAMLs is skipped when no task needs them."""
    from lm_eval.tasks import TaskManager

    builtin = any(task not in FILE_TASKS for task in cfg.tasks)
    return TaskManager(include_path=str(include) if include else None, include_defaults=builtin)


def _evaluate_in_process(
    checkpoint: str, cfg: EvalConfig, include: Path | None, seed: int, compressed: bool
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], float, float, int | None, int]:
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    device = eval_device(cfg)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, eval_dtype(cfg))}
    if compressed and device == "cpu":
        # Decompress once at load: CPU has no compressed kernels; decompressing per forward is 4-6x slower.
        kwargs["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    with peak_memory(device) as peak:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map=device, **kwargs)
        if "quantization_config" in kwargs:
            # FP4 decompressors hand back bf16 weights whatever dtype was asked: make the model one dtype.
            model = model.to(kwargs["dtype"])
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
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
            tasks=list(cfg.tasks),
            num_fewshot=cfg.num_fewshot,
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
    return _jsonable(raw), raw.get("samples", {}), loaded - start, done - loaded, peak.bytes, tokens[0]


def _positions(args: tuple, kwargs: dict[str, Any]) -> int:
    ids = args[0] if args else kwargs.get("input_ids")
    return int(ids.numel()) if ids is not None else 0


def _evaluate_subprocess(
    checkpoint: str, cfg: EvalConfig, include: Path | None, seed: int
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], float, float, None]:
    """lm-eval's CLI in `cfg.python`'s environment; load time is not separable there (counted as eval)."""
    model_args = f"pretrained={checkpoint}"
    if cfg.dtype != "auto":
        model_args += f",dtype={cfg.dtype}"
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            cfg.python, "-m", "lm_eval",
            "--model", cfg.backend,
            "--model_args", model_args,
            "--tasks", ",".join(cfg.tasks),
            "--batch_size", str(cfg.batch_size),
            "--seed", str(seed),
            "--output_path", out,
            "--log_samples",
        ]  # fmt: skip
        if cfg.device != "auto":
            cmd += ["--device", cfg.device]
        if cfg.num_fewshot is not None:
            cmd += ["--num_fewshot", str(cfg.num_fewshot)]
        if cfg.limit is not None:
            cmd += ["--limit", str(_limit(cfg))]
        if include is not None:
            cmd += ["--include_path", str(include)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"lm-eval ({cfg.backend}) in {cfg.python} failed with exit code {proc.returncode}:\n"
                f"{proc.stderr[-4000:]}"
            )
        found = sorted(Path(out).rglob("results_*.json"))
        if not found:
            raise RuntimeError(f"lm-eval in {cfg.python} wrote no results JSON:\n{proc.stderr[-4000:]}")
        return json.loads(found[-1].read_text()), _read_samples(Path(out)), 0.0, seconds, None


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
    keep = {k: raw[k] for k in ("results", "configs", "versions", "n-shot", "n-samples") if k in raw}
    keep["config"] = {k: v for k, v in raw.get("config", {}).items() if k != "model"}
    return json.loads(json.dumps(keep, default=str))
