"""One combination end to end: resolve → baseline (reused by fingerprint) → quantize → evaluate → record.

Each evaluation is its own MLflow run: the baseline (role=baseline) is shared by every point with the same
model and eval settings; a point's run carries its own metrics plus the comparison with that baseline.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import OmegaConf

from quantsweep import claims, devices, kv_cache, logs, recipes, sparsity, suite, tracking
from quantsweep.config import Config
from quantsweep.evaluation import deploy
from quantsweep.evaluation.harness import EvalResult, evaluate
from quantsweep.outcome import Outcome
from quantsweep.point import Point, as_dict, resolve, run_name
from quantsweep.quantize import quantize
from quantsweep.sizing import measured
from quantsweep.sweeps import summary
from quantsweep.tables import GIB


def _gib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / GIB


def _eval_metrics(result: EvalResult, params: int | None) -> dict[str, float | None]:
    """Task metrics, the primary metric, eval timings and throughput (2 x params FLOPs per token)."""
    metrics: dict[str, float | None] = {
        f"{task}.{name}": value for task, values in result.metrics.items() for name, value in values.items()
    }
    metrics |= suite.score_metrics(result.suite)
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


def _baseline_summary(run: Any) -> dict[str, Any]:
    name = f"{run.data.params.get('model.name', '?')} baseline"
    evaluated = summary.eval_line(run.data.params, run.data.tags)
    return {"run_id": run.info.run_id, "name": name, "metrics": run.data.metrics, "eval": evaluated}


def ensure_baseline(cfg: Config, point: Point, parent: str | None) -> Any:
    """The FINISHED baseline run for this fingerprint; evaluates the unquantized model only if none exists.

    Workers wanting the same baseline (parallel points, concurrent sweeps, other hosts) claim it in the store:
    one evaluates it, the others wait for it and reuse it."""
    name = f"{cfg.model.name}/baseline"
    tags = _tags(
        "baseline", point.baseline_fp, {tracking.DATA_SOURCE: point.data_source} | claims.owner_tags()
    )

    def start() -> tracking.Tracked:
        return tracking.Tracked(point.experiment_id, name, tags, parent)

    claimed = claims.acquire(point.experiment_id, point.baseline_fp, f"baseline {cfg.model.name}", start)
    if not isinstance(claimed, tracking.Tracked):
        return claimed
    return _evaluate_baseline(cfg, point, claimed)


def _evaluate_baseline(cfg: Config, point: Point, tracked: tracking.Tracked) -> Any:
    import mlflow

    start = time.perf_counter()
    with tracked, claims.heartbeat(tracked.run_id):
        params = {"model." + k: v for k, v in tracking.flatten(as_dict(cfg)["model"]).items()}
        params |= {"eval." + k: v for k, v in tracking.flatten(as_dict(cfg)["eval"]).items()}
        mlflow.log_params(params | {"scheme.name": "baseline"})
        with logs.phase(f"baseline {cfg.model.name}: evaluating {', '.join(cfg.eval.tasks)}"):
            gpus = cfg.resources.gpus_per_point
            result = evaluate(point.source, cfg.eval, cfg.cache_dir, cfg.seed, compressed=False, gpus=gpus)
        params_count = measured.num_parameters(point.source)
        metrics = _eval_metrics(result, params_count)
        if params_count:
            metrics |= measured.footprint(point.source, params_count, kv_bytes=2)
        metrics["time_total_s"] = time.perf_counter() - start
        tracking.log_metrics(metrics)
        mlflow.set_tags(suite.task_metrics_tag(result.suite))
        mlflow.log_dict(result.raw, "lm_eval_results.json")
        tracking.log_items(result.items)
    if tracked.status != "FINISHED":
        raise RuntimeError(f"baseline evaluation of {cfg.model.name} failed: {tracked.error}")
    return mlflow.get_run(tracked.run_id)


def finished_run(cfg: Config) -> Any | None:
    """The FINISHED run `run(cfg)` would return without work, if the store has one (None under `force`)."""
    point = resolve(cfg)
    return None if cfg.force else tracking.find_finished(point.experiment_id, point.fp)


def run(cfg: Config, parent: str | None = None, sweep_id: str | None = None) -> Outcome:
    """Resolve, then quantize and evaluate one combination (or return its finished run)."""

    point = resolve(cfg)
    if not cfg.force:
        done = tracking.find_finished(point.experiment_id, point.fp)
        if done is not None:
            return _reused(point, done)
    baseline = ensure_baseline(cfg, point, parent)
    return _run_point(cfg, point, baseline, parent, sweep_id)


def _reused(point: Point, done: Any) -> Outcome:
    import mlflow

    baseline = mlflow.get_run(done.data.tags[tracking.BASELINE_RUN])
    return Outcome(
        point.name,
        "FINISHED",
        reused=True,
        run_id=done.info.run_id,
        metrics=done.data.metrics,
        baseline=_baseline_summary(baseline),
        params=done.data.params,
    )


def _quantize_once(cfg: Config, point: Point, checkpoint: Path) -> dict[str, float | None]:
    """Write the checkpoint unless it exists (reused unless `force`); its quantization timings, if made.

    A checkpoint appears whole (written aside, then renamed); the lock keeps two workers from writing the
    same one."""
    import mlflow

    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{checkpoint}.lock"):
        reused = checkpoint.is_dir() and not cfg.force
        if not reused:
            with logs.phase(f"{point.name}: quantizing ({cfg.scheme.algorithm})"):
                q = quantize(
                    point.source,
                    recipes.build_recipe(point.scheme, point.ignore, cfg.sparsity),
                    checkpoint,
                    cfg.calibration if point.uses_calibration else None,
                    cfg.seed,
                    cfg.model.trust_remote_code,
                    gpus=cfg.resources.gpus_per_point,
                    max_gpu_memory_gib=cfg.quantize.max_gpu_memory_gib,
                )
    mlflow.set_tag(tracking.CHECKPOINT_REUSED, str(reused).lower())
    if reused:  # a reused checkpoint cost nothing here: no quantization times are logged
        logs.say(f"quantsweep: {point.name}: reusing the checkpoint {checkpoint} (force=true remakes it)")
        return {}
    return {
        "time_load_s": q.seconds_load,
        "time_calibration_data_s": q.seconds_calibration_data,
        "time_quantize_s": q.seconds_quantize,
        "time_save_s": q.seconds_save,
        "peak_gpu_mem_quantize_gib": _gib(q.peak_memory_bytes),
        "peak_gpu_mem_quantize_max_card_gib": _gib(q.peak_memory_max_card_bytes),
    }


def _compare(cfg: Config, result: EvalResult, baseline: Any) -> dict[str, Any]:
    """Recovery against the baseline per task of the suite (`suite.compare`), paired over the items both
    scored when it can be; the primary task's is `recovery`. Its tags go on this run."""
    import mlflow

    base_items = tracking.load_items(baseline.info.run_id)
    metrics, tags = suite.compare(cfg.eval, result, baseline.data.metrics, base_items)
    mlflow.set_tags(tags)
    return metrics


