"""MLflow bookkeeping: the store, fingerprints that identify finished work, and finding it again.

Every evaluation is an MLflow run tagged with a fingerprint of everything that determines its result, so
a baseline or a sweep point already FINISHED in the store is reused instead of recomputed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock

from quantsweep import interrupts, logs
from quantsweep.config import TrackingConfig
from quantsweep.errors import ConfigError

ROLE = "quantsweep.role"
FINGERPRINT = "quantsweep.fingerprint"
BASELINE_FINGERPRINT = "quantsweep.baseline_fingerprint"
BASELINE_RUN = "quantsweep.baseline_run_id"
SWEEP_ID = "quantsweep.sweep_id"
ERROR = "quantsweep.error"
CHECKPOINT_REUSED = "quantsweep.checkpoint_reused"
# Where the evaluated items came from: `file:<path> sha256:<digest>` or `hub:<task>` (point.data_source).
DATA_SOURCE = "quantsweep.data_source"
# How recovery_stderr was computed: `paired` over the items both runs scored, or `independent`.
RECOVERY_STDERR = "quantsweep.recovery_stderr"
# Per-item scores of an evaluation run: {task: {metric: {doc_id: value}}}.
ITEMS = "items.json"
# The libraries' output during a run (quantsweep.logs).
LOG = "logs.txt"
PACKAGES = ("llmcompressor", "compressed-tensors", "lm_eval", "torch", "transformers", "quantsweep")
# MLflow 3 records an experiment's kind as a tag; quantsweep's are runs with metrics ("Machine learning"),
# not GenAI traces.
EXPERIMENT_KIND = "mlflow.experimentKind"
CLASSIC_KIND = "custom_model_development"
# A saved runs-table view is an experiment tag under this prefix; `?viewStateShareKey=<id>` opens it.
VIEW_ID = "quantsweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
KEY_METRICS = ("accuracy", "recovery", "disk_gib", "bits_per_weight", "passed")


@functools.cache
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that change results (read once per process)."""
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


def _key_metrics_view() -> str:
    """A saved view as MLflow's UI stores one (its 'Views' menu on the runs table): shows KEY_METRICS."""
    metrics = [f"metrics.`{name}`" for name in KEY_METRICS]
    name = "attributes.`Run Name`"  # long (model/scheme/algorithm/group/ignore): shown whole when wider
    order = [name, "runDateAndNestInfo", "duration", *metrics]
    state = json.dumps({"selectedColumns": metrics, "columnOrder": order, "columnWidths": {name: 330}})
    now = int(time.time() * 1000)
    return json.dumps({"name": "quantsweep key metrics", "createdAt": now, "updatedAt": now, "state": state})


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the store, creating the SQLite folder and experiment; returns the experiment id.

    The experiment is marked as MLflow 3's classic kind and given a saved runs-table view of KEY_METRICS, on
    creation and on an older experiment that lacks them; tags already there (a user's choice) are left alone.
    Workers starting at once: creation writes the tags with the experiment, and a tag another worker added
    first is taken as written (PostgreSQL refuses the second insert)."""
    check_store(cfg.uri)
    import mlflow

    # quantsweep prints its own run lines; MLflow's "View run at ..." per run (tracking servers) is noise.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    mlflow.set_tracking_uri(cfg.uri)
    if cfg.uri.startswith("sqlite:///"):
        db = Path(cfg.uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # The first access creates the schema: two processes doing it at once collide ("table exists").
        with FileLock(f"{db}.lock"):
            experiment = mlflow.get_experiment_by_name(cfg.experiment)
    else:
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
    tags = {EXPERIMENT_KIND: CLASSIC_KIND, VIEW_TAG: _key_metrics_view()}
    if experiment is None:
        # A tracking server stores artifacts where it was told (--serve-artifacts): no local path then.
        location = None
        if cfg.artifact_location:
            artifacts = Path(cfg.artifact_location).expanduser().resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            location = artifacts.as_uri()
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # created meanwhile by another worker
            mlflow.create_experiment(cfg.experiment, artifact_location=location, tags=tags)
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
    assert experiment is not None
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        if key in experiment.tags:
            continue
        try:
            client.set_experiment_tag(experiment.experiment_id, key, value)
        except mlflow.exceptions.MlflowException:
            if key not in client.get_experiment(experiment.experiment_id).tags:
                raise
    return experiment.experiment_id


# Database stores (MLflow's SQLAlchemy backends) and the pip package of each SQLAlchemy driver module.
_DATABASES = ("postgresql", "mysql", "mssql", "sqlite")
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


def check_store(uri: str) -> None:
    """A database tracking URI names a store whose SQLAlchemy driver imports: a missing one is one line
    naming the package to install, before any work, not MLflow's `No module named ...` mid-run."""
    if uri.partition("://")[0].partition("+")[0] not in _DATABASES:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
    except ArgumentError as exc:
        raise ConfigError(
            "tracking.uri is not a database URL SQLAlchemy can read; give dialect[+driver]://user@host/db "
            "or sqlite:///mlruns/mlflow.db"
        ) from exc
    shown = url.render_as_string(hide_password=True)
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"tracking.uri={shown!r}: SQLAlchemy has no driver {url.drivername!r}; name an installed one "
            f"({url.get_backend_name()}+<driver>://) or use sqlite:///mlruns/mlflow.db"
        ) from exc
    except ImportError as exc:
        package = _DRIVER_PACKAGES.get(exc.name or "", exc.name)
        raise ConfigError(
            f"tracking.uri={shown!r} needs the database driver {exc.name!r}, which is not installed: "
            f"`pip install {package}` into this environment, or use sqlite:///mlruns/mlflow.db"
        ) from exc


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


