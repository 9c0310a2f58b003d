"""Everything the search checks and derives before any work: its settings, the space (each value composed
once), the model and eval settings, the study's identity, and for `smallest_first` every configuration's
predicted size.

The model, recipe and validation modules (torch, compressed-tensors) are imported where they are used, so
the search's modules stay light to import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from quantsweep.config import SearchConfig
from quantsweep.errors import ConfigError
from quantsweep.floor import check_floor
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.objectives import OBJECTIVES, Objective, Sizes, context
from quantsweep.sweeps.search.samplers import SAMPLERS
from quantsweep.sweeps.search.space import Key, Space, describe, key, parse_space

# Overrides → the job's config, as the launcher will compose it.
Compose = Callable[[list[str]], DictConfig]
# A configuration's params → its job's config (composed once: `_composer`).
Configuration = Callable[[dict[str, str]], DictConfig]


def check_settings(cfg: SearchConfig) -> None:
    """Every search setting, before any storage is opened or model loaded."""
    check_floor(cfg.floor, cfg.floor_on, "search")
    for name in ("confidence", "prune_confidence"):
        value = getattr(cfg, name)
        if not 0.5 <= value < 1.0:
            raise ConfigError(
                f"search.{name}={value} must be in [0.5, 1): e.g. 0.9 for a one-sided 90% bound, "
                "0.5 for the point estimate"
            )
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"search.objective={cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if cfg.gpu_mem_gb <= 0:
        raise ConfigError(f"search.gpu_mem_gb={cfg.gpu_mem_gb} must be positive, e.g. 80 for an H100")
    if cfg.context is not None and cfg.context < 1:
        raise ConfigError(f"search.context={cfg.context} must be a number of tokens >= 1, or null")
    if cfg.concurrency < 1:
        raise ConfigError(f"search.concurrency={cfg.concurrency} must be a number of sequences >= 1")
    if cfg.low_fidelity_limit is not None and cfg.low_fidelity_limit < 1:
        raise ConfigError(
            f"search.low_fidelity_limit={cfg.low_fidelity_limit} must be a number of items >= 1, or null"
        )
    if cfg.n_trials < 1:
        raise ConfigError(f"search.n_trials={cfg.n_trials} must be at least 1")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"search.sampler={cfg.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not cfg.storage or not cfg.study_name:
        raise ConfigError("search.storage and search.study_name must not be empty")


@functools.cache
def has_groups(preset: str) -> bool:
    """Whether `scheme.group_size` applies to this preset (INT8/FP8 channel-wise presets refuse it; dense
    quantizes nothing)."""
    from quantsweep import recipes

    if recipes.is_dense_preset(preset):
        return False
    weights = recipes.quant_scheme(preset, ["Linear"]).weights
    return weights is not None and weights.group_size is not None


@dataclass
class Plan:
    """The settings, the space, presets per scheme, the two evaluation sizes and the study's identity."""

    search: SearchConfig
    space: Space
    base_preset: str
    presets: dict[str, str]
    z: float
    # The upper bound's z at low fidelity (search.prune_confidence).
    z_prune: float
    # None: every trial gets the full evaluation only.
    low_limit: int | None
    identity: dict[str, Any]
    # Samplers `by_predicted_size`: the buildable configurations in ascending predicted objective, and those
    # predictions.
    order: list[dict[str, str]] = field(default_factory=list)
    predicted: dict[Key, float] = field(default_factory=dict)
    # Configurations whose settings cannot go together (validate.check_sparsity), with the reason: not
    # among `configurations`; a trial that draws one ends without a job.
    refused: dict[Key, str] = field(default_factory=dict)

    @property
    def objective(self) -> Objective:
        return OBJECTIVES[self.search.objective]

    def grouped(self, params: dict[str, str]) -> bool:
        return has_groups(self.presets.get(params.get("scheme", ""), self.base_preset))

    @functools.cached_property
    def configurations(self) -> list[dict[str, str]]:
        """The space's configurations less the refused ones (`make_plan` refuses before any reads this)."""
        return [c for c in self.space.configurations(self.grouped) if key(c) not in self.refused]


def make_plan(settings: SearchConfig, overrides: list[Override], compose: Compose) -> Plan:
    """Check the space (each value composed once), the presets and the model and eval settings; Hydra's
    composition errors pass through for the caller to word."""
    from quantsweep import algorithms, models, point, recipes, validate

    space = parse_space(overrides)
    base = compose(space.fixed)
    presets = {}
    for name, values in space.dims.items():
        for value in values:
            composed = compose([*space.fixed, f"{name}={value}"])
            algorithms.get(composed.scheme.algorithm)  # a misspelt value is an error, not a refusal
            if name == "scheme":
                presets[value] = composed.scheme.preset
    for preset in {base.scheme.preset, *presets.values()}:
        if not recipes.is_dense_preset(preset):  # scheme=dense: _refuse says where it may be used
            recipes.check_preset(preset, "scheme.preset")
    validate.check_eval(base.eval)
    check_floor(settings.floor, settings.floor_on, "search", list(base.eval.tasks))
    models.check_source(base.model)
    full = base.eval.limit
    low = settings.low_fidelity_limit
    if low is not None and full is not None and full >= 1 and low >= full:
        low = None
    uses = OBJECTIVES[settings.objective].uses
    identity = {
        "floor": settings.floor,
        "floor_on": settings.floor_on,
        "confidence": settings.confidence,
        "objective": settings.objective,
        "gpu_mem_gb": settings.gpu_mem_gb if "gpu_mem_gb" in uses else None,
        "low_fidelity_limit": low,
        "prune_confidence": settings.prune_confidence if low is not None else None,
        "evaluation": point.baseline_fingerprint(base),  # type: ignore[arg-type]
    }
    # The deployment's context and concurrency only where the objective reads them: other studies keep theirs.
    identity |= {name: getattr(settings, name) for name in uses if name != "gpu_mem_gb"}
    plan = Plan(
        settings,
        space,
        base.scheme.preset,
        presets,
        decisions.z_value(settings.confidence),
        decisions.z_value(settings.prune_confidence),
        low,
        identity,
    )
    configuration = _composer(space, compose)
    _refuse(plan, base, configuration)
    if SAMPLERS[settings.sampler].by_predicted_size:
        _predict(plan, base, configuration)
    elif "context" in plan.objective.uses:
        _check_context(settings, base)
    return plan


