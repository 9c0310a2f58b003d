"""`python -m quantsweep size model=<x> [context= concurrency= gpu_mem_gb= kv_dtype= params=]`.

Prints the sizing table (weights vRAM, KV cache, GPUs needed) from a model's config alone, so a
user can see what a model needs before downloading its weights. `model=` is, in this order:
a `conf/model/` name whose YAML has an `architecture:` block, a local directory with
`config.json`, or a Hugging Face hub id (only its config.json is fetched).
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from quantsweep.sizing import ModelShape, format_table, size_table

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Accepted keys and how to parse their values; None means "not given".
_PARSERS: dict[str, type] = {
    "model": str,
    "context": int,
    "concurrency": int,
    "gpu_mem_gb": float,
    "kv_dtype": str,
    "params": float,
}
_DEFAULTS: dict[str, Any] = {
    "model": None,
    "context": None,
    "concurrency": 1,
    "gpu_mem_gb": 80.0,
    "kv_dtype": "bf16",
    "params": None,
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


def _parse(argv: list[str]) -> dict[str, Any]:
    """Hydra-style `key=value` overrides, typed; unknown or repeated keys fail loudly."""
    args = dict(_DEFAULTS)
    seen: set[str] = set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"{arg!r} is not key=value (e.g. model=granite_3.2_8b_instruct)")
        if key not in _PARSERS:
            raise ValueError(f"unknown key {key!r}: accepted keys are {', '.join(_PARSERS)}")
        if key in seen:
            raise ValueError(f"{key}= given twice: give it once")
        seen.add(key)
        try:
            args[key] = _PARSERS[key](value)
        except ValueError:
            kind = _PARSERS[key].__name__
            raise ValueError(f"{key}={value!r} is not a valid {kind}") from None
    if not args["model"]:
        raise ValueError("model= is required: a conf/model name, a local directory or a hub id")
    return args


def _conf_models() -> dict[str, dict[str, Any]]:
    """conf/model entries usable for sizing (those with an `architecture:` block), by name."""
    entries = {p.stem: OmegaConf.load(p) for p in sorted((CONF_DIR / "model").glob("*.yaml"))}
    return {
        name: OmegaConf.to_container(cfg, resolve=False)
        for name, cfg in entries.items()
        if cfg.get("architecture")
    }


def _from_conf(name: str, entry: dict[str, Any], params: float | None) -> _Model:
    """A conf/model YAML: its `architecture` fields stand in for config.json."""
    label = entry.get("label") or name
    if params is None and entry.get("num_parameters") is not None:
        source = f"conf/model/{name}.yaml"
        return _Model(label, entry["architecture"], entry["num_parameters"], source)
    return _Model(label, entry["architecture"], params, _params_source(params))


def _safetensors_numel(path: Path) -> int:
    """Element count of every tensor in a .safetensors file, read from its JSON header alone."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    return sum(prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


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
    files = sorted(path.glob("*.safetensors"))
    checkpoint_bytes = sum(f.stat().st_size for f in files) if files else None
    if params is None and files and "quantization_config" not in config:
        params = sum(_safetensors_numel(f) for f in files)
        return _Model(str(path), config, params, "safetensors headers", checkpoint_bytes)
    return _Model(str(path), config, params, _params_source(params), checkpoint_bytes)


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
    rows = size_table(shape, context, args["concurrency"], args["gpu_mem_gb"], args["kv_dtype"], extra)
    header = [
        f"Sizing {model.label} (model={args['model']})",
        f"parameters {shape.num_parameters:,.0f} ({model.params_source}); {shape.num_layers} "
        f"layers, {shape.num_kv_heads} KV heads, head_dim {shape.head_dim}",
        f"context {context:,} tokens x concurrency {args['concurrency']}, "
        f"KV cache {args['kv_dtype']}, GPU {args['gpu_mem_gb']:g} GB",
    ]
    if extra:
        header.append(f"'checkpoint' row: {model.checkpoint_bytes:,} bytes of *.safetensors / parameters")
    return "\n".join(header) + "\n\n" + format_table(rows)


def main(argv: list[str]) -> int:
    """Print the sizing table; bad input is one line on stderr and exit code 2, no traceback."""
    try:
        print(_report(_parse(argv)))
    except ValueError as e:
        print(f"quantsweep size: error: {e}", file=sys.stderr)
        return 2
    return 0
