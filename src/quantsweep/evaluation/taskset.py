"""What lm-eval is asked to run: the suite's tasks, and where their definitions and data come from.

Task definitions come from lm-eval's own (hub data), from the task YAMLs shipped in `evaluation/tasks/`
(`*_file`: a local file, converted and filled in) and from the user's folders, `eval.include_path`, handed
to lm-eval's TaskManager as its include_path. Per-task settings (`eval.task_overrides`, e.g. the OpenLLM
suite's few-shot counts) go through a group quantsweep writes, lm-eval's own way of setting them per task.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from quantsweep.config import EvalConfig
from quantsweep.evaluation import hellaswag_file, text_file
from quantsweep.evaluation.scores import WRAPPER

TASKS_DIR = Path(__file__).parent / "tasks"
# Converters from a user's local file to the JSONL a shipped task YAML reads.
FILE_TASKS: dict[str, Any] = {"hellaswag_file": hellaswag_file, "text_file": text_file}
# datasets builders that read local files: a task using one needs no hub.
LOCAL_BUILDERS = {"json", "csv", "text", "parquet", "arrow", "pandas"}


def data_path(cfg: EvalConfig, task: str) -> str | None:
    """The local file a `*_file` task reads: eval.data_paths[task], else eval.data_path."""
    return cfg.data_paths.get(task) or cfg.data_path


def plain(value: Any) -> Any:
    """A config node as plain dicts and lists (what YAML and JSON take)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def include_folders(cfg: EvalConfig) -> list[Path]:
    """eval.include_path as folders: one path, several separated by os.pathsep (as lm-eval's CLI
    documents), or a list."""
    value = plain(cfg.include_path)
    paths = [] if not value else value.split(os.pathsep) if isinstance(value, str) else list(value)
    return [Path(p).expanduser().resolve() for p in paths if str(p).strip()]


class _Loader(yaml.SafeLoader):
    """lm-eval task YAML without importing lm-eval: `!function module.name` read as its text."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _local_data(spec: dict[str, Any]) -> Iterator[Path]:
    """Local files a task YAML's dataset reads (dataset_kwargs.data_files, a local dataset_path)."""
    files = (spec.get("dataset_kwargs") or {}).get("data_files")
    values = files.values() if isinstance(files, dict) else [files]
    names = [v for value in values for v in (value if isinstance(value, list) else [value])]
    names.append(spec.get("dataset_path"))
    for name in names:
        if isinstance(name, str) and name not in LOCAL_BUILDERS and Path(name).expanduser().exists():
            path = Path(name).expanduser()
            yield from sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def folder_digest(folder: Path) -> str:
    """Content hash of a task folder: every file in it (names and bytes) and the local data files its YAMLs
    read, so editing a prompt or the data changes every fingerprint that uses it."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    data = {d.resolve() for p in files if p.suffix == ".yaml" for d in _local_data(_yaml(p))}
    for path in files:
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    for path in sorted(data):
        h.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def user_tasks(cfg: EvalConfig) -> dict[str, Path]:
    """{task, group or tag name: the folder of eval.include_path defining it}."""
    found: dict[str, Path] = {}
    for folder in include_folders(cfg):
        for path in sorted(folder.rglob("*.yaml")):
            spec = _yaml(path)
            names = [spec.get("group") or spec.get("task"), *_tags(spec.get("tag"))]
            found |= {n: folder for n in names if isinstance(n, str)}
    return found


def _tags(tag: Any) -> list[str]:
    return [tag] if isinstance(tag, str) else list(tag or [])


def _builtin_needed(cfg: EvalConfig) -> bool:
    local = set(FILE_TASKS) | set(user_tasks(cfg))
    return any(task not in local for task in cfg.tasks)


@functools.lru_cache(maxsize=4)
def _manager(paths: tuple[str, ...], defaults: bool, digests: tuple[str, ...]) -> Any:
    """One index per set of folders and their contents (`digests`), built once a process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=defaults)


def task_manager(cfg: EvalConfig, include: Path | None) -> Any:
    """lm-eval's TaskManager over the user's folders and quantsweep's generated one; indexing lm-eval's
    thousands of built-in YAMLs is skipped when no task needs them."""
    folders = include_folders(cfg)
    paths = [*map(str, folders), *([str(include)] if include else [])]
    return _manager(tuple(paths), _builtin_needed(cfg), tuple(folder_digest(f) for f in folders))


def lm_eval_tasks(cfg: EvalConfig) -> list[str]:
    """The names handed to lm-eval: the suite's tasks, or the group that carries their settings."""
    return [WRAPPER] if cfg.task_overrides else list(cfg.tasks)


def _wrapper(cfg: EvalConfig, specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A group of the suite's tasks with each one's settings. eval.num_fewshot applies to a task that sets
    none of its own, except one whose definition fixes 0 (lm-eval leaves those at 0 too)."""
    index = task_manager(cfg, None).task_index if any(t not in specs for t in cfg.tasks) else {}
    members = []
    for task in cfg.tasks:
        entry = index.get(task)
        kind = "group" if entry is not None and entry.kind.name == "GROUP" else "task"
        definition = specs.get(task) or (entry.cfg if entry is not None else None) or {}
        settings = plain(cfg.task_overrides.get(task, {}))
        if (
            cfg.num_fewshot is not None
            and "num_fewshot" not in settings
            and definition.get("num_fewshot") != 0
        ):
            settings["num_fewshot"] = cfg.num_fewshot
        members.append({kind: task, **settings})
    return {"group": WRAPPER, "task": members, "metadata": {"version": 1.0}}


def include_dir(cfg: EvalConfig, cache_dir: str | Path) -> Path | None:
    """A folder of generated task YAMLs for lm-eval's include_path, named by its content: the shipped
    file tasks this suite uses, pointed at their prepared data, and the settings group; None when empty."""
    specs: dict[str, dict[str, Any]] = {}
    for task in (t for t in cfg.tasks if t in FILE_TASKS):
        data = FILE_TASKS[task].prepare(data_path(cfg, task), cache_dir)
        spec = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
        splits = spec["dataset_kwargs"]["data_files"]
        spec["dataset_kwargs"]["data_files"] = {split: str(data) for split in splits}
        specs[task] = spec
    if cfg.task_overrides:
        specs[WRAPPER] = _wrapper(cfg, specs)
    if not specs:
        return None
    text = {name: yaml.safe_dump(spec, sort_keys=False) for name, spec in specs.items()}
    digest = hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() / "tasks" / digest
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in text.items():
        (folder / f"{name}.yaml").write_text(body)
    return folder


def cli_include(cfg: EvalConfig, include: Path | None, cache_dir: str | Path) -> Path | None:
    """The one --include_path lm-eval's CLI takes: the generated folder, with copies of the user's folders
    inside when there are any (lm-eval does not follow symlinks when it indexes a folder)."""
    folders = include_folders(cfg)
    if not folders:
        return include
    key = "-".join([folder_digest(f) for f in folders] + ([include.name] if include else []))
    merged = Path(cache_dir).expanduser() / "tasks" / f"cli-{key}"
    if not merged.is_dir():
        staging = merged.with_name(merged.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for i, folder in enumerate(folders):
            shutil.copytree(folder, staging / f"user{i}", ignore=shutil.ignore_patterns("__pycache__"))
        if include is not None:
            shutil.copytree(include, staging / "generated")
        staging.replace(merged)
    return merged
