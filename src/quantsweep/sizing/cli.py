"""`python -m quantsweep size model=<x> [context= concurrency= gpu_mem_gb= kv_dtype= params= run=]`.

Prints the sizing table (weights vRAM, KV cache, GPUs needed) from a model's config alone, so a
user can see what a model needs before downloading its weights. `model=` is, in this order:
a `conf/model/` name whose YAML has an `architecture:` block, a local directory with
`config.json`, or a Hugging Face hub id (only its config.json is fetched). `run=<MLflow run id>` (with
`tracking_uri=`) adds the KV capacity vLLM measured for that point's checkpoint beside the estimate.
Without `kv_dtype=`, the KV cache is FP8 when the checkpoint directory's config or the run's
`scheme.kv_cache` says so (vLLM serves such a checkpoint with an FP8 KV cache), else bf16.
Then the GPU memory to quantize it (RTN, GPTQ; model on the GPU or onloaded a layer at a time under
`quantize.max_gpu_memory_gib`) for `calib_samples=` x `calib_seq_len=` tokens (sizing/quantize_memory.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from quantsweep import keyvalue, kv_cache
from quantsweep.config import CalibrationConfig, TrackingConfig
from quantsweep.errors import ConfigError, fail
from quantsweep.sizing import measured, quantize_memory
from quantsweep.sizing.formulas import ModelShape, format_table, size_table
from quantsweep.tables import GIB

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Accepted keys and how to parse their values; None means "not given".
_PARSERS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "context": int,
    "concurrency": int,
    "gpu_mem_gb": float,
    "kv_dtype": str,
    "params": float,
    "run": str,
    "tracking_uri": str,
    "calib_samples": int,
    "calib_seq_len": int,
}
_DEFAULTS: dict[str, Any] = {
    "model": None,
    "context": None,
    "concurrency": 1,
    "gpu_mem_gb": 80.0,
    "kv_dtype": None,
    "params": None,
    "run": None,
    "tracking_uri": TrackingConfig().uri,
    "calib_samples": CalibrationConfig.num_samples,
    "calib_seq_len": CalibrationConfig.max_seq_length,
}


@dataclass
class _Model:
    """What a `model=` value resolves to: a config dict plus where the parameter count came from."""

    label: str
    config: dict[str, Any]
    num_parameters: float | None
    params_source: str
    # Total bytes of the directory's *.safetensors files, for the measured "checkpoint" row.
    checkpoint_bytes: int | None = None
    # The KV cache's dtype the checkpoint declares (its kv_cache_scheme), None when it declares none.
    kv_dtype: str | None = None


def _parse(argv: list[str]) -> dict[str, Any]:
    """Hydra-style `key=value` overrides, typed; unknown or repeated keys fail loudly."""
    args, _ = keyvalue.parse(argv, _PARSERS, _DEFAULTS, example="model=granite_3.2_8b_instruct")
    if not args["model"]:
        raise ConfigError("model= is required: a conf/model name, a local directory or a hub id")
    return args


def _conf_models() -> dict[str, dict[str, Any]]:
    """conf/model entries usable for sizing (those with an `architecture:` block), by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        entry = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if isinstance(entry, dict) and entry.get("architecture"):
            found[path.stem] = {str(k): v for k, v in entry.items()}
    return found


def _from_conf(name: str, entry: dict[str, Any], params: float | None) -> _Model:
    """A conf/model YAML: its `architecture` fields stand in for config.json."""
    label = entry.get("label") or name
    if params is None and entry.get("num_parameters") is not None:
        source = f"conf/model/{name}.yaml"
        return _Model(label, entry["architecture"], entry["num_parameters"], source)
    return _Model(label, entry["architecture"], params, _params_source(params))


def _from_dir(path: Path, params: float | None) -> _Model:
    """A local checkpoint directory.

    The parameter count is params= if given; else, for an unquantized checkpoint, the exact
    element count from the safetensors headers; else (a quantized checkpoint, whose packed
    tensors and scales do not count parameters) the dense estimate from config.json. The
    measured bytes per parameter then divides the safetensors files' total size by that count.
    """
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{path} has no config.json: pass a model directory saved by transformers")
    config = json.loads(config_path.read_text())
    has_weights = any(path.glob("*.safetensors"))
    checkpoint_bytes = measured.disk_bytes(path) if has_weights else None
    kv_dtype = "fp8" if kv_cache.declared(path) else None
    if params is None and has_weights and "quantization_config" not in config:
        params = measured.num_parameters(path)
        return _Model(str(path), config, params, "safetensors headers", checkpoint_bytes, kv_dtype)
    return _Model(str(path), config, params, _params_source(params), checkpoint_bytes, kv_dtype)