def _composer(space: Space, compose: Compose) -> Configuration:
    """A configuration's job config, composed once however many of the plan's checks read it."""
    composed: dict[Key, DictConfig] = {}

    def configuration(params: dict[str, str]) -> DictConfig:
        if key(params) not in composed:
            composed[key(params)] = compose([*space.fixed, *(f"{k}={v}" for k, v in params.items())])
        return composed[key(params)]

    return configuration


def _refuse(plan: Plan, base: DictConfig, configuration: Configuration) -> None:
    """Refuse, once and before any work, the configurations whose settings cannot go together: a pruning
    that GPTQ would undo, scheme=dense without a sparsity (`validate.check_sparsity`, the job's own check).
    Only a space where a sparsity or scheme=dense can occur has any; none left to run is a ConfigError."""
    from quantsweep import recipes, sparsity, validate

    dense = any(map(recipes.is_dense_preset, (plan.base_preset, *plan.presets.values())))
    sparse = any(name.split(".")[0] == "sparsity" for name in plan.space.dims) or sparsity.enabled(
        base.sparsity
    )
    if not sparse and not dense:
        return
    every = plan.space.configurations(plan.grouped)
    for params in every:
        cfg = configuration(params)
        try:
            validate.check_sparsity(OmegaConf.to_object(cfg.sparsity), OmegaConf.to_object(cfg.scheme))  # type: ignore[arg-type]
        except ConfigError as exc:
            plan.refused[key(params)] = str(exc)
    if not plan.refused:
        return
    first = next(iter(plan.refused.values()))
    if len(plan.refused) == len(every):
        raise ConfigError(f"no configuration of the space can be run: {first}")
    named = ", ".join(describe(dict(k)) for k in plan.refused)
    print(
        f"quantsweep: {len(plan.refused)} configurations refused before any work: {named} ({first})",
        flush=True,
    )


def _model_config(base: DictConfig) -> Any:
    """The model's config, from its checkpoint (no weights)."""
    from quantsweep import models, validate

    source = models.resolve(base.model, base.cache_dir)
    return validate.meta_model(source, base.model.trust_remote_code)


def _check_context(s: SearchConfig, base: DictConfig) -> None:
    """A deployment objective needs a context: search.context or the model's (ConfigError before work)."""
    if s.context is None:
        try:
            context(s, getattr(_model_config(base).config, "max_position_embeddings", None))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _predict(plan: Plan, base: DictConfig, configuration: Configuration) -> None:
    """Predict every configuration's objective from the model's config (meta device, no weights) and
    order them smallest first; those the model cannot be built with (a group size that does not divide
    its layers) are left out, and said so."""
    from quantsweep import kv_cache, point

    s = plan.search
    meta = _model_config(base)
    config = meta.config.to_dict()
    max_context = meta.config.get_text_config().max_position_embeddings
    sizes: dict[Key, tuple[float, int]] = {}
    left_out = []
    for params in plan.configurations:
        cfg = configuration(params)
        scheme = OmegaConf.to_object(cfg.scheme)
        try:
            _, size = point.fit(meta, scheme, cfg.ignore)  # type: ignore[arg-type]
            kv = kv_cache.bytes_per_token(config, kv_cache.kind(scheme))  # type: ignore[arg-type]
            value = plan.objective.value(Sizes.predicted(size, kv, max_context), s)
        except ConfigError as exc:
            left_out.append(f"{describe(params)} ({exc})")
            continue
        except ValueError as exc:  # the objective's: no context to size the KV cache for
            raise ConfigError(str(exc)) from None
        sizes[key(params)] = (value, size)
    plan.order = sorted((c for c in plan.configurations if key(c) in sizes), key=lambda c: sizes[key(c)])
    plan.predicted = {k: v[0] for k, v in sizes.items()}
    if plan.order:
        low, high = (plan.objective.text(plan.predicted[key(c)]) for c in (plan.order[0], plan.order[-1]))
        print(
            f"quantsweep: smallest first: {len(plan.order)} configurations ordered by predicted "
            f"{s.objective}, {low} to {high}",
            flush=True,
        )
    if left_out:
        print(f"quantsweep: {len(left_out)} configurations left out: {left_out[0]}", flush=True)
    if not plan.order:
        raise ConfigError(f"no configuration of the space can be built for this model: {left_out[0]}")
