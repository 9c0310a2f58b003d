"""2:4 sparsity (`sparsity=2of4`) on a tiny Llama with real llm-compressor: the pattern in the saved weights,
what a point logs about it (checked against the weights loaded back through transformers), its fingerprint
and name, and the combinations refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import pytest
import torch
from conftest import base_overrides, build_tiny_llama, compose

from quantsweep import pipeline, point, recipes, sparsity
from quantsweep.errors import ConfigError
from quantsweep.evaluation import vllm_env
from quantsweep.results import collect

# scheme overrides, the bits each pruned weight value is stored in, and whether attention stays dense.
CASES = {
    "FP8_dynamic": (["scheme=FP8_dynamic"], 8, False),
    "W4A16": (["scheme=W4A16", "ignore=lm_head_attn"], 4, True),
    "dense": (["scheme=dense"], 16, False),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module's points, so they share the baseline."""
    return tmp_path_factory.mktemp("sparse-store")


class Pruned(NamedTuple):
    """A FINISHED 2:4 point, its checkpoint loaded back (dequantized by transformers + compressed-tensors),
    the source model, the Linear layers that should be pruned and the bits of their stored values."""

    cfg: Any
    outcome: Any
    checkpoint: Path
    loaded: Any
    source: Any
    targeted: list[str]
    bits: int


@pytest.fixture(scope="module", params=list(CASES))
def pruned(request, tiny_model, task_file, calib_file, store) -> Pruned:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    overrides, bits, attention_dense = CASES[request.param]
    cfg = compose([*base_overrides(tiny_model, task_file, calib_file, store), "sparsity=2of4", *overrides])
    outcome = pipeline.run(cfg)
    assert outcome.status == "FINISHED", outcome.error
    checkpoint = Path(cfg.output_dir) / cfg.model.name / point.resolve(cfg).checkpoint_fp
    dequantize = {"quantization_config": CompressedTensorsConfig(run_compressed=False)}
    kwargs = {} if request.param == "dense" else dequantize
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, **kwargs)
    source = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    linears = [n for n, m in loaded.named_modules() if isinstance(m, torch.nn.Linear)]
    targeted = [n for n in linears if ".layers." in n and not (attention_dense and "self_attn" in n)]
    return Pruned(cfg, outcome, checkpoint, loaded, source, targeted, bits)


