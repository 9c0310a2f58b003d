"""Structured config schema: Hydra type-checks every config group against these dataclasses.

Registered in Hydra's ConfigStore as `quantsweep_schema`, the first entry of `conf/config.yaml`'s defaults,
so a misspelt key or a wrong type fails at composition, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from quantsweep.devices import parallel_points


@dataclass
class ModelConfig:
    """Where the unquantized model comes from and what sizing needs to know about it without weights."""

    name: str = MISSING
    # A local directory, a hub id, or `gguf:<python package>/<file.gguf>` (materialised once into cache_dir).
    source: str = MISSING
    label: str = ""
    revision: str | None = None
    # Some GGUF conversions get eos wrong (SmolLM2's says <|im_start|>): the token to use as eos and pad.
    eos_token: str | None = None
    dtype: str = "bfloat16"
    trust_remote_code: bool = False
    # Optional: parameter count and config.json fields, so the sizing calculator needs no download.
    num_parameters: float | None = None
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class SchemeConfig:
    """A compressed-tensors preset plus the llm-compressor algorithm that produces it."""

    name: str = MISSING
    preset: str = MISSING
    # RTN | GPTQ | AWQ | SMOOTHQUANT_GPTQ
    algorithm: str = "RTN"
    # None keeps the preset's own group size.
    group_size: int | None = None
    # KV-cache quantization (quantsweep/kv_cache.py): none | fp8 (calibrated static FP8 scales, one per
    # tensor) | fp8_head (one per KV head). vLLM then stores the KV cache in FP8.
    kv_cache: str = "none"
    # Replaced by kv_cache (fp8 = kv_cache_fp8=true); set, it is refused with the new spelling.
    kv_cache_fp8: bool | None = None
    # Per-layer-group precision: {target module pattern: preset name, or "bf16" to keep it unquantized}.
    layer_overrides: dict[str, str] = field(default_factory=dict)
    smoothing_strength: float = 0.8
    dampening_frac: float = 0.01


@dataclass
class SparsityConfig:
    """Weight pruning before quantization (conf/sparsity/, quantsweep/sparsity.py): none, or 2:4."""

    name: str = "none"
    # llm-compressor's mask_structure, N:M: N of every M consecutive weights along a layer's input are zero.
    # null keeps the weights dense; 2:4, what NVIDIA's sparse tensor cores run, is the one accepted.
    mask_structure: str | None = None
    # The fraction of each pruned layer's weights that is zero: N/M under a mask structure (0.5 for 2:4).
    sparsity: float = 0.5
    algorithm: str = "SparseGPT"
    # Modules whose Linear layers are pruned (SparseGPT's targets): the decoder layers. The point's ignore
    # list leaves its layers dense too; embeddings and lm_head are outside the decoder layers.
    targets: list[str] = field(default_factory=lambda: [r"re:.*layers\.\d+$"])
    # SparseGPT's columns per pass (a multiple of M) and Hessian dampening.
    block_size: int = 128
    dampening_frac: float = 0.01


@dataclass
class IgnoreConfig:
    """Modules left in the original precision."""

    name: str = MISSING
    # Module names or `re:` patterns, as llm-compressor's `ignore=` takes them.
    patterns: list[str] = field(default_factory=list)
    # Also keep the first and last decoder layers (expanded for the model's depth).
    keep_first_last_layers: bool = False


@dataclass
class CalibrationConfig:
    """Data for schemes and algorithms that observe activations."""

    name: str = "default"
    # A local .txt / .jsonl / HellaSwag file, or a hub dataset id.
    dataset: str = MISSING
    # How a local file is read: auto (by suffix: .txt a sample per line, .jsonl/.json `text_field`, .bz2
    # HellaSwag), text, jsonl, or hellaswag (context + gold ending, in any layout eval=hellaswag_file reads).
    layout: str = "auto"
    split: str = "train"
    text_field: str = "text"
    # Records to skip at the start of a local file (e.g. to stay clear of the evaluated items).
    skip: int = 0
    num_samples: int = 128
    max_seq_length: int = 512
    seed: int = 42


@dataclass
class EvalConfig:
    """lm-eval settings, shared by a quantized model and its baseline."""

    name: str = MISSING
    tasks: list[str] = field(default_factory=list)
    num_fewshot: int | None = None
    # Items per task (int) or fraction (float < 1); None evaluates everything.
    limit: float | None = None
    batch_size: str = "auto"
    # lm-eval model type: hf (in this process) or vllm (needs `python`, a separate environment).
    backend: str = "hf"
    # A Python interpreter of another environment to run lm-eval in (required for vllm).
    python: str | None = None
    # The metric `accuracy` and `recovery` are on, of `primary_task` (default: the first task). Every task
    # is judged on eval.metrics[task], else primary_metric when it reports it, else its first metric.
    primary_metric: str = "acc_norm"
    primary_task: str | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    # lm-eval task settings per task ({task: {num_fewshot: 25, fewshot_split: train}}), through a group.
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Folders of your own lm-eval task YAMLs (lm-eval's TaskManager include_path): a path, several joined by
    # os.pathsep, or a list. Their content (and local data files they read) is in every fingerprint.
    include_path: Any = None
    # What the floor is on (quantsweep/floor.py): recovery (the primary task's), mean (the suite's mean
    # recovery), worst (every task's), task:<name>, or accuracy (the primary task's score).
    floor: float = 0.97
    floor_on: str = "recovery"
    # One-sided confidence of `passed`: 0.5 judges the point estimate, 0.9 its 90% lower bound.
    confidence: float = 0.5
    # Local data file for the *_file tasks; eval.data_paths.<task> gives one task its own.
    data_path: str | None = None
    data_paths: dict[str, str] = field(default_factory=dict)
    # auto: bfloat16 on GPU, float32 on CPU (bf16 matmuls are slow on most CPUs).
    dtype: str = "auto"
    device: str = "auto"


@dataclass
class TrackingConfig:
    """Where runs are recorded: the one home of the default store (conf/tracking/default.yaml uses it)."""

    uri: str = "sqlite:///mlruns/mlflow.db"
    # Local folder for a new experiment's artifacts; null with a tracking server (it stores them itself).
    artifact_location: str | None = "mlruns/artifacts"
    experiment: str = "quantsweep"


@dataclass
class SearchConfig:
    """`hydra/sweeper=quantsweep_optuna`: the smallest configuration whose accuracy clears a floor."""

    # Feasible when the lower confidence bound of recovery (or accuracy, floor_on=accuracy) is >= floor;
    # both default to eval's.
    floor: float = "${eval.floor}"  # type: ignore[assignment]
    floor_on: str = "${eval.floor_on}"
    # One-sided confidence of that bound: 0.9 -> z = 1.2816; 0.5 judges the point estimate alone.
    confidence: float = 0.9
    # What "smallest" means: disk_bytes | weights_vram | gpus (GPUs of gpu_mem_gb for the weights vRAM) |
    # deployment (weights vRAM + the KV cache of `concurrency` sequences of `context` tokens) |
    # deployment_gpus (GPUs of gpu_mem_gb for that).
    objective: str = "disk_bytes"
    gpu_mem_gb: float = 80.0
    # Tokens per sequence the deployment objectives size the KV cache for; null: the model's own context
    # (max_position_embeddings).
    context: int | None = None
    concurrency: int = 1
    # Items per task for the first, cheap evaluation; null evaluates every trial at eval.limit only.
    low_fidelity_limit: int | None = 50
    # One-sided confidence of the upper bound that prunes a trial after the cheap evaluation (it must miss
    # the floor): decided on few items, so kept wide even when `confidence` judges the point estimate.
    prune_confidence: float = 0.9
    # Configurations the study evaluates, across resumptions; a sampled repeat of one is answered from the
    # study at no cost and not counted.
    n_trials: int = 30
    # smallest_first (ascending predicted checkpoint size, stops once nothing smaller is left to try) |
    # tpe | grid (every combination, once, in a seeded order).
    sampler: str = "smallest_first"
    seed: int = 0
    # Any SQLAlchemy URL; the study is resumed from it (load_if_exists).
    storage: str = "sqlite:///mlruns/optuna.db"
    study_name: str = "${model.name}-${.objective}-${.floor_on}-${.floor}"


@dataclass
class ResourcesConfig:
    """What one point asks of its launcher (docs/scale-out.md)."""

    # GPUs one point gets: Ray asks the cluster for this many per task, SLURM per job, the joblib launcher
    # gives each of its gpu_count // gpus_per_point workers as many cards of the host. With more than one,
    # HF evaluation spreads the model over them, vLLM runs tensor-parallel, and quantization loads the
    # model through llm-compressor's offloading across them.
    gpus_per_point: int = 1


@dataclass
class QuantizeConfig:
    """How the quantization step uses the GPU (not what it computes: no fingerprint reads it)."""

    # GiB of GPU memory quantization may take, for models larger than that: the model is loaded on the CPU
    # and llm-compressor onloads one decoder layer (RTN: one Linear) at a time to the first GPU, whose
    # allocator is capped here so exceeding it fails. null: no cap (the model is loaded on the GPU).
    max_gpu_memory_gib: float | None = None


@dataclass
class SweepRunConfig:
    """The sweep a job belongs to, which its sweeper appends to the job's overrides (`sweep_run.*`, see
    sweeps/bookkeeping.py) so every launcher carries it; all null for a single run. Not part of what a run
    computes: point.as_dict leaves it out of params and config.yaml, and no fingerprint reads it."""

    # The sweep's MLflow parent run, and its id (the runs' quantsweep.sweep_id tag).
    parent: str | None = None
    sweep_id: str | None = None
    # Points in the sweep (null for a search, whose size is not known ahead) and when it started (epoch
    # seconds): the progress lines' [3/8] and ETA.
    total: int | None = None
    start: float | None = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    scheme: SchemeConfig = MISSING
    ignore: IgnoreConfig = MISSING
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    calibration: CalibrationConfig = MISSING
    eval: EvalConfig = MISSING
    tracking: TrackingConfig = MISSING
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    sweep_run: SweepRunConfig = field(default_factory=SweepRunConfig)
    output_dir: str = "outputs/checkpoints"
    cache_dir: str = "~/.cache/quantsweep"
    force: bool = False
    # After a point is scored, check that vLLM loads its checkpoint and generates (where a vLLM environment
    # exists: `make vllm-env`); false skips it.
    deploy_check: bool = True
    seed: int = 0
    # Show the libraries' output (also in each run's logs.txt) on the terminal as it comes.
    verbose: bool = False


def _if_set(value: Any, then: Any, otherwise: Any) -> Any:
    """`then` when `value` is given: eval=hellaswag reads the local file when eval.data_path names one."""
    return otherwise if value in (None, "") else then


def _if_local(value: Any, then: Any, otherwise: Any) -> Any:
    """`then` when `value` is a local path, as the calibration loader decides it (not a hub id)."""
    from quantsweep.models import looks_local

    return then if value and looks_local(str(value)) else otherwise


def register() -> None:
    """Make the schema available to `defaults:` lists, and `${quantsweep_gpus:}`, `${quantsweep_if_set:...}`
    and `${quantsweep_if_local:...}` to configs; idempotent."""
    ConfigStore.instance().store(name="quantsweep_schema", node=Config)
    OmegaConf.register_new_resolver("quantsweep_gpus", parallel_points, replace=True)
    OmegaConf.register_new_resolver("quantsweep_if_set", _if_set, replace=True)
    OmegaConf.register_new_resolver("quantsweep_if_local", _if_local, replace=True)


register()
