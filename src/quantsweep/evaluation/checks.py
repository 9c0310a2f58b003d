"""A suite refused before any model loads: missing files and folders, unknown tasks, settings for tasks the
suite does not run, and tasks whose data is on a hub this machine cannot reach."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from quantsweep.config import EvalConfig
from quantsweep.errors import ConfigError
from quantsweep.evaluation import taskset
from quantsweep.evaluation.taskset import FILE_TASKS, LOCAL_BUILDERS

OFFLINE_FIX = (
    "run where the hub is reachable, or evaluate offline with eval=hellaswag_file, eval=text_file or "
    "your own task folder (eval.include_path)"
)
# Metrics lm-eval computes lower-is-better: a floor on their absolute value ("accuracy") makes no sense.
LOWER_IS_BETTER = ("word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity")


def check(cfg: EvalConfig) -> None:
    """Every task's definition and data are there, and its settings name tasks of the suite."""
    if not 0.5 <= cfg.confidence < 1.0:
        raise ConfigError(
            f"eval.confidence={cfg.confidence} must be in [0.5, 1): 0.5 judges the point estimate, 0.9 "
            "its one-sided 90% lower bound"
        )
    for folder in taskset.include_folders(cfg):
        if not folder.is_dir():
            raise ConfigError(
                f"eval.include_path has {str(folder)!r}, which is not a folder; give folders of lm-eval "
                "task YAMLs (eval.include_path=[/path/to/tasks])"
            )
    for name, setting in (("metrics", cfg.metrics), ("task_overrides", cfg.task_overrides)):
        stray = [t for t in setting if t not in cfg.tasks]
        if stray:
            raise ConfigError(f"eval.{name} names {stray}, which are not in eval.tasks={list(cfg.tasks)}")
    stray = [t for t in cfg.data_paths if t not in FILE_TASKS]
    if stray:
        raise ConfigError(f"eval.data_paths names {stray}; only {', '.join(FILE_TASKS)} read a local file")
    if cfg.floor_on == "accuracy" and _primary_metric(cfg) in LOWER_IS_BETTER:
        raise ConfigError(
            f"eval.floor_on=accuracy with {_primary_metric(cfg)} (lower is better) as the primary metric; "
            "judge its recovery instead (eval.floor_on=recovery)"
        )
    for task in cfg.tasks:
        if task in FILE_TASKS:
            path = taskset.data_path(cfg, task)
            if not path:
                raise ConfigError(
                    f"eval.tasks has {task!r}, which reads a local file: set eval.data_path (or "
                    f"eval.data_paths.{task}; for HellaSwag the QUANTSWEEP_HELLASWAG environment variable), "
                    "or use eval=hellaswag with hub access"
                )
            FILE_TASKS[task].check(path)
    others = [t for t in cfg.tasks if t not in FILE_TASKS]
    if others:
        index = taskset.task_manager(cfg, None).task_index
        unknown = [t for t in others if t not in index]
        if unknown:
            raise ConfigError(
                f"eval.tasks has {unknown}, unknown to lm-eval; see `lm-eval ls tasks`, add your own task "
                f"folder with eval.include_path, or use {', '.join(FILE_TASKS)} with eval.data_path"
            )
        check_hub(others, index)


def _primary_metric(cfg: EvalConfig) -> str:
    task = cfg.primary_task or (cfg.tasks[0] if cfg.tasks else "")
    return cfg.metrics.get(task, cfg.primary_metric)


def hub_datasets(name: str, index: dict[str, Any], seen: set[str] | None = None) -> dict[str, str]:
    """{task: hub dataset} for the tasks under `name` (a task, group or tag) that read the hub."""
    seen = set() if seen is None else seen
    entry = index.get(name)
    if entry is None or name in seen:
        return {}
    seen.add(name)
    cfg = entry.cfg or {}
    if entry.kind.name == "TAG":
        return {k: v for member in sorted(entry.tags) for k, v in hub_datasets(member, index, seen).items()}
    if entry.kind.name == "GROUP":
        members = [m if isinstance(m, str) else m.get("task") or m.get("group") for m in cfg.get("task", [])]
        return {k: v for m in members if isinstance(m, str) for k, v in hub_datasets(m, index, seen).items()}
    dataset = cfg.get("dataset_path")
    if not isinstance(dataset, str) or dataset in LOCAL_BUILDERS or Path(dataset).expanduser().exists():
        return {}
    return {name: dataset}


def check_hub(tasks: list[str], index: dict[str, Any]) -> None:
    """Tasks reading hub datasets need the hub, or the datasets in the local cache."""
    needed = {k: v for task in tasks for k, v in hub_datasets(task, index).items()}
    missing = {task: ds for task, ds in needed.items() if not _cached(ds)}
    if not missing or _hub_reachable():
        return
    datasets = ", ".join(dict.fromkeys(missing.values()))
    raise ConfigError(
        f"eval.tasks {list(tasks)} read their data from the Hugging Face hub ({datasets}), which cannot be "
        f"reached from here and is not in the local datasets cache; {OFFLINE_FIX}"
    )


def _cached(dataset: str) -> bool:
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
    home = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    return hub.is_dir() or (home / dataset.replace("/", "___")).is_dir()


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """False when offline mode is on or the hub's host does not answer within 3 s (asked once a process)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=3).close()
    except OSError:
        return False
    return True
