"""2:4 weight sparsity: the layers a SparseGPT pass prunes, its modifier, and what the saved checkpoint holds.

llm-compressor's SparseGPTModifier (mask_structure "2:4") zeroes 2 of every 4 consecutive weights along each
targeted Linear's input (the columns of its [out, in] weight), calibrated on data, before the quantization
modifier runs; round-to-nearest keeps the zeros (a zero quantizes to zero), GPTQ's error compensation does
not (`algorithms.Algorithm.keeps_zeros`).

compressed-tensors 0.19 has no sparse storage format (its sparse-24-bitmask and marlin-24 compressors were
removed, and `sparsity_config` is always written empty): the zeros are stored as values in the scheme's own
format, so `disk_bytes` is the dense checkpoint's. `measure` reads the saved weights back and logs the
fraction that is zero, the fraction of 4-groups that keep the pattern, and `sparse_runtime_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from quantsweep.config import SparsityConfig
from quantsweep.errors import ConfigError
from quantsweep.sizing import measured
from quantsweep.tables import GIB

# The one structure accepted: what NVIDIA's sparse tensor cores (Ampere and later) multiply.
MASK_2_4 = "2:4"
# Position metadata per kept value in NVIDIA's 2:4 layout (cuSPARSELt, CUTLASS): which 2 of the 4 it is.
INDEX_BITS = 2
# The run's tag: the sparse format the checkpoint declares (none under compressed-tensors 0.19).
FORMAT_TAG = "quantsweep.sparsity_format"
_PRUNED = ["Linear"]


def enabled(cfg: SparsityConfig) -> bool:
    return cfg.mask_structure is not None


def structure(cfg: SparsityConfig) -> tuple[int, int]:
    """(N, M) of the mask structure N:M."""
    n, _, m = str(cfg.mask_structure).partition(":")
    return int(n), int(m)


def suffix(cfg: SparsityConfig) -> str:
    """What a point's name gains: `/2of4`, nothing for dense weights."""
    return f"/{cfg.name}" if enabled(cfg) else ""


def identity(cfg: SparsityConfig) -> dict[str, Any]:
    """The settings that change the checkpoint, for its fingerprints; empty for dense weights, so points
    made before sparsity keep their fingerprints."""
    if not enabled(cfg):
        return {}
    plain = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(plain, dict)
    return {"sparsity": {k: v for k, v in plain.items() if k != "name"}}


def layers(meta: Any, cfg: SparsityConfig, ignore: list[str]) -> tuple[str, ...]:
    """The Linear layers SparseGPT prunes in `meta` (the model on the meta device), named and matched as
    llm-compressor does (Linear layers inside each `targets` module, less `ignore`). ConfigError when there
    are none, or when a layer's input width is not a multiple of M (the last group of M would be partial)."""
    from compressed_tensors.utils import match_named_modules, match_targets

    if not enabled(cfg):
        return ()
    found: dict[str, Any] = {}
    for outer, module in match_named_modules(meta, list(cfg.targets)):
        for inner, linear in match_named_modules(module, _PRUNED):
            name = f"{outer}.{inner}" if inner else outer
            if not match_targets(name, linear, ignore):
                found[name] = linear
    if not found:
        raise ConfigError(
            f"sparsity.targets={list(cfg.targets)} (less the ignore list) match no Linear layer of this "
            r"model; name its decoder layers, e.g. sparsity.targets=['re:.*layers\.\d+$']"
        )
    n, m = structure(cfg)
    misfits = [(name, int(linear.in_features)) for name, linear in found.items() if linear.in_features % m]
    if misfits:
        name, width = misfits[0]
        raise ConfigError(
            f"sparsity={cfg.name} zeroes {n} of every {m} weights along a layer's input, and {len(misfits)} "
            f"pruned layers have an input width that is not a multiple of {m} (e.g. {name}: {width}); add "
            "them to the ignore list (ignore.patterns=[...]) or use sparsity=none"
        )
    return tuple(found)


def modifiers(cfg: SparsityConfig, ignore: list[str]) -> list[Any]:
    """llm-compressor's pruning modifiers, which go before the quantization modifier; none for dense."""
    if not enabled(cfg):
        return []
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    return [
        SparseGPTModifier(
            sparsity=cfg.sparsity,
            mask_structure=str(cfg.mask_structure),
            targets=list(cfg.targets),
            ignore=list(ignore),
            block_size=cfg.block_size,
            dampening_frac=cfg.dampening_frac,
        )
    ]


