"""Calibration data: a tokenized `datasets.Dataset` (what oneshot accepts) from a local file or the hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantsweep import hellaswag_file
from quantsweep.config import CalibrationConfig
from quantsweep.errors import ConfigError
from quantsweep.models import looks_local

# Local layouts by suffix; `.bz2` files are read as HellaSwag (the only compressed layout we take).
LAYOUTS = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".bz2": "hellaswag"}


def layout(path: str) -> str:
    found = LAYOUTS.get(Path(path).suffix)
    if found is None:
        raise ConfigError(
            f"calibration.dataset={path!r}: unknown file type; use a .txt (one sample per non-empty "
            "line), a .jsonl (field calibration.text_field) or a HellaSwag .txt.bz2 file"
        )
    return found


def check(cfg: CalibrationConfig) -> None:
    """Pre-flight: a local dataset must exist and have a known layout."""
    if looks_local(cfg.dataset):
        if not Path(cfg.dataset).expanduser().is_file():
            raise ConfigError(
                f"calibration.dataset={cfg.dataset!r} does not exist; point it at a local "
                ".txt/.jsonl file or a hub dataset id"
            )
        layout(cfg.dataset)
    if cfg.num_samples < 1 or cfg.max_seq_length < 1:
        raise ConfigError(
            f"calibration.num_samples={cfg.num_samples} and calibration.max_seq_length="
            f"{cfg.max_seq_length} must both be at least 1"
        )


def _local_texts(cfg: CalibrationConfig) -> list[str]:
    path = Path(cfg.dataset).expanduser()
    kind = layout(cfg.dataset)
    if kind == "hellaswag":
        return [
            item["query"] + " " + item["choices"][item["label"]] for item in hellaswag_file.read_items(path)
        ]
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if kind == "text":
        return lines
    return [json.loads(line)[cfg.text_field] for line in lines]


def _hub_records(cfg: CalibrationConfig) -> list[Any]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.dataset, split=cfg.split)
    except Exception as exc:  # offline, missing, or gated: one clear line, not a stack of retries
        raise ConfigError(
            f"calibration.dataset={cfg.dataset!r} could not be loaded from the hub ({type(exc).__name__}); "
            "set calibration.dataset to a local .txt/.jsonl file when offline"
        ) from exc
    return list(ds[cfg.text_field])


def _as_text(record: Any, tokenizer: Any) -> str:
    """Chat records (lists of {role, content}) go through the model's chat template, as served."""
    if isinstance(record, list):
        return tokenizer.apply_chat_template(record, tokenize=False)
    return str(record)


def load(cfg: CalibrationConfig, tokenizer: Any) -> Any:
    """`num_samples` records after `skip`, shuffled with `seed`, tokenized to `max_seq_length`."""
    import datasets

    records = _local_texts(cfg) if looks_local(cfg.dataset) else _hub_records(cfg)
    records = records[cfg.skip :]
    if not records:
        raise ConfigError(f"calibration.dataset={cfg.dataset!r} has no records after skip={cfg.skip}")
    ds = datasets.Dataset.from_dict({"text": [_as_text(r, tokenizer) for r in records]})
    ds = ds.shuffle(seed=cfg.seed).select(range(min(cfg.num_samples, len(ds))))
    return ds.map(
        lambda batch: tokenizer(
            batch["text"], max_length=cfg.max_seq_length, truncation=True, add_special_tokens=False
        ),
        batched=True,
        remove_columns=["text"],
    )