_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, `_-. /`: anything else (lm-eval's commas) becomes `_`."""
    return _BAD.sub("_", name)


# What MLflow accepts in a param key.
_PARAM_KEY = re.compile(r"[0-9A-Za-z_\-. :/]+")


# The password of a URL (`scheme://user:secret@host`): a tracking URI or a study storage may carry one.
_SECRET = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/:@\s]*:)[^@\s]+@")


def redact(text: str) -> str:
    """Mask any URL password in `text`; the one filter between the config and MLflow params and tags.
    Credentials belong in the environment (PGPASSWORD, MLFLOW_TRACKING_PASSWORD), never in a config."""
    return _SECRET.sub(r"\g<head>***@", text)


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
            value = json.dumps(value) if isinstance(value, list | dict) else value
            flat[name] = redact(value) if isinstance(value, str) else value
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


class Tracked:
    """An MLflow run that ends FINISHED, FAILED (error logged) or KILLED (Ctrl-C), never left RUNNING.

    While it is entered, the libraries' output is captured into its `logs.txt` artifact (quantsweep.logs).
    """

    def __init__(self, experiment_id: str, name: str, tags: dict[str, str], parent: str | None):
        import mlflow

        self.run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=name,
            tags=tags,
            parent_run_id=parent,
            nested=parent is not None,
        )
        self.run_id = self.run.info.run_id
        self.name = name
        self.status = "FINISHED"
        self.error: str | None = None

    def withdraw(self) -> None:
        """Take back a run that lost its claim (quantsweep.claims) before it did any work: it is deleted,
        so neither the store nor the leaderboard ever shows it."""
        import mlflow

        mlflow.end_run("KILLED")
        mlflow.MlflowClient().delete_run(self.run_id)

    def __enter__(self) -> Tracked:
        self._folder = Path(tempfile.mkdtemp(prefix="quantsweep-log-"))
        self._capture = logs.Capture(self._folder / LOG).start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        import mlflow

        self._capture.stop()
        # A SIGTERM whose KeyboardInterrupt was swallowed (quantsweep.interrupts): the run still ends KILLED.
        lost = interrupts.pending() if exc is None else None
        exc = exc or lost
        try:
            if exc is not None:
                self.status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
                self.error = f"{type(exc).__name__}: {exc}"
                mlflow.set_tag(ERROR, redact(self.error)[:5000])
                mlflow.log_text(redact("".join(traceback.format_exception(exc))), "error.txt")
            mlflow.log_artifact(str(self._capture.path))
            log_uri = mlflow.get_artifact_uri(LOG)
        finally:
            mlflow.end_run(self.status)
            shutil.rmtree(self._folder, ignore_errors=True)
        if self.status != "FINISHED":
            logs.say(f"quantsweep: {self.name} {self.status}; the libraries' log: {log_uri}", err=True)
        if lost is not None:
            raise lost
        # Errors are logged on the run and reported by status; Ctrl-C still stops the process.
        return self.status == "FAILED"
