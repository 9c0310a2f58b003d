"""A local text file as lm-eval documents for the `text_file` perplexity task.

Documents are the file's paragraphs (separated by blank lines), or its lines when it has no blank line, so
that a paired recovery stderr has many documents to pair; `eval.limit` counts documents.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import re
from pathlib import Path

from quantsweep.errors import ConfigError
from quantsweep.evaluation.hellaswag_file import digest

BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _read(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    elif raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"text file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "give eval.data_path a plain .txt (or .txt.bz2/.txt.gz) file"
        ) from exc


def documents(path: str | Path) -> list[str]:
    """The file's paragraphs, or its lines when it has no blank line; whitespace-only ones dropped."""
    text = _read(Path(path)).replace("\r\n", "\n")
    paragraphs = [p.strip() for p in BLANK_LINE.split(text) if p.strip()]
    if len(paragraphs) > 1:
        return paragraphs
    return [line.strip() for line in text.splitlines() if line.strip()]


def check(path: str | Path) -> None:
    """ConfigError unless the file exists, is UTF-8 and holds text; read once per version per process."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"text file {str(path)!r} does not exist; set eval.data_path (or eval.data_paths.text_file) "
            "to a UTF-8 .txt file"
        )
    stat = path.stat()
    _check_once(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check_once(path: str, size: int, mtime_ns: int) -> None:
    if not documents(path):
        raise ConfigError(f"text file {path!r} holds no text; give eval.data_path a file with some")


def prepare(path: str | Path, cache_dir: str | Path) -> Path:
    """Write the documents once as the JSONL the task reads; cached by content hash."""
    target = Path(cache_dir).expanduser() / "data" / f"text-{digest(path)}.jsonl"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents(path)))
        partial.replace(target)
    return target
