"""Read HellaSwag from a local file (original JSONL or llama.cpp's six-line text layout, optionally .bz2).

Items come out as lm-eval's hellaswag task sees them after its `process_docs`: `query`, `choices`, `label`.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from quantsweep.errors import ConfigError


def preprocess(text: str) -> str:
    """lm-eval's hellaswag clean-up: WikiHow bracket tags out, double spaces squeezed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    return raw.decode("utf-8")


def read_items(path: str | Path) -> Iterator[dict]:
    """Yield {query, choices, label} for each item, whichever layout the file uses."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"HellaSwag file {str(path)!r} does not exist; set eval.data_path (or QUANTSWEEP_HELLASWAG) "
            "to a HellaSwag .jsonl or six-line .txt(.bz2) file, or use eval=hellaswag with hub access"
        )
    text = _open_text(path)
    if text.lstrip().startswith("{"):
        yield from _jsonl_items(text)
    else:
        yield from _six_line_items(text, path)


def check(path: str | Path) -> None:
    """Raise ConfigError unless the file exists and its first item parses. Every point of a sweep checks
    the same file: it is read once per version (path, size, mtime) per process, not once per point."""
    path = Path(path)
    if not path.is_file():
        next(read_items(path))  # raises the missing-file error
    stat = path.stat()
    _check_once(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check_once(path: str, size: int, mtime_ns: int) -> None:
    next(iter(read_items(path)), None)


def _jsonl_items(text: str) -> Iterator[dict]:
    for line in text.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        yield {
            "query": preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [preprocess(ending) for ending in doc["endings"]],
            "label": int(doc["label"]),
        }


def _six_line_items(text: str, path: Path) -> Iterator[dict]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise ConfigError(
            f"HellaSwag file {str(path)!r} has {len(lines)} lines, not a multiple of 6: expected "
            "llama.cpp's layout (context, gold index, four endings) or HellaSwag JSONL"
        )
    for i in range(0, len(lines), 6):
        yield {
            "query": preprocess(lines[i]),
            "choices": [preprocess(ending) for ending in lines[i + 2 : i + 6]],
            "label": int(lines[i + 1]),
        }


def digest(path: str | Path) -> str:
    """Content hash: evaluations of the same items share a fingerprint wherever the file lives."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def prepare(path: str | Path, cache_dir: str | Path) -> Path:
    """Convert once to the JSONL the task YAML reads; cached by content hash."""
    target = Path(cache_dir).expanduser() / "data" / f"hellaswag-{digest(path)}.jsonl"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with partial.open("w") as out:
            for item in read_items(path):
                out.write(json.dumps(item) + "\n")
        partial.replace(target)
    return target
