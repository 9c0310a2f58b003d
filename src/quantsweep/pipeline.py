"""One combination end to end: validate → baseline (reused by fingerprint) → quantize → evaluate → record.

Each evaluation is its own MLflow run: the baseline (role=baseline) is shared by every point with the same
model and eval settings; a point's run carries its own metrics plus the comparison with that baseline.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import OmegaConf

from quantsweep import calibration, devices, footprint, models, predict, recipes, tracking, validate
from quantsweep.config import Config, IgnoreConfig, SchemeConfig
from quantsweep.evaluate import EvalResult, eval_dtype, evaluate, primary_task
from quantsweep.hellaswag_file import digest
from quantsweep.quantize import quantize

GIB = 2**30


@dataclass
class Outcome:
    """What a caller (the CLI, a sweep, a search) needs from one combination."""

    run_id: str
    status: str  # FINISHED | FAILED | KILLED
    reused: bool
    metrics: dict[str, float]
    params: dict[str, Any]
    error: str | None = None


def run_name(cfg: Config) -> str:
    scheme = cfg.scheme
    group = scheme.group_size if scheme.group_size is not None else "preset"
    return f"{cfg.model.name}/{scheme.name}/{scheme.algorithm}/g{group}/{cfg.ignore.name}"


def as_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def eval_identity(cfg: Config) -> dict[str, Any]:
    """Everything that changes an evaluation's numbers (batch size and floor don't)."""
    ev = cfg.eval
    return {
        "tasks": list(ev.tasks),
        "num_fewshot": ev.num_fewshot,
        "limit": ev.limit,
        "data": digest(ev.data_path) if ev.data_path else None,
        "backend": ev.backend,
        "dtype": eval_dtype(ev),
        "seed": cfg.seed,
        "lm_eval": tracking.package_versions()["lm_eval"],
    }


def baseline_fingerprint(cfg: Config) -> str:
    model = {"source": cfg.model.source, "revision": cfg.model.revision, "dtype": cfg.model.dtype}
    return tracking.fingerprint({"model": model, "eval": eval_identity(cfg)})


def _quantization_identity(cfg: Config, ignore: list[str]) -> dict[str, Any]:
    versions = tracking.package_versions()
    uses_data = recipes.needs_calibration(cfg.scheme)
    return {
        "scheme": as_dict(cfg)["scheme"] | {"name": None},
        "ignore": ignore,
        "calibration": calibration.identity(cfg.calibration) if uses_data else None,
        "seed": cfg.seed,
        "llmcompressor": versions["llmcompressor"],
        "compressed-tensors": versions["compressed-tensors"],
    }


def point_fingerprint(cfg: Config, baseline_fp: str, ignore: list[str]) -> str:
    return tracking.fingerprint({"baseline": baseline_fp, **_quantization_identity(cfg, ignore)})


def checkpoint_fingerprint(cfg: Config, ignore: list[str]) -> str:
    """What the checkpoint depends on (not the evaluation): points that differ only in how they are
    evaluated (a search's two fidelities, a grid over num_fewshot) share one quantization."""
    model = {"source": cfg.model.source, "revision": cfg.model.revision, "dtype": cfg.model.dtype}
    return tracking.fingerprint({"model": model, **_quantization_identity(cfg, ignore)})


def _gib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / GIB


def _eval_metrics(result: EvalResult, params: int | None) -> dict[str, float | None]:
    """Task metrics, the primary metric, eval timings and throughput (2 x params FLOPs per token)."""
    metrics: dict[str, float | None] = {
        f"{task}.{name}": value for task, values in result.metrics.items() for name, value in values.items()
    }
    metrics |= {
        "accuracy": result.primary,
        "accuracy_stderr": result.primary_stderr,
        "time_eval_load_s": result.seconds_load,
        "time_eval_s": result.seconds_eval,
        "peak_gpu_mem_eval_gib": _gib(result.peak_memory_bytes),
        "eval_tokens": result.tokens,
    }
    if result.tokens and params and result.seconds_eval > 0:
        metrics["eval_tflops"] = 2 * params * result.tokens / result.seconds_eval / 1e12
    return metrics


def _tags(role: str, fp: str, extra: dict[str, str]) -> dict[str, str]:
    versions = {f"version.{k}": v for k, v in tracking.package_versions().items()}
    # Which card of the host, when a parallel sweep pinned this worker to one.
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu = {"cuda_visible_devices": pinned} if pinned is not None else {}
    return {
        tracking.ROLE: role,
        tracking.FINGERPRINT: fp,
        "device": devices.device_name(),
        **gpu,
        **versions,
        **extra,
    }


def recovery(
    quantized: float, q_err: float | None, baseline: float, b_err: float | None
) -> tuple[float, float | None]:
    """quantized / baseline, with its standard error by first-order propagation of both stderrs as if
    independent: what is left when per-item scores are missing (`paired_stderr` is the sharper figure).
    Both are scored on the same items, so the errors are positively correlated and this overstates the
    uncertainty."""
    if baseline == 0:
        return math.nan, None
    ratio = quantized / baseline
    if q_err is None or b_err is None or quantized == 0:
        return ratio, None
    return ratio, ratio * math.hypot(q_err / quantized, b_err / baseline)


def paired_stderr(quantized: dict[int, float], baseline: dict[int, float]) -> float | None:
    """Standard error of mean(q) / mean(b) over the same items, by the delta method on the per-item
    residuals q_i - R b_i: an item both models get right (or wrong) adds no noise, so it is far tighter
    than `recovery`'s when the quantized model agrees with the baseline on most items. None unless both
    scored the same items (at least 2) and the baseline's mean is positive."""
    if quantized.keys() != baseline.keys() or len(quantized) < 2:
        return None
    docs = sorted(quantized)
    n = len(docs)
    q_mean = sum(quantized[d] for d in docs) / n
    b_mean = sum(baseline[d] for d in docs) / n
    if b_mean <= 0:
        return None
    ratio = q_mean / b_mean
    residuals = sum((quantized[d] - ratio * baseline[d]) ** 2 for d in docs)
    return math.sqrt(residuals / (n * (n - 1))) / b_mean


def _paired(cfg: Config, result: EvalResult, baseline_run: str, base_acc: float) -> float | None:
    """The paired recovery stderr when both runs logged their per-item primary metric (whose means are
    the aggregates: a corpus-level metric such as BLEU has no per-item decomposition)."""
    task, metric = primary_task(cfg.eval), cfg.eval.primary_metric
    base_items = (tracking.load_items(baseline_run) or {}).get(task, {}).get(metric)
    items = result.items.get(task, {}).get(metric)
    if not items or not base_items:
        return None
    means = (sum(items.values()) / len(items), sum(base_items.values()) / len(base_items))
    aggregates = (result.primary, base_acc)
    if not all(math.isclose(m, a, abs_tol=1e-9) for m, a in zip(means, aggregates, strict=True)):
        return None
    return paired_stderr(items, base_items)


class Tracked:
    """An MLflow run that ends FINISHED, FAILED (error logged) or KILLED (Ctrl-C), never left RUNNING."""

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
        self.status = "FINISHED"
        self.error: str | None = None

    def __enter__(self) -> Tracked:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        import mlflow

        if exc is not None:
            self.status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.error = f"{type(exc).__name__}: {exc}"
            try:
                mlflow.set_tag(tracking.ERROR, self.error[:5000])
                mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
            finally:
                mlflow.end_run(self.status)
        else:
            mlflow.end_run(self.status)
        # Errors are logged on the run and reported by status; Ctrl-C still stops the process.
        return self.status == "FAILED"


def ensure_baseline(cfg: Config, source: str, experiment_id: str, fp: str, parent: str | None) -> Any:
    """The FINISHED baseline run for this fingerprint; evaluates the unquantized model only if none exists."""
    found = tracking.find_finished(experiment_id, fp)
    if found is not None:
        return found
    # Parallel sweep workers wanting the same baseline: the first evaluates it, the others then reuse it.
    with FileLock(Path(cfg.cache_dir).expanduser() / "locks" / f"baseline-{fp}.lock"):
        found = tracking.find_finished(experiment_id, fp)
        if found is not None:
            return found
        tracking.kill_stale(experiment_id, fp)
        return _evaluate_baseline(cfg, source, experiment_id, fp, parent)


def _evaluate_baseline(cfg: Config, source: str, experiment_id: str, fp: str, parent: str | None) -> Any:
    import mlflow

    start = time.perf_counter()
    name = f"{cfg.model.name}/baseline"
    with Tracked(experiment_id, name, _tags("baseline", fp, {}), parent) as tracked:
        params = {"model." + k: v for k, v in tracking.flatten(as_dict(cfg)["model"]).items()}
        params |= {"eval." + k: v for k, v in tracking.flatten(as_dict(cfg)["eval"]).items()}
        mlflow.log_params(params | {"scheme.name": "baseline"})
        result = evaluate(source, cfg.eval, cfg.cache_dir, cfg.seed, compressed=False)
        params_count = footprint.num_parameters(source)
        metrics = _eval_metrics(result, params_count)
        if params_count:
            kv_bytes = 2
            metrics |= footprint.footprint(source, params_count, kv_bytes)
        metrics["time_total_s"] = time.perf_counter() - start
        tracking.log_metrics(metrics)
        mlflow.log_dict(result.raw, "lm_eval_results.json")
        tracking.log_items(result.items)
    if tracked.status != "FINISHED":
        raise RuntimeError(f"baseline evaluation of {cfg.model.name} failed: {tracked.error}")
    return mlflow.get_run(tracked.run_id)


@dataclass
class _Point:
    """One combination, checked and identified: what `run` needs before any model is loaded."""

    source: str
    ignore: list[str]
    predicted_bytes: int
    experiment_id: str
    baseline_fp: str
    fp: str


def fit(meta: Any, scheme: SchemeConfig, ignore_cfg: IgnoreConfig) -> tuple[list[str], int]:
    """A scheme and ignore list laid on a model's layers (built on the meta device): the ignore patterns
    expanded for its depth, checked against its layer sizes, and the checkpoint's predicted bytes."""
    num_layers = meta.config.get_text_config().num_hidden_layers
    ignore = recipes.ignore_list(ignore_cfg, scheme, num_layers)
    layers = predict.quantized_layers(meta, scheme, ignore)
    validate.check_group_sizes(layers, scheme)
    return ignore, predict.disk_bytes(meta, layers)


def _identify(cfg: Config) -> _Point:
    """Validate (the model on the meta device: no weights) and fingerprint one combination."""
    validate.check_config(cfg)
    source = models.resolve(cfg.model, cfg.cache_dir)
    ignore, predicted = fit(validate.meta_model(source, cfg.model.trust_remote_code), cfg.scheme, cfg.ignore)
    base_fp = baseline_fingerprint(cfg)
    fp = point_fingerprint(cfg, base_fp, ignore)
    return _Point(source, ignore, predicted, tracking.setup(cfg.tracking), base_fp, fp)


def finished_run(cfg: Config) -> Any | None:
    """The FINISHED run `run(cfg)` would return without work, if the store has one (None under `force`)."""
    point = _identify(cfg)
    return None if cfg.force else tracking.find_finished(point.experiment_id, point.fp)


def run(cfg: Config, parent: str | None = None, sweep_id: str | None = None) -> Outcome:
    """Validate, then quantize and evaluate one combination (or return its finished run)."""
    point = _identify(cfg)
    if not cfg.force:
        done = tracking.find_finished(point.experiment_id, point.fp)
        if done is not None:
            return Outcome(done.info.run_id, "FINISHED", True, done.data.metrics, done.data.params)

    tracking.kill_stale(point.experiment_id, point.fp)
    baseline = ensure_baseline(cfg, point.source, point.experiment_id, point.baseline_fp, parent)
    return _run_point(cfg, point, baseline, parent, sweep_id)


def _run_point(
    cfg: Config, point: _Point, baseline: Any, parent: str | None, sweep_id: str | None
) -> Outcome:
    import mlflow

    source, ignore, fp = point.source, point.ignore, point.fp

    start = time.perf_counter()
    scheme = cfg.scheme
    name = run_name(cfg)
    extra = {
        tracking.BASELINE_FINGERPRINT: baseline.data.tags[tracking.FINGERPRINT],
        tracking.BASELINE_RUN: baseline.info.run_id,
    }
    if sweep_id:
        extra[tracking.SWEEP_ID] = sweep_id
    params = tracking.flatten(as_dict(cfg))
    params |= {
        "ignore.resolved": ", ".join(ignore) or "(none)",
        "scheme.needs_calibration": recipes.needs_calibration(scheme),
        "scheme.weight_bits": recipes.weight_bits(scheme.preset),
    }
    metrics: dict[str, Any] = {}
    tracked = Tracked(point.experiment_id, name, _tags("point", fp, extra), parent)
    with tracked:
        mlflow.log_params(params)
        checkpoint = Path(cfg.output_dir).expanduser() / cfg.model.name / checkpoint_fingerprint(cfg, ignore)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        # A checkpoint appears whole (written aside, then renamed) and is reused unless `force`; the lock
        # keeps two workers from writing the same one.
        with FileLock(f"{checkpoint}.lock"):
            reused = checkpoint.is_dir() and not cfg.force
            if not reused:
                q = quantize(
                    source,
                    recipes.build_recipe(scheme, ignore),
                    checkpoint,
                    cfg.calibration if recipes.needs_calibration(scheme) else None,
                    cfg.seed,
                    cfg.model.trust_remote_code,
                )
        mlflow.set_tag(tracking.CHECKPOINT_REUSED, str(reused).lower())
        mlflow.log_artifact(str(checkpoint / "recipe.yaml"))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        base = baseline.data.metrics
        params_count = int(base.get("num_parameters") or footprint.num_parameters(source))
        metrics |= footprint.footprint(
            checkpoint, params_count, 1 if scheme.kv_cache_fp8 else 2, base.get("disk_bytes")
        )
        metrics["disk_bytes_predicted"] = point.predicted_bytes
        if not reused:  # a reused checkpoint cost nothing here: no quantization times are logged
            metrics |= {
                "time_load_s": q.seconds_load,
                "time_calibration_data_s": q.seconds_calibration_data,
                "time_quantize_s": q.seconds_quantize,
                "time_save_s": q.seconds_save,
                "peak_gpu_mem_quantize_gib": _gib(q.peak_memory_bytes),
            }
        tracking.log_metrics(metrics)
        result = evaluate(str(checkpoint), cfg.eval, cfg.cache_dir, cfg.seed, compressed=True)
        # The baseline's score on this run's primary metric (its `accuracy` may be another metric's).
        key = f"{primary_task(cfg.eval)}.{cfg.eval.primary_metric}"
        base_acc, base_err = base[tracking.metric_name(key)], base.get(tracking.metric_name(key + "_stderr"))
        mlflow.log_dict(result.raw, "lm_eval_results.json")
        tracking.log_items(result.items)
        metrics |= _eval_metrics(result, params_count)
        ratio, independent = recovery(result.primary, result.primary_stderr, base_acc, base_err)
        if math.isnan(result.primary):
            raise FloatingPointError(f"{cfg.eval.primary_metric} is NaN for {name}")
        paired = _paired(cfg, result, baseline.info.run_id, base_acc)
        mlflow.set_tag(tracking.RECOVERY_STDERR, "independent" if paired is None else "paired")
        measured = ratio if cfg.eval.floor_on == "recovery" else result.primary
        metrics |= {
            "baseline_accuracy": base_acc,
            "baseline_accuracy_stderr": base_err,
            "recovery": ratio,
            "recovery_stderr": independent if paired is None else paired,
            "recovery_stderr_independent": independent,
            "floor": cfg.eval.floor,
            "passed": int(measured >= cfg.eval.floor),
            "time_total_s": time.perf_counter() - start,
        }
        tracking.log_metrics(metrics)
    kept = {k: v for k, v in metrics.items() if v is not None}
    return Outcome(tracked.run_id, tracked.status, False, kept, params, tracked.error)


def record_failure(cfg: Config, exc: Exception, parent: str | None, sweep_id: str | None) -> str | None:
    """Log a point that failed before its run started (bad value, baseline failure) as a FAILED run."""
    import mlflow

    try:
        experiment_id = tracking.setup(cfg.tracking)
    except Exception:  # the store itself is unusable: the sweeper still reports the error
        return None
    extra = {tracking.SWEEP_ID: sweep_id} if sweep_id else {}
    tracked = Tracked(experiment_id, run_name(cfg), _tags("point", "", extra), parent)
    with tracked:
        mlflow.log_params(tracking.flatten(as_dict(cfg)))
        raise exc
    return tracked.run_id
