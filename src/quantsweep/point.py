"""One combination, resolved once: the model's source, the scheme fitted to its layers, the ignore list, the
calibration decision, where the evaluated items come from, the predicted checkpoint size and the
fingerprints that find finished work again.

Everything here is derived before any weights load (the model is built on the meta device), so a bad
value fails before work starts, and the rest of the pipeline reads these facts instead of re-deriving them.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from quantsweep import calibration, kv_cache, models, quantize, recipes, sparsity, tracking, validate
from quantsweep.config import Config, EvalConfig, IgnoreConfig, SchemeConfig
from quantsweep.errors import ConfigError
from quantsweep.evaluation import taskset
from quantsweep.evaluation.harness import FILE_TASKS, eval_dtype
from quantsweep.evaluation.hellaswag_file import digest
from quantsweep.sizing import predicted

# The smallest group size fitting may choose; a model that needs smaller groups must name its size.
MIN_FITTED_GROUP = 16
# The group size recorded for a preset whose weights have no groups (channel-wise, per-tensor, blocks).
NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Fitting:
    """A scheme laid on a model's layers."""

    # As applied: the group size used (the preset's, fitted to the model's widths, or the config's), None
    # where the preset's weights have no groups.
    scheme: SchemeConfig
    ignore: list[str]
    predicted_bytes: int
    # How the group size used differs from what the config asked, said once per run; None when it doesn't.
    note: str | None = None


@dataclass(frozen=True)
class Point:
    """What `pipeline.run` needs before any model is loaded."""

    name: str
    source: str
    # The scheme as applied: recipes are built from it, not from the config's.
    scheme: SchemeConfig
    ignore: list[str]
    uses_calibration: bool
    predicted_bytes: int
    # Where the evaluated items come from (the runs' `quantsweep.data_source` tag).
    data_source: str
    experiment_id: str
    baseline_fp: str
    fp: str
    checkpoint_fp: str
    # The Linear layers a sparsity prunes (none without one): what `sparsity.measure` reads back.
    sparse_layers: tuple[str, ...] = ()

    @property
    def group_size_used(self) -> int | str:
        """The `scheme.group_size_used` param: the group size applied, or n/a."""
        return NOT_APPLICABLE if self.scheme.group_size is None else self.scheme.group_size


def run_name(cfg: Config) -> str:
    scheme = cfg.scheme
    group = scheme.group_size if scheme.group_size is not None else "preset"
    name = f"{cfg.model.name}/{scheme.name}/{scheme.algorithm}/g{group}/{cfg.ignore.name}"
    return name + kv_cache.suffix(str(scheme.kv_cache)) + sparsity.suffix(cfg.sparsity)


def as_dict(cfg: Config) -> dict[str, Any]:
    """The config as a run records it (params, config.yaml): resolved, less the sweep the run belongs to
    (`sweep_run`, set by the sweeper), which is no setting of what the run computes, and less the retired
    `scheme.kv_cache_fp8` key (kept in the schema so that setting it is refused with the new spelling)."""
    tree: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    tree.pop("sweep_run", None)
    tree["scheme"].pop("kv_cache_fp8", None)
    return tree


def _model_identity(cfg: Config) -> dict[str, Any]:
    return {"source": cfg.model.source, "revision": cfg.model.revision, "dtype": cfg.model.dtype}


def _reads_data_path(ev: EvalConfig) -> bool:
    return any(task in FILE_TASKS and task not in ev.data_paths for task in ev.tasks)


def data_source(ev: EvalConfig) -> str:
    """Where each task's items come from: `file:<path> sha256:<digest>` for tasks that read a local file,
    `include:<folder> sha256:<digest>` for tasks of eval.include_path, `hub:<task>` for lm-eval's own."""
    users = taskset.user_tasks(ev) if ev.include_path else {}
    sources = []
    for task in ev.tasks:
        if task in FILE_TASKS:
            sources.append(_file_source(str(taskset.data_path(ev, task))))
        elif task in users:
            sources.append(f"include:{users[task]} sha256:{taskset.folder_digest(users[task])}")
        else:
            sources.append(f"hub:{task}")
    return ", ".join(dict.fromkeys(sources))