def runtime_bytes(value_bytes: float, elements: int) -> float:
    """One 2:4 layer's weight as a 2:4 kernel holds it: half the values, at the bytes they are stored in,
    plus INDEX_BITS of position per kept value (elements / 2 of them: elements / 8 bytes). Scales, zero
    points and everything else are unchanged. BF16: 2 → 1.125 bytes per weight, FP8 1 → 0.625, INT4 0.5 →
    0.375."""
    return value_bytes / 2 + elements / 2 * INDEX_BITS / 8


def storage_format(quantization: dict[str, Any]) -> str:
    """The sparse format a checkpoint's quantization config records; `none` when its zeros are stored as
    values (every compressed-tensors 0.19 checkpoint, and one without a quantization config)."""
    return str((quantization.get("sparsity_config") or {}).get("format") or "none")


def record(checkpoint: Path, names: Sequence[str], disk_bytes: int, cfg: SparsityConfig) -> dict[str, float]:
    """On the active run, for a pruned checkpoint: the param `sparsity.layers_pruned`, the tag FORMAT_TAG, and
    `measure`'s metrics (returned); nothing without a sparsity."""
    if not names:
        return {}
    import mlflow

    mlflow.log_param("sparsity.layers_pruned", len(names))
    mlflow.set_tag(FORMAT_TAG, storage_format(_quantization_config(checkpoint)))
    return measure(checkpoint, names, disk_bytes, cfg)


def measure(checkpoint: Path, names: Sequence[str], disk_bytes: int, cfg: SparsityConfig) -> dict[str, float]:
    """Read the pruned layers back from the saved checkpoint (dequantized one layer at a time) and return
    `sparsity_zero_fraction` (weights that are exactly zero), `sparsity_pattern_fraction` (groups of M
    consecutive input weights with at least N zeros: 1.0 when the pattern held through quantization) and
    `sparse_runtime_bytes`/`_gib` (`disk_bytes` with each pruned layer's values as `runtime_bytes`)."""
    n, m = structure(cfg)
    zeros = elements = groups = kept = 0
    saved = 0.0
    for value_bytes, weight in _saved_weights(checkpoint, names):
        zero = weight == 0
        per_group = zero.reshape(weight.shape[0], -1, m).sum(dim=-1)
        zeros, elements = zeros + int(zero.sum()), elements + zero.numel()
        groups, kept = groups + per_group.numel(), kept + int((per_group >= n).sum())
        saved += value_bytes - runtime_bytes(value_bytes, zero.numel())
    runtime = disk_bytes - saved
    return {
        "sparsity_zero_fraction": zeros / elements,
        "sparsity_pattern_fraction": kept / groups,
        "sparse_runtime_bytes": runtime,
        "sparse_runtime_gib": runtime / GIB,
    }


def _saved_weights(checkpoint: Path, names: Sequence[str]) -> Iterator[tuple[int, Any]]:
    """(bytes of the stored weight values, the dense weight) of each named layer, from the safetensors
    files; quantized layers go through compressed-tensors' own dequantizer."""
    from safetensors import safe_open

    dequantizer = _dequantizer(checkpoint)
    wanted = set(names)
    seen: set[str] = set()
    for path in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            by_layer: dict[str, list[str]] = {}
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                layer = key.rpartition(".")[0]
                if layer in wanted:
                    by_layer.setdefault(layer, []).append(key)
            for layer, keys in by_layer.items():
                tensors = {key: f.get_tensor(key) for key in keys}
                values = tensors.get(f"{layer}.weight_packed", tensors.get(f"{layer}.weight"))
                if values is None:
                    raise ValueError(f"{path} holds no weight for {layer}")
                value_bytes = values.numel() * values.element_size()
                dense = dequantizer.process(tensors) if dequantizer is not None else tensors
                seen.add(layer)
                yield value_bytes, dense[f"{layer}.weight"]
    missing = wanted - seen
    if missing:
        raise ValueError(
            f"{checkpoint} holds no weights for {len(missing)} pruned layers, e.g. {min(missing)}"
        )


def _quantization_config(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's quantization config ({} for one saved without quantization)."""
    return measured.hf_config(checkpoint).get("quantization_config") or {}


def _dequantizer(checkpoint: Path) -> Any:
    """compressed-tensors' checkpoint dequantizer, or None for a checkpoint saved without quantization."""
    if not _quantization_config(checkpoint):
        return None
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    return CompressedTensorsDequantizer(str(checkpoint))
