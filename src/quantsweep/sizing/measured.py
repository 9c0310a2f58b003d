"""What a checkpoint costs: bytes on disk, parameters, bits per weight, and the seed's vRAM estimates."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from quantsweep.sizing import formulas
from quantsweep.tables import GIB


def disk_bytes(checkpoint: str | Path) -> int:
    """Bytes of the weight files (safetensors), what vLLM loads; tokenizer and configs are not counted."""
    return sum(p.stat().st_size for p in Path(checkpoint).glob("*.safetensors"))


def num_parameters(checkpoint: str | Path) -> int:
    """Elements stored in an unquantized checkpoint's safetensors files, read from their JSON headers alone
    (no weights loaded, no torch): the format is an 8-byte little-endian header length, then the header."""
    total = 0
    for path in Path(checkpoint).glob("*.safetensors"):
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


def hf_config(checkpoint: str | Path) -> dict:
    return json.loads((Path(checkpoint) / "config.json").read_text())


def footprint(
    checkpoint: str | Path, params: int, kv_bytes: int, baseline_bytes: int | None = None
) -> dict[str, float]:
    """Size metrics for one checkpoint; `params` is the unquantized parameter count (from the baseline)."""
    stored = disk_bytes(checkpoint)
    shape = formulas.ModelShape.from_hf_config(hf_config(checkpoint), num_parameters=params)
    per_token = formulas.kv_cache_bytes_per_token(shape, kv_bytes=kv_bytes)
    metrics = {
        "disk_bytes": stored,
        "disk_gib": stored / GIB,
        "num_parameters": params,
        "bits_per_weight": 8 * stored / params,
        # The seed's formula, params x bytes per param x 1.2, with the bytes per param actually stored.
        "weights_vram_est_gib": formulas.weights_vram_bytes(params, stored / params) / GIB,
        "kv_cache_bytes_per_token": per_token,
    }
    if shape.max_context:
        metrics["max_context"] = shape.max_context
        metrics["kv_cache_gib_max_context"] = per_token * shape.max_context / GIB
    if baseline_bytes:
        metrics["compression_ratio"] = baseline_bytes / stored
    return metrics