def _file_source(path: str) -> str:
    return f"file:{Path(path).expanduser().resolve()} sha256:{digest(path)}"


def eval_identity(cfg: Config) -> dict[str, Any]:
    """Everything that changes an evaluation's numbers (batch size and floor don't). Settings added with
    suites appear only when used, so evaluations made before them keep their fingerprints."""
    ev = cfg.eval
    identity: dict[str, Any] = {
        "tasks": list(ev.tasks),
        "num_fewshot": ev.num_fewshot,
        "limit": ev.limit,
        "data": digest(str(ev.data_path)) if _reads_data_path(ev) else None,
        "backend": ev.backend,
        "dtype": eval_dtype(ev),
        "seed": cfg.seed,
        "lm_eval": tracking.package_versions()["lm_eval"],
    }
    data_paths = {t: digest(Path(p).expanduser()) for t, p in ev.data_paths.items() if t in ev.tasks}
    optional = {
        "data_paths": data_paths,
        "task_overrides": taskset.plain(ev.task_overrides),
        "include": [taskset.folder_digest(f) for f in taskset.include_folders(ev)],
    }
    return identity | {k: v for k, v in optional.items() if v}


def _judged(cfg: Config) -> dict[str, Any]:
    """Per-task metric choices change a point's recovery, not the evaluations: in the point's fingerprint
    only, and only when given."""
    return {"metrics": dict(cfg.eval.metrics)} if cfg.eval.metrics else {}


def baseline_fingerprint(cfg: Config) -> str:
    return tracking.fingerprint({"model": _model_identity(cfg), "eval": eval_identity(cfg)})


def _quantization_identity(cfg: Config, fitted: Fitting, uses_calibration: bool) -> dict[str, Any]:
    versions = tracking.package_versions()
    return {
        # The group size used, not the config's: a fitted 64 and an explicit 64 are the same checkpoint.
        "scheme": kv_cache.identity(fitted.scheme) | {"name": None},
        "ignore": fitted.ignore,
        **sparsity.identity(cfg.sparsity),
        "calibration": calibration.identity(cfg.calibration) if uses_calibration else None,
        "seed": cfg.seed,
        "llmcompressor": versions["llmcompressor"],
        "compressed-tensors": versions["compressed-tensors"],
    }


def _fit_group_size(meta: Any, scheme: SchemeConfig, ignore: list[str]) -> tuple[SchemeConfig, str | None]:
    """The group size a run uses. A scheme.group_size the config gives is used as given on a preset that
    groups its weights (groups, or square blocks; `check_group_sizes` refuses one that does not divide a
    layer) and is not applicable to other presets; left to the preset, it is the preset's, or else the
    largest power of two below it that divides every layer it sizes (W4A16's 128 on SmolLM2's 576: 64)."""
    preset_size = recipes.preset_group_size(scheme.preset)
    if preset_size is None:
        if scheme.group_size is None:
            return scheme, None
        note = (
            f"scheme.group_size={scheme.group_size} does not apply to preset {scheme.preset} (a scale per "
            f"channel or tensor, no groups): recorded as scheme.group_size_used={NOT_APPLICABLE}"
        )
        return dataclasses.replace(scheme, group_size=None), note
    if scheme.group_size is not None:
        return scheme, None
    preset = dataclasses.replace(scheme, group_size=preset_size)
    sized = recipes.group_size_targets(preset)
    widths = {
        (name, width)
        for name, (module, group) in predicted.quantized_layers(meta, preset, ignore).items()
        if group.targets[0] in sized
        for width, _ in validate.divided_widths(module, group.weights)
    }
    halvings = [preset_size >> i for i in range(preset_size.bit_length())]
    candidates = [s for s in halvings if s >= MIN_FITTED_GROUP]
    size = next((s for s in candidates if all(w % s == 0 for _, w in widths)), preset_size)
    if size == preset_size:  # fits, or nothing does: check_group_sizes then names the fix
        return preset, None
    misfits = sorted((name, width) for name, width in widths if width % preset_size)
    unit, count = recipes.grouping_unit(scheme.preset), len({name for name, _ in misfits})
    note = (
        f"{scheme.preset}'s {unit} of {preset_size} do not divide the widths of {count} layers "
        f"(e.g. {misfits[0][0]}: {misfits[0][1]}); using {unit} of {size}, recorded as "
        f"scheme.group_size_used={size} (set scheme.group_size to choose another)"
    )
    return dataclasses.replace(scheme, group_size=size), note


