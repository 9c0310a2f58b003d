"""What the `quantsweep_optuna` sweeper decides, kept apart from Hydra and the launcher so it can be tested on
numbers: the search space, the objective, feasibility at a confidence bound, pruning, and the report (the
best configuration, the Pareto front, the override line that reproduces a trial).

A trial is feasible when the lower confidence bound of what the floor is on clears it,
value − z·stderr ≥ floor, so a configuration that only clears the floor by luck of the items drawn is not
called feasible; at low fidelity the upper bound decides whether it can still clear it at all.
"""

from __future__ import annotations

import functools
import itertools
import math
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from quantsweep import recipes, sizing
from quantsweep.config import SearchConfig
from quantsweep.errors import ConfigError
from quantsweep.validate import check_floor

OBJECTIVES = ("disk_bytes", "weights_vram", "gpus")
SAMPLERS = ("smallest_first", "tpe", "grid")
# Sampled only for schemes whose preset has weight groups (see `has_groups`).
GROUP_SIZE = "scheme.group_size"
# The trial user attribute that holds its `TrialRecord`.
RECORD = "quantsweep"
GIB = 2**30

# Verdicts: COMPLETE trials are feasible or infeasible, PRUNED ones were stopped after the cheap evaluation.
FEASIBLE, INFEASIBLE, PRUNED_FLOOR, PRUNED_SIZE, FAILED = (
    "feasible",
    "infeasible",
    "pruned: below floor",
    "pruned: not smaller",
    "failed",
)


def check(cfg: SearchConfig) -> None:
    """Every search setting, before any storage is opened or model loaded."""
    check_floor(cfg.floor, cfg.floor_on, "search")
    for key in ("confidence", "prune_confidence"):
        value = getattr(cfg, key)
        if not 0.5 <= value < 1.0:
            raise ConfigError(
                f"search.{key}={value} must be in [0.5, 1): e.g. 0.9 for a one-sided 90% bound, "
                "0.5 for the point estimate"
            )
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"search.objective={cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if cfg.gpu_mem_gb <= 0:
        raise ConfigError(f"search.gpu_mem_gb={cfg.gpu_mem_gb} must be positive, e.g. 80 for an H100")
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


def z_value(confidence: float) -> float:
    """One-sided normal quantile: 0.9 → 1.2816, 0.5 → 0 (the point estimate)."""
    return NormalDist().inv_cdf(confidence)


@dataclass(frozen=True)
class Bound:
    """What the floor is on, its stderr (0 when lm-eval gives none) and the bounds at ±z·stderr."""

    value: float
    stderr: float
    lower: float
    upper: float


def bound(metrics: dict[str, float], floor_on: str, z: float, z_upper: float | None = None) -> Bound | None:
    """None when the value is undefined (recovery against a baseline that scored 0 on these items).

    `z_upper` sets the upper bound's own width: pruning decides on a few items at `search.prune_confidence`.
    """
    value = metrics.get(floor_on)
    if value is None or not math.isfinite(value):
        return None
    stderr = metrics.get(f"{floor_on}_stderr") or 0.0
    return Bound(value, stderr, value - z * stderr, value + (z if z_upper is None else z_upper) * stderr)


def constraint(lower: float, floor: float) -> float:
    """Optuna's constraint value: ≤ 0 (feasible) exactly when the lower bound clears the floor."""
    return floor - lower


def objective_value(metrics: dict[str, float], objective: str, gpu_mem_gb: float) -> float:
    """The size to minimise: bytes on disk, estimated weights vRAM in bytes, or GPUs for that vRAM."""
    if objective == "disk_bytes":
        return float(metrics["disk_bytes"])
    return _vram_objective(metrics["weights_vram_est_gib"] * GIB, objective, gpu_mem_gb)


def predicted_objective(disk_bytes: float, objective: str, gpu_mem_gb: float) -> float:
    """`objective_value` for a predicted checkpoint size (the vRAM estimate is stored bytes × overhead)."""
    if objective == "disk_bytes":
        return float(disk_bytes)
    return _vram_objective(disk_bytes * sizing.OVERHEAD, objective, gpu_mem_gb)


def _vram_objective(vram: float, objective: str, gpu_mem_gb: float) -> float:
    return vram if objective == "weights_vram" else float(sizing.gpus_needed_total(vram, gpu_mem_gb))


def stands(record: TrialRecord, first_trial: int) -> bool:
    """Whether a trial's outcome is final for its configuration: its own (not a repeat's copy), and not a
    failure from an earlier session (that one is retried: it may have been a crash, not the configuration)."""
    return record.duplicate_of is None and (record.verdict != FAILED or record.number >= first_trial)


