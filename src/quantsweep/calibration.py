"""Calibration data: a tokenized `datasets.Dataset` (what oneshot accepts) from a local file or the hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantsweep.config import CalibrationConfig
from quantsweep.errors import ConfigError
from quantsweep.evaluation import hellaswag_file
from quantsweep.models import looks_local

# Local layouts by suffix (calibration.layout=auto); `.bz2` files are read as HellaSwag.
LAYOUTS = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".bz2": "hellaswag"}
KINDS = ("auto", "text", "jsonl", "hellaswag")


def layout(cfg: CalibrationConfig) -> str:
    """The layout a local file is read in: the configured one, or the one its suffix implies."""
    if cfg.layout not in KINDS:
        raise ConfigError(f"calibration.layout={cfg.layout!r}; choose one of {', '.join(KINDS)}")
    if cfg.layout != "auto":
        return cfg.layout
    found = LAYOUTS.get(Path(cfg.dataset).suffix)
    if found is None:
        raise ConfigError(
            f"calibration.dataset={cfg.dataset!r}: unknown file type; use a .txt (one sample per non-empty "
            "line), a .jsonl (field calibration.text_field) or a HellaSwag .txt.bz2 file, or set "
            f"calibration.layout to one of {', '.join(KINDS[1:])}"
        )
    return found


def identity(cfg: CalibrationConfig) -> dict[str, Any]:
    """What a calibrated checkpoint depends on: every setting but the name; the layout only where it
    differs from what the suffix implies, so checkpoints made before the setting existed keep their key."""
    values = {k: getattr(cfg, k) for k in CalibrationConfig.__dataclass_fields__ if k != "name"}
    implied = LAYOUTS.get(Path(cfg.dataset).suffix) if looks_local(cfg.dataset) else None
    if cfg.layout in ("auto", implied):
        del values["layout"]
    return values | {"name": None}


def check(cfg: CalibrationConfig) -> None:
    """Pre-flight: a local dataset must exist and read in its layout (first record), before any work."""
    if looks_local(cfg.dataset):
        path = Path(cfg.dataset).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"calibration.dataset={cfg.dataset!r} does not exist; point it at a local "
                ".txt/.jsonl file or a hub dataset id"
            )
        kind = layout(cfg)
        if kind == "hellaswag":
            hellaswag_file.check(path)
        elif kind == "jsonl":
            _check_field(cfg, path)
    elif cfg.layout != "auto":
        raise ConfigError(
            f"calibration.layout={cfg.layout!r} reads local files, and calibration.dataset={cfg.dataset!r} "
            "is not one; leave calibration.layout=auto for a hub dataset"
        )
    if cfg.num_samples < 1 or cfg.max_seq_length < 1:
        raise ConfigError(
            f"calibration.num_samples={cfg.num_samples} and calibration.max_seq_length="
            f"{cfg.max_seq_length} must both be at least 1"
        )


def _check_field(cfg: CalibrationConfig, path: Path) -> None:
    with path.open() as lines:
        first = next((line for line in lines if line.strip()), None)
    try:
        record = json.loads(first) if first is not None else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"calibration.dataset={cfg.dataset!r}: first line is not JSON ({exc})") from exc
    if not isinstance(record, dict) or cfg.text_field not in record:
        found = ", ".join(record) if isinstance(record, dict) else "no object"
        raise ConfigError(
            f"calibration.dataset={cfg.dataset!r}: its first record has no field "
            f"calibration.text_field={cfg.text_field!r} (it has: {found}); set calibration.text_field, "
            "or calibration.layout=hellaswag for a HellaSwag file"
        )


def _local_texts(cfg: CalibrationConfig) -> list[str]:
    path = Path(cfg.dataset).expanduser()
    kind = layout(cfg)
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