def _from_hub(model_id: str, params: float | None) -> _Model:
    """A hub id: only config.json is fetched; offline, say what to pass instead."""
    from transformers import AutoConfig  # slow import, only needed on this path

    try:
        config = AutoConfig.from_pretrained(model_id).to_dict()
    except (OSError, ValueError):
        names = ", ".join(_conf_models())
        raise ValueError(
            f"could not fetch the config of {model_id!r} from the Hugging Face hub (offline, or "
            f"no such repo), and it is not a local directory: pass model=<directory with "
            f"config.json> or a conf/model name ({names})"
        ) from None
    return _Model(model_id, config, params, _params_source(params))


def _params_source(params: float | None) -> str:
    """Where the count comes from when no measured one exists: the user, or the dense estimate."""
    return "params=" if params is not None else "estimated from config (dense Llama-style)"


def _resolve(model: str, params: float | None) -> _Model:
    """conf/model name first, then local directory, then hub id."""
    conf = _conf_models()
    if model in conf:
        return _from_conf(model, conf[model], params)
    if Path(model).is_dir():
        return _from_dir(Path(model), params)
    if (CONF_DIR / "model" / f"{model}.yaml").is_file():
        raise ValueError(
            f"conf/model/{model}.yaml has no architecture: block to size from: add one, or pass "
            "model=<directory with config.json>"
        )
    return _from_hub(model, params)


def _report(args: dict[str, Any]) -> str:
    """Header naming the model and inputs, then the table."""
    model = _resolve(args["model"], args["params"])
    shape = ModelShape.from_hf_config(model.config, model.num_parameters)
    context = shape.max_context if args["context"] is None else args["context"]
    if context is None:
        raise ValueError("the model's config has no max_position_embeddings: pass context=<tokens>")
    extra = None
    if model.checkpoint_bytes is not None:
        extra = {"checkpoint": model.checkpoint_bytes / shape.num_parameters}
    run = _run(args["run"], args["tracking_uri"]) if args["run"] else None
    kv_dtype, kv_source = _kv_dtype(args["kv_dtype"], model, run)
    rows = size_table(shape, context, args["concurrency"], args["gpu_mem_gb"], kv_dtype, extra)
    header = [
        f"Sizing {model.label} (model={args['model']})",
        f"parameters {shape.num_parameters:,.0f} ({model.params_source}); {shape.num_layers} "
        f"layers, {shape.num_kv_heads} KV heads, head_dim {shape.head_dim}",
        f"context {context:,} tokens x concurrency {args['concurrency']}, "
        f"KV cache {kv_dtype}{kv_source}, GPU {args['gpu_mem_gb']:g} GB",
    ]
    if extra:
        header.append(f"'checkpoint' row: {model.checkpoint_bytes:,} bytes of *.safetensors / parameters")
    text = "\n".join(header) + "\n\n" + format_table(rows)
    text += "\n\n" + quantize_memory.section(model.config, args["calib_samples"], args["calib_seq_len"])
    if run is not None:
        text += "\n" + _measured_by_vllm(run, context * args["concurrency"])
    return text


def _run(run_id: str, tracking_uri: str) -> Any:
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.get_run(run_id)
    except MlflowException as exc:
        raise ValueError(f"run={run_id}: no such run in {tracking_uri}") from exc


def _kv_dtype(given: str | None, model: _Model, run: Any) -> tuple[str, str]:
    """The KV cache's dtype and, when not given, where it comes from: the checkpoint's kv_cache_scheme,
    else the run's scheme.kv_cache (runs logged before it: scheme.kv_cache_fp8), else bf16."""
    if given is not None:
        return given, ""
    if model.kv_dtype is not None:
        return model.kv_dtype, " (the checkpoint's kv_cache_scheme)"
    setting = kv_cache.logged(run.data.params) if run is not None else kv_cache.NONE
    if setting != kv_cache.NONE:
        return kv_cache.dtype(setting), f" (run {run.info.run_id}: scheme.kv_cache={setting})"
    return "bf16", ""


def _measured_by_vllm(run: Any, tokens_needed: int) -> str:
    """vLLM's own KV capacity for a point's checkpoint (its deployability check) beside this estimate."""
    run_id, metrics = run.info.run_id, run.data.metrics
    if "vllm_kv_cache_tokens" not in metrics:
        return f"run {run_id}: no vLLM deployability check logged (it runs where `make vllm-env` was built)"
    tokens, per_token = metrics["vllm_kv_cache_tokens"], metrics.get("kv_cache_bytes_per_token")
    line = f"measured by vLLM (run {run_id}): KV cache holds {tokens:,.0f} tokens"
    if per_token:
        line += f" = {tokens * per_token / GIB:.2f} GiB at the estimated {per_token:,.0f} B/token"
    if "vllm_max_concurrency" in metrics:
        line += f", max concurrency {metrics['vllm_max_concurrency']:.1f} at the model's context"
    verdict = "fits" if tokens >= tokens_needed else "does not fit"
    return line + f"; context x concurrency here = {tokens_needed:,} tokens: {verdict} in that KV budget"


def main(argv: list[str]) -> int:
    """Print the sizing table; bad input is one line on stderr and exit code 2, no traceback."""
    try:
        print(_report(_parse(argv)))
    except ValueError as e:
        fail(str(e), command="size")
    return 0