def fitting(meta: Any, scheme: SchemeConfig, ignore_cfg: IgnoreConfig) -> Fitting:
    """A scheme and ignore list laid on a model's layers (built on the meta device): the ignore patterns
    expanded for its depth, the group size fitted and checked against its layer sizes, and the
    checkpoint's predicted bytes."""
    base = cast(SchemeConfig, OmegaConf.to_object(scheme)) if OmegaConf.is_config(scheme) else scheme
    num_layers = meta.config.get_text_config().num_hidden_layers
    ignore = recipes.ignore_list(ignore_cfg, base, num_layers)
    applied, note = _fit_group_size(meta, base, ignore)
    layers = predicted.quantized_layers(meta, applied, ignore)
    # A checkpoint with a quantization config and no quantized weight does not load (scheme=dense has none).
    if not layers and not recipes.is_dense(applied):
        raise ConfigError(
            f"ignore={ignore_cfg.name} leaves no layer of this {num_layers}-layer model to quantize with "
            f"{scheme.name}; choose another ignore list"
        )
    validate.check_group_sizes(layers, applied)
    kv_strategy = kv_cache.KINDS[kv_cache.kind(applied)]
    return Fitting(applied, ignore, predicted.disk_bytes(meta, layers, kv_strategy), note)


def fit(meta: Any, scheme: SchemeConfig, ignore_cfg: IgnoreConfig) -> tuple[list[str], int]:
    """(ignore list, predicted bytes) of `fitting`: what a search orders its candidates by."""
    found = fitting(meta, scheme, ignore_cfg)
    return found.ignore, found.predicted_bytes


def resolve(cfg: Config) -> Point:
    """Validate (the model on the meta device: no weights) and identify one combination."""
    validate.check_complete(cfg)
    tracking.check_store(cfg.tracking.uri)
    validate.check_scheme(cfg.scheme)
    validate.check_sparsity(cfg.sparsity, cfg.scheme)
    validate.check_eval(cfg.eval)
    # SparseGPT calibrates on data, whatever the scheme.
    uses_calibration = recipes.needs_calibration(cfg.scheme) or sparsity.enabled(cfg.sparsity)
    if uses_calibration:
        calibration.check(cfg.calibration)
    source = models.resolve(cfg.model, cfg.cache_dir)
    meta = validate.meta_model(source, cfg.model.trust_remote_code)
    quantize.check_memory_cap(cfg, meta.config.to_dict(), uses_calibration)
    fitted = fitting(meta, cfg.scheme, cfg.ignore)
    sparse_layers = sparsity.layers(meta, cfg.sparsity, fitted.ignore)
    if fitted.note:
        print(f"quantsweep: {fitted.note}", file=sys.stderr, flush=True)
    quantization = _quantization_identity(cfg, fitted, uses_calibration)
    base_fp = baseline_fingerprint(cfg)
    return Point(
        name=run_name(cfg),
        source=source,
        scheme=fitted.scheme,
        ignore=fitted.ignore,
        uses_calibration=uses_calibration,
        predicted_bytes=fitted.predicted_bytes,
        data_source=data_source(cfg.eval),
        experiment_id=tracking.setup(cfg.tracking),
        baseline_fp=base_fp,
        fp=tracking.fingerprint({"baseline": base_fp, **quantization, **_judged(cfg)}),
        # What the checkpoint depends on (not the evaluation): points that differ only in how they are
        # evaluated (a search's two fidelities, a grid over num_fewshot) share one quantization.
        checkpoint_fp=tracking.fingerprint({"model": _model_identity(cfg), **quantization}),
        sparse_layers=sparse_layers,
    )
