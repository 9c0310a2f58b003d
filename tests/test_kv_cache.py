"""KV-cache quantization (`scheme.kv_cache`) on the tiny Llama, with real llm-compressor, lm-eval's HF
backend, a SQLite MLflow store and Optuna: every logged figure that includes the KV cache halves in FP8,
the point says where its KV quantization was applied, the checkpoint carries it, and a search that counts
the KV cache chooses otherwise than one that counts the weights alone.

Every KV figure is checked against the tiny model's config.json: layers x 2 (K and V) x KV heads x head dim x
bytes per element (2 in bf16, 1 in FP8).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from conftest import ROOT, base_overrides, compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from safetensors import safe_open

from quantsweep import kv_cache, pipeline, point, tracking
from quantsweep.config import SchemeConfig, SearchConfig
from quantsweep.errors import ConfigError
from quantsweep.evaluation import harness
from quantsweep.results import collect, kv, render
from quantsweep.sizing import cli as sizing_cli
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.objectives import OBJECTIVES
from quantsweep.sweeps.search.plan import make_plan
from quantsweep.sweeps.search.space import key

GIB, MIB = 2**30, 2**20
BYTES = {"none": 2, "fp8": 1, "fp8_head": 1}


def kv_per_token(model: Path, kind: str) -> int:
    """The independent computation, from config.json alone."""
    c = json.loads((model / "config.json").read_text())
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    return c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * head_dim * BYTES[kind]


# ---- settings, fingerprints, names: no model needed ----


def test_old_key_and_unknown_values_are_refused_naming_the_fix(make_cfg):
    with pytest.raises(ConfigError, match=r"scheme.kv_cache_fp8=true was replaced by .* scheme.kv_cache=fp8"):
        point.resolve(make_cfg("scheme.kv_cache_fp8=true"))
    with pytest.raises(ConfigError, match="scheme.kv_cache='int8'; choose one of none, fp8, fp8_head"):
        point.resolve(make_cfg("scheme.kv_cache=int8"))


def test_fingerprint_identity_keeps_earlier_points_and_tells_the_kv_caches_apart():
    def plain(**kw) -> dict:
        return {"name": "x", "preset": "W8A8", "algorithm": "RTN", "group_size": None, **kw}

    ids = {k: kv_cache.identity(SchemeConfig(name="x", preset="W8A8", kv_cache=k)) for k in kv_cache.KINDS}
    # As the scheme was fingerprinted when it had the kv_cache_fp8 bool: unchanged for none and fp8.
    for kind, fp8 in (("none", False), ("fp8", True)):
        assert ids[kind] == plain(
            kv_cache_fp8=fp8, layer_overrides={}, smoothing_strength=0.8, dampening_frac=0.01
        )
    assert ids["fp8_head"] == ids["fp8"] | {"kv_cache_strategy": "attn_head"}
    assert len({tracking.fingerprint(i) for i in ids.values()}) == 3


def test_grid_point_names_show_the_kv_cache(make_cfg):
    names = [point.run_name(make_cfg(f"scheme.kv_cache={k}")) for k in kv_cache.KINDS]
    assert names[0].endswith("/lm_head") and names[1].endswith("/lm_head/kvfp8")
    assert names[2].endswith("/lm_head/kvfp8head")


# ---- points end to end ----


@pytest.fixture(scope="module")
def points(tiny_model, task_file, calib_file, tmp_path_factory):
    """W8A8 with each KV cache, in one store (one baseline)."""
    work = tmp_path_factory.mktemp("kv")
    base = [*base_overrides(tiny_model, task_file, calib_file, work), "scheme=W8A8"]
    done = {}
    for kind in kv_cache.KINDS:
        cfg = compose([*base, f"scheme.kv_cache={kind}"])
        outcome = pipeline.run(cfg)
        assert outcome.status == "FINISHED", outcome.error
        done[kind] = (cfg, outcome, mlflow.get_run(outcome.run_id))
    return work, done


def checkpoint(cfg, run) -> Path:
    resolved = point.resolve(cfg)
    return Path(cfg.output_dir) / cfg.model.name / resolved.checkpoint_fp


@pytest.mark.slow
def test_every_logged_kv_figure_halves_with_fp8(points, tiny_model):
    _, done = points
    for kind, (_, outcome, run) in done.items():
        m = run.data.metrics
        per_token = kv_per_token(tiny_model, kind)
        assert m["kv_cache_bytes_per_token"] == per_token
        assert m["kv_cache_gib_max_context"] == pytest.approx(per_token * 512 / GIB)
        assert run.data.params["scheme.kv_cache"] == kind
        assert outcome.name.endswith(kv_cache.suffix(kind))
        # The objective that counts the KV cache: weights' vRAM + KV of 8 sequences of the model's 512.
        deployed = OBJECTIVES["deployment"].measured(m, SearchConfig(concurrency=8))
        assert deployed == pytest.approx(m["weights_vram_est_gib"] * GIB + per_token * 512 * 8)
        # The KV scales are in the predicted checkpoint size as in the written one.
        assert m["disk_bytes_predicted"] == pytest.approx(m["disk_bytes"], rel=1e-3)
    assert done["fp8"][2].data.metrics["kv_cache_bytes_per_token"] * 2 == kv_per_token(tiny_model, "none")
    assert len({r.data.tags[tracking.FINGERPRINT] for _, _, r in done.values()}) == 3


@pytest.mark.slow
def test_checkpoint_carries_the_kv_cache_scheme_and_its_scales(points, tiny_model):
    _, done = points
    heads = json.loads((tiny_model / "config.json").read_text())["num_key_value_heads"]
    for kind, shape in (("fp8", [1]), ("fp8_head", [heads, 1, 1])):
        cfg, _, run = done[kind]
        path = checkpoint(cfg, run)
        scheme = json.loads((path / "config.json").read_text())["quantization_config"]["kv_cache_scheme"]
        assert (scheme["num_bits"], scheme["type"], scheme["dynamic"]) == (8, "float", False)
        assert scheme["strategy"] == kv_cache.KINDS[kind] == kv_cache.declared(path)
        (weights,) = path.glob("*.safetensors")
        with safe_open(str(weights), "pt") as f:
            names = [k for k in f.keys() if k.endswith(("k_scale", "v_scale"))]  # noqa: SIM118
            scales = {k: f.get_slice(k).get_shape() for k in names}
        assert len(scales) == 2 * 2 and all(s == shape for s in scales.values())
    plain_cfg, _, plain_run = done["none"]
    assert kv_cache.declared(checkpoint(plain_cfg, plain_run)) is None


@pytest.mark.slow
def test_the_tag_says_hf_scoring_quantized_the_kv_cache_and_it_did(points):
    """compressed-tensors' QuantizedKVCache rounds K and V through FP8 in HF's forward: the tag says `scored`,
    and disabling that quantization changes the logits the scores came from."""
    from compressed_tensors.quantization.lifecycle.helpers import disable_quantization
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    _, done = points
    assert kv_cache.APPLIED_TAG not in done["none"][2].data.tags  # nothing to apply
    for kind in ("fp8", "fp8_head"):
        cfg, _, run = done[kind]
        assert run.data.tags[kv_cache.APPLIED_TAG] == kv_cache.SCORED
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint(cfg, run),
            dtype=torch.float32,
            quantization_config=CompressedTensorsConfig(run_compressed=False),
        )
        ids = torch.arange(3, 40).unsqueeze(0)
        with torch.no_grad():
            assert kv_cache.applied_in(model) == kv_cache.SCORED
            quantized = model(ids).logits
            model.apply(disable_quantization)
            assert kv_cache.applied_in(model) == kv_cache.CHECKPOINT_ONLY
            unquantized = model(ids).logits
        assert (quantized - unquantized).abs().max() > 1e-4


@pytest.mark.slow
def test_vllm_is_told_to_store_the_kv_cache_in_fp8(points):
    _, done = points
    for kind, (cfg, _, run) in done.items():
        args = harness._model_args(str(checkpoint(cfg, run)), compose(["eval.backend=vllm"]).eval, 0)
        assert args.endswith(",kv_cache_dtype=fp8") is (kind != "none")


@pytest.mark.slow
def test_leaderboard_kv_columns_and_the_weights_only_mark(points, tiny_model):
    work, done = points
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    board = collect(uri, "quantsweep")
    rows = {r["run_id"]: r for r in board.to_dict("records")}
    for kind, (_, _, run) in done.items():
        row = rows[run.info.run_id]
        labels = {"none": "W8A8 RTN", "fp8": "W8A8 RTN kvfp8", "fp8_head": "W8A8 RTN kvfp8head"}
        assert row["kv_cache"] == kind and row["label"] == labels[kind]
        assert row["kv_cache_gib"] == pytest.approx(kv_per_token(tiny_model, kind) * 512 / GIB)
        assert row["total_vram_gib"] == pytest.approx(row["weights_vram_gib"] + row["kv_cache_gib"])
    wide = kv.with_kv(board, context=4096, concurrency=8)
    fp8 = wide[wide["run_id"] == done["fp8"][2].info.run_id].iloc[0]
    assert fp8["kv_cache_gib"] == pytest.approx(kv_per_token(tiny_model, "fp8") * 4096 * 8 / GIB)
    md = render.to_markdown(board)
    assert "| fp8 |" in md and "| fp8_head |" in md and "⚠" not in md.split("\n- ")[0]
    # A point whose scoring did not quantize its KV cache is marked, and the note says what that means.
    client = mlflow.MlflowClient(uri)
    run_id = done["fp8"][2].info.run_id
    client.set_tag(run_id, kv_cache.APPLIED_TAG, kv_cache.CHECKPOINT_ONLY)
    try:
        md = render.to_markdown(collect(uri, "quantsweep"))
    finally:
        client.set_tag(run_id, kv_cache.APPLIED_TAG, kv_cache.SCORED)
    assert "| fp8 ⚠ |" in md and "measure the weights alone" in md


@pytest.mark.slow
def test_sizing_a_checkpoint_sizes_its_kv_cache_as_declared(points, tiny_model):
    _, done = points
    for kind, (cfg, _, run) in done.items():
        text = sizing_cli._report(sizing_cli._parse([f"model={checkpoint(cfg, run)}", "concurrency=8"]))
        per_token = kv_per_token(tiny_model, kind)
        fp8 = kind != "none"
        assert ("KV cache fp8 (the checkpoint's kv_cache_scheme)" in text) is fp8
        row = next(line for line in text.splitlines() if line.startswith("checkpoint"))
        assert f" {per_token / MIB:.2g} " in row and f" {per_token * 512 * 8 / GIB:.2g} " in row
    # The run's scheme.kv_cache decides for a config that does not say (a conf/model name).
    cfg, _, run = done["fp8"]
    args = ["model=granite_3.2_8b_instruct", f"run={run.info.run_id}", f"tracking_uri={cfg.tracking.uri}"]
    text = sizing_cli._report(sizing_cli._parse(args))
    assert f"KV cache fp8 (run {run.info.run_id}: scheme.kv_cache=fp8)" in text


# ---- the search: counting the KV cache changes the answer ----


def test_deployment_orders_w8a16_with_fp8_kv_before_w4a16_with_bf16_kv(
    tiny_model, task_file, calib_file, tmp_path
):
    """Predicted from the tiny model's config: W4A16's weights are smaller than W8A16's, but at 512 tokens x 8
    sequences the KV cache dominates, and FP8's half puts W8A16 + FP8 KV ahead of W4A16 + bf16 KV."""
    base = base_overrides(tiny_model, task_file, calib_file, tmp_path)
    arguments = ["scheme=W4A16,W8A16", "scheme.group_size=64", "scheme.kv_cache=none,fp8"]
    orders = {}
    for objective in ("weights_vram", "deployment"):
        settings = SearchConfig(floor=0.0, floor_on="accuracy", objective=objective, concurrency=8)
        overrides = OverridesParser.create().parse_overrides(arguments)
        plan = make_plan(settings, overrides, lambda extra: compose([*base, *extra]))
        orders[objective] = [(c["scheme"], c["scheme.kv_cache"]) for c in plan.order]
        sizes = [plan.predicted[key(c)] for c in plan.order]
        assert sizes == sorted(sizes)
    assert orders["weights_vram"] == [
        ("W4A16", "none"),
        ("W4A16", "fp8"),
        ("W8A16", "none"),
        ("W8A16", "fp8"),
    ]
    assert orders["deployment"] == [("W4A16", "fp8"), ("W8A16", "fp8"), ("W4A16", "none"), ("W8A16", "none")]
    assert plan.identity["concurrency"] == 8 and plan.identity["context"] is None