def key(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A configuration's identity, whatever the order of its parameters."""
    return tuple(sorted(params.items()))


def next_smallest(
    order: list[dict[str, str]],
    predicted: dict[tuple[tuple[str, str], ...], float],
    records: list[TrialRecord],
    first_trial: int,
    k: int,
) -> list[dict[str, str]]:
    """The `smallest_first` sampler: the k smallest configurations not tried yet that could still beat the
    best feasible one (predicted strictly smaller), in `order` (ascending predicted size).

    A configuration whose outcome `stands` is done. Empty when the best feasible configuration is known to
    be the smallest: everything predicted smaller has been evaluated.
    """
    done = {key(r.params) for r in records if stands(r, first_trial)}
    feasible = [
        predicted[key(r.params)] for r in records if r.verdict == FEASIBLE and key(r.params) in predicted
    ]
    limit = min(feasible, default=math.inf)
    return [c for c in order if key(c) not in done and predicted[key(c)] < limit][:k]


def not_smaller(size: float, best: float | None) -> bool:
    """Size pruning: a trial no smaller than the best feasible one cannot become the best."""
    return best is not None and size >= best


@functools.cache
def has_groups(preset: str) -> bool:
    """Whether `scheme.group_size` applies to this preset (INT8/FP8 channel-wise presets refuse it)."""
    weights = recipes.quant_scheme(preset, ["Linear"]).weights
    return weights is not None and weights.group_size is not None


@dataclass
class Space:
    """The swept keys with their values (as override strings) and the overrides every trial gets."""

    dims: dict[str, list[str]]
    fixed: list[str]

    def configurations(self, grouped: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
        """Every distinct configuration: `scheme.group_size` dropped where the scheme has no groups."""
        keys = list(self.dims)
        seen: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        for values in itertools.product(*self.dims.values()):
            params = dict(zip(keys, values, strict=True))
            if GROUP_SIZE in params and not grouped(params):
                del params[GROUP_SIZE]
            seen.setdefault(tuple(sorted(params.items())), params)
        return list(seen.values())


def parse_space(overrides: Iterable[Any]) -> Space:
    """Hydra overrides (sweeper params, then the command line) → a Space; a later key replaces an earlier.

    `choice(...)`, `a,b` and `range(...)` become dimensions; `interval(...)` has no finite set of values
    to try and is refused.
    """
    dims: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        dims.pop(key, None)
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
            continue
        if not override.is_discrete_sweep():
            raise ConfigError(
                f"{override.input_line}: the search tries listed values; "
                "list them with choice(...) or range(...)"
            )
        values = list(override.sweep_string_iterator())
        if not values:
            raise ConfigError(f"{override.input_line} gives no value to try")
        if len(values) == 1:
            fixed[key] = f"{key}={values[0]}"
        else:
            dims[key] = values
    if not dims:
        raise ConfigError(
            "the search space is empty: declare choices in hydra.sweeper.params, "
            "e.g. scheme: choice(W4A16,W8A8)"
        )
    return Space(dims, list(fixed.values()))


@dataclass
class TrialRecord:
    """What one trial found, stored on the Optuna trial (JSON) so a resumed study can report it."""

    params: dict[str, str]
    verdict: str
    # low | full: the evaluation the numbers below come from.
    stage: str | None = None
    objective: float | None = None
    disk_bytes: float | None = None
    accuracy: float | None = None
    accuracy_stderr: float | None = None
    recovery: float | None = None
    recovery_stderr: float | None = None
    baseline_accuracy: float | None = None
    # What the floor is on, and its bounds at ±z·stderr.
    value: float | None = None
    lower: float | None = None
    upper: float | None = None
    low_run_id: str | None = None
    low_reused: bool = False
    full_run_id: str | None = None
    full_reused: bool = False
    duplicate_of: int | None = None
    error: str | None = None
    number: int = field(default=-1, compare=False)

    def measured(self, stage: str, metrics: dict[str, float], b: Bound, size: float) -> None:
        """Take an evaluation's numbers (each stage's replace the previous one's)."""
        self.stage, self.objective, self.disk_bytes = stage, size, metrics.get("disk_bytes")
        for key in ("accuracy", "accuracy_stderr", "recovery", "recovery_stderr", "baseline_accuracy"):
            setattr(self, key, metrics.get(key))
        self.value, self.lower, self.upper = b.value, b.lower, b.upper


def best(records: list[TrialRecord]) -> TrialRecord | None:
    """The smallest feasible trial; among equal sizes the higher lower bound, then the earlier trial."""
    feasible = [r for r in records if r.verdict == FEASIBLE]
    return min(feasible, key=lambda r: (r.objective, -(r.lower or 0.0), r.number), default=None)


def distinct_full(records: list[TrialRecord]) -> list[TrialRecord]:
    """Fully evaluated trials, one per configuration (repeats of a configuration left out)."""
    return [r for r in records if r.stage == "full" and r.duplicate_of is None and r.accuracy is not None]


def pareto(records: list[TrialRecord]) -> list[TrialRecord]:
    """Fully evaluated trials no other one beats on both size (smaller) and accuracy (higher)."""
    rows = distinct_full(records)
    front = [
        r
        for r in rows
        if not any(
            o.objective <= r.objective
            and o.accuracy >= r.accuracy
            and (o.objective < r.objective or o.accuracy > r.accuracy)
            for o in rows
        )
    ]
    return sorted(front, key=lambda r: (r.objective, r.number))


def closest(records: list[TrialRecord], n: int = 3) -> list[TrialRecord]:
    """When none is feasible: the trials whose lower bound came nearest the floor (full evaluations first)."""
    measured = [r for r in records if r.lower is not None and r.duplicate_of is None]
    return sorted(measured, key=lambda r: (r.stage != "full", -r.lower))[:n]


def override_line(fixed: list[str], params: dict[str, str]) -> str:
    """`python run.py ...` that reruns one trial's configuration (search.* settings left out)."""
    kept = [o for o in fixed if not o.lstrip("+~").startswith("search.")]
    words = [*kept, *(f"{k}={v}" for k, v in params.items())]
    return " ".join(["python", "run.py", *(shlex.quote(w) for w in words)])


def size_text(value: float | None, objective: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} GPU" if objective == "gpus" else f"{value / GIB:.4f} GiB"


def _pm(value: float | None, err: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if err is None else f"{value:.3f} ± {err:.3f}"


def describe(params: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def table(records: list[TrialRecord], objective: str, floor_on: str, confidence: float) -> str:
    """A Markdown table of trials: configuration, size, accuracy and recovery ± stderr, the bound, verdict."""
    head = [
        "trial",
        "configuration",
        f"size ({objective})",
        "accuracy",
        "recovery",
        f"{floor_on} {confidence:.0%} lower bound",
        "evaluation",
        "verdict",
        "MLflow run",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        verdict = r.verdict + (f" (= trial {r.duplicate_of})" if r.duplicate_of is not None else "")
        cells = [
            str(r.number),
            describe(r.params),
            size_text(r.objective, objective),
            _pm(r.accuracy, r.accuracy_stderr),
            _pm(r.recovery, r.recovery_stderr),
            "-" if r.lower is None else f"{r.lower:.3f}",
            r.stage or "-",
            verdict + (f": {r.error}" if r.error else ""),
            r.full_run_id or r.low_run_id or "-",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def floor_accuracy(records: list[TrialRecord], floor: float, floor_on: str) -> float | None:
    """The accuracy the floor amounts to: floor × baseline accuracy when it is on recovery."""
    if floor_on == "accuracy":
        return floor
    base = next((r.baseline_accuracy for r in distinct_full(records) if r.baseline_accuracy), None)
    return None if base is None else floor * base


def plot(records: list[TrialRecord], objective: str, floor_y: float | None, z: float, path: Path) -> Path:
    """Accuracy (± z·stderr) against size for every fully evaluated trial, the front and the best, as PNG.

    Drawn on matplotlib's Agg canvas directly, headless and without touching pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = distinct_full(records)
    scale = 1.0 if objective == "gpus" else GIB
    fig = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for verdict, color in ((FEASIBLE, "tab:green"), (INFEASIBLE, "tab:gray")):
        group = [r for r in rows if r.verdict == verdict]
        if group:
            ax.errorbar(
                [r.objective / scale for r in group],
                [r.accuracy for r in group],
                yerr=[z * (r.accuracy_stderr or 0.0) for r in group],
                fmt="o",
                color=color,
                capsize=3,
                label=f"{verdict} (± z·stderr)",
            )
    for r in rows:
        ax.annotate(
            str(r.number), (r.objective / scale, r.accuracy), xytext=(4, 4), textcoords="offset points"
        )
    front = pareto(records)
    if front:
        ax.step(
            [r.objective / scale for r in front],
            [r.accuracy for r in front],
            where="post",
            color="tab:blue",
            label="Pareto front",
        )
    top = best(records)
    if top is not None:
        ax.plot([top.objective / scale], [top.accuracy], "*", color="gold", markersize=18, label="best")
    if floor_y is not None and math.isfinite(floor_y):
        ax.axhline(floor_y, color="tab:red", linestyle="--", linewidth=1, label="floor")
    ax.set_xlabel("GPUs" if objective == "gpus" else f"{objective} (GiB)")
    ax.set_ylabel("accuracy")
    ax.set_title("Search: accuracy against size, fully evaluated trials")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