def weight(model, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight.detach().float()


def test_two_of_every_four_weights_along_the_input_are_zero_and_excluded_layers_stay_dense(pruned):
    loaded, source, targeted = pruned.loaded, pruned.source, pruned.targeted
    assert len(targeted) in (6, 14)  # 2 layers x 7 Linear layers, or x 3 MLP ones with attention kept
    for name in targeted:
        w = weight(loaded, name)
        out_features, in_features = w.shape
        along_input = (w == 0).reshape(out_features, in_features // 4, 4).sum(dim=-1)
        assert (along_input >= 2).all(), name
        # The groups are along the input (a row's consecutive columns), not along the output.
        along_output = (w.T == 0).reshape(in_features, out_features // 4, 4).sum(dim=-1)
        assert not (along_output >= 2).all(), name
    untouched = ["lm_head"] + [
        n for n, m in loaded.named_modules() if "self_attn." in n and n not in targeted
    ]
    for name in untouched:
        if isinstance(loaded.get_submodule(name), torch.nn.Linear):
            assert torch.equal(weight(loaded, name), weight(source, name)), name


def test_the_logged_zero_fraction_and_sparse_bytes_match_the_saved_weights(pruned):
    outcome, loaded, targeted, bits = pruned.outcome, pruned.loaded, pruned.targeted, pruned.bits
    run = mlflow.get_run(outcome.run_id)
    m, params, tags = run.data.metrics, run.data.params, run.data.tags
    zeros = sum(int((weight(loaded, n) == 0).sum()) for n in targeted)
    elements = sum(weight(loaded, n).numel() for n in targeted)
    assert zeros / elements >= 0.5
    assert m["sparsity_zero_fraction"] == pytest.approx(zeros / elements)
    assert m["sparsity_pattern_fraction"] == 1.0
    # Per pruned weight: bits/8 bytes stored; under 2:4, half the values plus 2 bits of position per kept one.
    per_weight = bits / 8 - (bits / 8 / 2 + 0.5 * 2 / 8)
    expected = m["disk_bytes"] - sum(weight(loaded, n).numel() * per_weight for n in targeted)
    assert m["sparse_runtime_bytes"] == pytest.approx(expected)
    assert m["sparse_runtime_bytes"] < m["disk_bytes"]
    # compressed-tensors 0.19 writes no sparse format: the zeros are stored as values.
    config = json.loads((pruned.checkpoint / "config.json").read_text()).get("quantization_config")
    assert config is None or config["sparsity_config"] == {}
    assert tags[sparsity.FORMAT_TAG] == "none"
    assert params["sparsity.layers_pruned"] == str(len(targeted)) and params["sparsity.name"] == "2of4"
    assert params["scheme.needs_calibration"] == "True"
    assert run.info.run_name.endswith("/2of4") and outcome.name == run.info.run_name
    board = collect(pruned.cfg.tracking.uri, pruned.cfg.tracking.experiment)
    assert board.set_index("run_id").at[outcome.run_id, "label"].endswith(" 2of4")


def test_the_recipe_prunes_before_it_quantizes(make_cfg):
    cfg = make_cfg("sparsity=2of4", "scheme=W4A16")
    modifiers = recipes.build_recipe(cfg.scheme, ["lm_head"], cfg.sparsity)
    assert [type(m).__name__ for m in modifiers] == ["SparseGPTModifier", "QuantizationModifier"]
    assert modifiers[0].mask_structure == "2:4" and modifiers[0].ignore == ["lm_head"]
    alone = make_cfg("sparsity=2of4", "scheme=dense")
    assert [type(m).__name__ for m in recipes.build_recipe(alone.scheme, [], alone.sparsity)] == [
        "SparseGPTModifier"
    ]


def test_the_fingerprint_and_name_carry_the_sparsity(make_cfg):
    dense = point.resolve(make_cfg("scheme=FP8_dynamic"))
    sparse = point.resolve(make_cfg("scheme=FP8_dynamic", "sparsity=2of4"))
    damped = point.resolve(make_cfg("scheme=FP8_dynamic", "sparsity=2of4", "sparsity.dampening_frac=0.05"))
    assert len({dense.fp, sparse.fp, damped.fp}) == 3
    assert len({dense.checkpoint_fp, sparse.checkpoint_fp, damped.checkpoint_fp}) == 3
    assert dense.baseline_fp == sparse.baseline_fp
    assert sparse.name == dense.name + "/2of4"
    # SparseGPT calibrates: FP8_dynamic alone needs no data.
    assert not dense.uses_calibration and sparse.uses_calibration
    assert dense.sparse_layers == () and len(sparse.sparse_layers) == 14
    assert not any("lm_head" in n for n in sparse.sparse_layers)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["sparsity=2of4", "scheme=W4A16_GPTQ"], "scheme.algorithm=GPTQ"),
        (["sparsity=2of4", "scheme=W8A8_SQ_GPTQ"], "scheme.algorithm=SMOOTHQUANT_GPTQ"),
        (["sparsity=2of4", "sparsity.mask_structure=4:8"], "sparsity.mask_structure='4:8'"),
        (["sparsity=2of4", "sparsity.sparsity=0.7"], "sparsity.sparsity=0.7"),
        (["sparsity=2of4", "sparsity.block_size=30"], "sparsity.block_size=30"),
        (["scheme=dense"], "sparsity=2of4"),
        (["sparsity=2of4", "scheme=dense", "scheme.algorithm=GPTQ"], "scheme.algorithm=GPTQ"),
    ],
)
def test_combinations_that_cannot_work_are_refused_before_any_work(make_cfg, tmp_path, overrides, named):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as refused:
        pipeline.run(cfg)
    message = str(refused.value)
    assert named in message and "\n" not in message
    assert not (tmp_path / "checkpoints").exists()


def test_a_layer_width_that_is_not_a_multiple_of_four_is_refused(tiny_model, task_file, calib_file, tmp_path):
    model = shutil.copytree(tiny_model, tmp_path / "odd-width")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"intermediate_size": 386}))
    cfg = compose([*base_overrides(model, task_file, calib_file, tmp_path), "sparsity=2of4", "scheme=W8A8"])
    with pytest.raises(ConfigError, match=r"mlp\.down_proj: 386\); add them to the ignore list"):
        point.resolve(cfg)
    # Kept dense through the ignore list, the rest is pruned.
    cfg = compose(
        [*base_overrides(model, task_file, calib_file, tmp_path), "sparsity=2of4", "scheme=W8A8"]
        + ["ignore.patterns=[lm_head,'re:.*down_proj']"]
    )
    assert len(point.resolve(cfg).sparse_layers) == 12


@pytest.mark.vllm
@pytest.mark.skipif(vllm_env.available() is None, reason="no vLLM environment: run `make vllm-env`")
def test_vllm_runs_a_2of4_checkpoint_as_a_dense_one(task_file, calib_file, tmp_path):
    """vLLM 0.32 has no 2:4 kernels left (vLLM PR #36799 removed them); the checkpoint declares no sparsity,
    so vLLM loads it as its scheme's dense checkpoint and generates (measured: 2 minutes on CPU)."""
    model = build_tiny_llama(tmp_path / "hd64", hidden=256)  # head_dim 64, a size vLLM's CPU backend lists
    overrides = ["sparsity=2of4", "scheme=FP8_dynamic", "deploy_check=true"]
    cfg = compose([*base_overrides(model, task_file, calib_file, tmp_path), *overrides])
    outcome = pipeline.run(cfg)
    assert outcome.status == "FINISHED", outcome.error
    run = mlflow.get_run(outcome.run_id)
    assert run.data.metrics["vllm_loads"] == 1.0 and run.data.metrics["vllm_gen_tokens_per_s"] > 0
    assert run.data.tags[sparsity.FORMAT_TAG] == "none"
