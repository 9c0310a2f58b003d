"""MLflow bookkeeping: the store, fingerprints that identify finished work, and finding it again.

Every evaluation is an MLflow run tagged with a fingerprint of everything that determines its result, so
a baseline or a sweep point already FINISHED in the store is reused instead of recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from quantsweep.config import TrackingConfig

ROLE = "quantsweep.role"
FINGERPRINT = "quantsweep.fingerprint"
BASELINE_FINGERPRINT = "quantsweep.baseline_fingerprint"
BASELINE_RUN = "quantsweep.baseline_run_id"
SWEEP_ID = "quantsweep.sweep_id"
ERROR = "quantsweep.error"
CHECKPOINT_REUSED = "quantsweep.checkpoint_reused"
# How recovery_stderr was computed: `paired` over the items both runs scored, or `independent`.
RECOVERY_STDERR = "quantsweep.recovery_stderr"
# Per-item scores of an evaluation run: {task: {metric: {doc_id: value}}}.
ITEMS = "items.json"
PACKAGES = ("llmcompressor", "compressed-tensors", "lm_eval", "torch", "transformers", "quantsweep")


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def fingerprint(payload: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able description of a computation."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the store, creating the SQLite folder and experiment; returns the experiment id."""
    import mlflow

    if cfg.uri.startswith("sqlite:///"):
        Path(cfg.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = Path(cfg.artifact_location).expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=artifacts.as_uri())
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel sweep worker
        return mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def find_finished(experiment_id: str, fp: str) -> Any | None:
    """The newest FINISHED run with this fingerprint, or None."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{FINGERPRINT}` = '{fp}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def kill_stale(experiment_id: str, fp: str) -> None:
    """Runs of this fingerprint still RUNNING belong to a process that died (kill -9, power loss)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    stale = client.search_runs(
        [experiment_id], filter_string=f"tags.`{FINGERPRINT}` = '{fp}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")


_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, `_-. /`: anything else (lm-eval's commas) becomes `_`."""
    return _BAD.sub("_", name)


# What MLflow accepts in a param key.
_PARAM_KEY = re.compile(r"[0-9A-Za-z_\-. :/]+")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → {"a.b": value} params, lists and dicts shown as JSON.

    A dict whose keys MLflow refuses as names (layer_overrides' `re:.*down_proj`) stays one JSON param.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(_PARAM_KEY.fullmatch(str(k)) for k in value):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def log_metrics(metrics: dict[str, float | int | None]) -> None:
    """Log the numeric, finite values; None (e.g. GPU peak on CPU) is left out rather than faked."""
    import math

    import mlflow

    clean = {
        metric_name(k): float(v)
        for k, v in metrics.items()
        if v is not None and not isinstance(v, bool) and math.isfinite(float(v))
    }
    if clean:
        mlflow.log_metrics(clean)


def log_items(items: dict[str, dict[str, dict[int, float]]]) -> None:
    """Per-item scores as an artifact of the active run, for paired comparisons with later runs."""
    import mlflow

    if items:
        mlflow.log_dict(items, ITEMS)


def load_items(run_id: str) -> dict[str, dict[str, dict[int, float]]] | None:
    """A run's per-item scores, or None for a run that has none (made before they were logged)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        raw = mlflow.artifacts.load_dict(f"runs:/{run_id}/{ITEMS}")
    except (MlflowException, OSError):
        return None
    return {
        task: {metric: {int(d): float(v) for d, v in values.items()} for metric, values in metrics.items()}
        for task, metrics in raw.items()
    }