def search(model: Path, task: Path, calib: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    overrides = [
        *base_overrides(model, task, calib, work),
        "hydra/sweeper=quantsweep_optuna",
        "eval.limit=4",
        "eval.num_fewshot=0",
        "scheme=W4A16,W8A16",
        "scheme.group_size=64",
        "scheme.kv_cache=none,fp8",
        # Every configuration clears a floor of 0: the answer is the smallest by the objective.
        "search.floor_on=accuracy",
        "search.floor=0.0",
        "search.confidence=0.5",
        "search.low_fidelity_limit=null",
        f"search.storage=sqlite:///{work}/optuna.db",
        *extra,
    ]
    cmd = [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={work}/multirun"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_search_counting_the_kv_cache_picks_an_fp8_kv_cache(tiny_model, task_file, calib_file, tmp_path):
    """The same space and floor, two objectives: the weights alone pick W4A16 with its bf16 KV cache, weights
    plus the KV cache of 8 sequences of 512 tokens pick W4A16 with an FP8 KV cache (its point tagged as scored
    with it)."""
    best = {}
    for objective in ("weights_vram", "deployment"):
        extra = [f"search.objective={objective}", "search.concurrency=8", f"search.study_name={objective}"]
        proc = search(tiny_model, task_file, calib_file, tmp_path, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"ordered by predicted {objective}" in proc.stdout
        study = optuna.load_study(study_name=objective, storage=f"sqlite:///{tmp_path}/optuna.db")
        record = decisions.TrialRecord(**study.best_trial.user_attrs[decisions.RECORD])
        best[objective] = (record.params["scheme"], record.params["scheme.kv_cache"], record.full_run_id)
    assert best["weights_vram"][:2] == ("W4A16", "none")
    assert best["deployment"][:2] == ("W4A16", "fp8")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    chosen = mlflow.get_run(best["deployment"][2])
    assert chosen.data.tags[kv_cache.APPLIED_TAG] == kv_cache.SCORED
    assert chosen.info.run_name.endswith("/kvfp8")


# ---- vLLM: the KV cache stored in FP8 ----


def _vllm_built() -> bool:
    from quantsweep.evaluation import vllm_env

    return vllm_env.available() is not None


@pytest.mark.vllm
@pytest.mark.skipif(not _vllm_built(), reason="no vLLM environment: run `make vllm-env`")
def test_vllm_scores_and_serves_an_fp8_kv_cache(task_file, calib_file, tmp_path, monkeypatch):
    """Scored by lm-eval's vLLM backend (tag `scored`), and vLLM's own KV capacity, in a budget of 1 GiB,
    holds twice the tokens bf16 would: 1 byte per element. head_dim 64: a size vLLM's CPU backend lists."""
    from conftest import build_tiny_llama

    from quantsweep.devices import accelerator

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = build_tiny_llama(tmp_path / "tiny-hd64", hidden=256)
    overrides = ["scheme=W8A8", "scheme.kv_cache=fp8", "eval.backend=vllm", "deploy_check=true"]
    cfg = compose([*base_overrides(model, task_file, calib_file, tmp_path), *overrides])
    outcome = pipeline.run(cfg)
    assert outcome.status == "FINISHED", outcome.error
    run = mlflow.get_run(outcome.run_id)
    assert run.data.tags[kv_cache.APPLIED_TAG] == kv_cache.SCORED
    per_token = kv_per_token(model, "fp8")
    assert run.data.metrics["kv_cache_bytes_per_token"] == per_token
    if accelerator() == "cpu":
        assert run.data.metrics["vllm_kv_cache_tokens"] == 2**30 // per_token