def _run_point(cfg: Config, point: Point, baseline: Any, parent: str | None, sweep_id: str | None) -> Outcome:
    import mlflow

    start = time.perf_counter()
    extra = {
        tracking.BASELINE_FINGERPRINT: baseline.data.tags[tracking.FINGERPRINT],
        tracking.BASELINE_RUN: baseline.info.run_id,
        tracking.DATA_SOURCE: point.data_source,
    }
    if sweep_id:
        extra[tracking.SWEEP_ID] = sweep_id
    params = tracking.flatten(as_dict(cfg))
    params |= {
        "ignore.resolved": ", ".join(point.ignore) or "(none)",
        "scheme.needs_calibration": point.uses_calibration,
        "scheme.weight_bits": recipes.weight_bits(cfg.scheme.preset),
        "scheme.group_size_used": point.group_size_used,
    }
    metrics: dict[str, Any] = {}
    tags = _tags("point", point.fp, extra | claims.owner_tags())

    def start_run() -> tracking.Tracked:
        return tracking.Tracked(point.experiment_id, point.name, tags, parent)

    claimed = claims.acquire(point.experiment_id, point.fp, point.name, start_run, reuse=not cfg.force)
    if not isinstance(claimed, tracking.Tracked):  # another worker finished it meanwhile
        return _reused(point, claimed)
    tracked = claimed
    with tracked, claims.heartbeat(tracked.run_id):
        mlflow.log_params(params)
        checkpoint = Path(cfg.output_dir).expanduser() / cfg.model.name / point.checkpoint_fp
        metrics |= _quantize_once(cfg, point, checkpoint)
        mlflow.log_artifact(str(checkpoint / "recipe.yaml"))
        mlflow.log_text(tracking.redact(OmegaConf.to_yaml(as_dict(cfg))), "config.yaml")
        base = baseline.data.metrics
        params_count = int(base.get("num_parameters") or measured.num_parameters(point.source))
        kv_bytes = kv_cache.element_bytes(kv_cache.kind(point.scheme))
        metrics |= measured.footprint(checkpoint, params_count, kv_bytes, base.get("disk_bytes"))
        metrics["disk_bytes_predicted"] = point.predicted_bytes
        metrics |= sparsity.record(checkpoint, point.sparse_layers, metrics["disk_bytes"], cfg.sparsity)
        tracking.log_metrics(metrics)
        with logs.phase(f"{point.name}: evaluating"):
            gpus = cfg.resources.gpus_per_point
            compressed = not recipes.is_dense(point.scheme)  # scheme=dense saves no quantization config
            result = evaluate(str(checkpoint), cfg.eval, cfg.cache_dir, cfg.seed, compressed, gpus=gpus)
        mlflow.log_dict(result.raw, "lm_eval_results.json")
        tracking.log_items(result.items)
        kv_cache.record(point.name, result.kv_cache_applied)
        metrics |= _eval_metrics(result, params_count)
        if math.isnan(result.primary):
            raise FloatingPointError(f"{cfg.eval.primary_metric} is NaN for {point.name}")
        metrics |= _compare(cfg, result, baseline)
        metrics |= deploy.for_point(cfg, point.name, checkpoint)
        metrics["time_total_s"] = time.perf_counter() - start
        tracking.log_metrics(metrics)
    kept = {k: v for k, v in metrics.items() if v is not None}
    return Outcome(
        point.name,
        tracked.status,
        run_id=tracked.run_id,
        error=tracked.error,
        metrics=kept,
        baseline=_baseline_summary(baseline) if tracked.status == "FINISHED" else None,
        params=params,
    )


def record_failure(cfg: Config, exc: Exception, parent: str | None, sweep_id: str | None) -> Outcome:
    """A point that failed before its run started (bad value, baseline failure), logged as a FAILED run."""
    import mlflow

    error = f"{type(exc).__name__}: {exc}"
    try:
        experiment_id = tracking.setup(cfg.tracking)
    except Exception:  # the store itself is unusable: the sweeper still reports the error
        return Outcome(run_name(cfg), "FAILED", error=error)
    extra = {tracking.SWEEP_ID: sweep_id} if sweep_id else {}
    tracked = tracking.Tracked(experiment_id, run_name(cfg), _tags("point", "", extra), parent)
    with tracked:
        mlflow.log_params(tracking.flatten(as_dict(cfg)))
        raise exc
    return Outcome(run_name(cfg), "FAILED", run_id=tracked.run_id, error=error)
