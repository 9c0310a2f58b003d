"""Sizing calculator: the seed's worked examples, exact, plus the parameter estimate and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from quantsweep.sizing import measured
from quantsweep.sizing.cli import CONF_DIR, main
from quantsweep.sizing.formulas import (
    PRECISIONS,
    ModelShape,
    estimate_num_parameters,
    gpus_needed,
    kv_cache_bytes_per_token,
    size_table,
    weights_vram_bytes,
)
from quantsweep.tables import GIB, MIB

GRANITE = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model/granite_3.2_8b_instruct.yaml"))


def _granite_shape() -> ModelShape:
    return ModelShape.from_hf_config(GRANITE["architecture"], GRANITE["num_parameters"])


def _tiny_llama(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    return LlamaConfig(**{**kwargs, **overrides})


def _row(output: str, precision: str) -> list[str]:
    """The table row for `precision`, split into cells."""
    return next(line.split() for line in output.splitlines() if line.startswith(precision + " "))


def test_granite_worked_example():
    shape = _granite_shape()
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (40, 8, 128)
    assert shape.max_context == 131_072
    assert weights_vram_bytes(8.17e9, 2.0) == pytest.approx(8.17e9 * 2 * 1.2)
    assert round(weights_vram_bytes(8.17e9, 2.0) / GIB, 1) == 18.3
    assert kv_cache_bytes_per_token(shape) == 163_840
    assert kv_cache_bytes_per_token(shape) / MIB == 0.15625
    assert kv_cache_bytes_per_token(shape) * 131_072 == 20 * GIB

    bf16 = size_table(shape, context=131_072)[0]
    assert bf16["precision"] == "BF16"
    assert round(bf16["weights_vram_gib"], 1) == 18.3
    assert bf16["kv_cache_mib_per_token"] == 0.15625
    assert bf16["kv_cache_gib"] == 20.0
    assert round(bf16["total_gib"], 1) == 38.3


def test_granite_cli_prints_the_seed_figures(capsys):
    assert main(["model=granite_3.2_8b_instruct"]) == 0
    out = capsys.readouterr().out
    assert "IBM Granite 3.2 8B Instruct" in out
    assert "context 131,072 tokens" in out  # the default: the model's max context
    # precision, bytes/param, weights GiB, KV MiB/token, KV GiB, total GiB, GPUs: seed, total rule
    assert _row(out, "BF16") == ["BF16", "2.0000", "18.3", "0.16", "20.0", "38.3", "1", "1"]
    assert _row(out, "INT8/FP8")[2] == "9.1"
    assert _row(out, "INT4")[2] == "4.6"
    assert _row(out, "NVFP4")[1:3] == ["0.5625", "5.1"]
    assert "ceil(params x bytes / (GPU GB x 1e9)), weights only" in out


def test_cli_params_overrides_the_conf_count(capsys):
    assert main(["model=granite_3.2_8b_instruct", "params=1e10"]) == 0
    out = capsys.readouterr().out
    assert "parameters 10,000,000,000 (params=)" in out
    assert _row(out, "BF16")[2] == "22.4"  # 1e10 x 2 x 1.2 / 2^30


def test_kv_dtype_concurrency_and_the_two_gpu_rules():
    shape = _granite_shape()
    bf16 = size_table(shape, context=131_072, concurrency=2, gpu_mem_gb=24, kv_dtype="fp8")[0]
    assert bf16["kv_cache_mib_per_token"] == 0.15625 / 2  # fp8: one byte per element
    assert bf16["kv_cache_gib"] == 20.0  # half the bytes, twice the sequences
    assert bf16["gpus_needed"] == 1  # 16.34 GB of raw weights fit in 24 GB
    assert bf16["gpus_needed_total"] == 2  # 19.6 GB with overhead + 21.5 GB of KV do not


@pytest.mark.parametrize(
    ("num_parameters", "expected"),
    [(109e9, [3, 2, 1]), (400e9, [10, 5, 3])],
    ids=["llama4-scout", "llama4-maverick"],
)
def test_llama4_gpus_on_h100_80gb(num_parameters, expected):
    got = [gpus_needed(num_parameters, PRECISIONS[p], 80.0) for p in ("BF16", "INT8/FP8", "INT4")]
    assert got == expected


def test_llama4_config_nests_the_text_model():
    from transformers import Llama4Config

    config = Llama4Config().to_dict()
    assert "num_hidden_layers" not in config  # only under text_config
    shape = ModelShape.from_hf_config(config, num_parameters=109e9)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (48, 8, 128)
    rows = size_table(shape, context=shape.max_context)
    assert [r["gpus_needed"] for r in rows[:3]] == [3, 2, 1]
    with pytest.raises(ValueError, match="mixture-of-experts.*params="):
        ModelShape.from_hf_config(config)


@pytest.mark.parametrize(
    "overrides",
    [{"tie_word_embeddings": True}, {"tie_word_embeddings": False}, {"head_dim": 32}],
    ids=["tied", "untied", "head_dim-not-hidden-over-heads"],
)
def test_param_estimate_matches_llama(overrides):
    from transformers import LlamaForCausalLM

    config = _tiny_llama(**overrides)
    real = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert estimate_num_parameters(config.to_dict()) == real
    shape = ModelShape.from_hf_config(config.to_dict())
    assert shape.num_parameters == real
    assert shape.head_dim == config.head_dim


def test_head_dim_and_kv_heads_default_from_attention_heads():
    config = {k: v for k, v in _tiny_llama().to_dict().items() if k != "head_dim"}
    config["num_key_value_heads"] = None  # older configs: no GQA
    shape = ModelShape.from_hf_config(config, num_parameters=1e6)
    assert (shape.num_kv_heads, shape.head_dim) == (4, 16)


def test_missing_config_field_is_named():
    config = dict(GRANITE["architecture"])
    del config["num_hidden_layers"]
    with pytest.raises(ValueError, match="lacks num_hidden_layers"):
        ModelShape.from_hf_config(config, num_parameters=8.17e9)
    del config["vocab_size"]
    with pytest.raises(ValueError, match="lacks vocab_size: give num_parameters="):
        estimate_num_parameters(config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context": -1}, "context must be a positive number of tokens, got -1"),
        ({"context": 0}, "context must be a positive number of tokens, got 0"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"gpu_mem_gb": 0}, "gpu_mem_gb must be positive"),
        ({"kv_dtype": "int4"}, "kv_dtype='int4' is unknown: use one of bf16, fp8"),
    ],
)
def test_size_table_rejects_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        size_table(_granite_shape(), **{"context": 1024, **kwargs})


def test_shape_rejects_non_positive_parameters():
    with pytest.raises(ValueError, match="num_parameters must be positive"):
        ModelShape.from_hf_config(GRANITE["architecture"], num_parameters=0)


def test_cli_local_checkpoint_adds_measured_row(tmp_path, capsys):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_tiny_llama())
    model.save_pretrained(tmp_path)
    numel = sum(p.numel() for p in model.parameters())
    file_bytes = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))

    assert main(["model=" + str(tmp_path), "context=1024"]) == 0
    out = capsys.readouterr().out
    assert f"parameters {numel:,} (safetensors headers)" in out
    assert "context 1,024 tokens" in out
    row = _row(out, "checkpoint")
    assert row[1] == f"{file_bytes / numel:.4f}"
    assert row[1].startswith("4.0")  # saved in float32


def test_num_parameters_sums_every_shard_from_the_headers(tmp_path):
    """The one parameter counter (the run pipeline's baseline and this CLI): tied weights stored once."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_tiny_llama(tie_word_embeddings=True)).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert measured.num_parameters(tmp_path) == sum(p.numel() for p in model.parameters())


def test_cli_quantized_checkpoint_counts_from_config(tmp_path, capsys):
    """Packed quantized tensors don't count parameters: the dense estimate is used instead."""
    from transformers import LlamaForCausalLM

    config = _tiny_llama()
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["quantization_config"] = {"quant_method": "compressed-tensors"}
    (tmp_path / "config.json").write_text(json.dumps(saved))

    assert main(["model=" + str(tmp_path), "context=1024", "params=1e5"]) == 0
    assert "parameters 100,000 (params=)" in capsys.readouterr().out
    assert main(["model=" + str(tmp_path), "context=1024"]) == 0
    out = capsys.readouterr().out
    assert f"parameters {estimate_num_parameters(saved):,} (estimated" in out
    assert _row(out, "checkpoint")


def test_cli_needs_context_when_config_has_none(tmp_path, capsys):
    config = _tiny_llama().to_dict()
    del config["max_position_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_:
        main(["model=" + str(tmp_path)])
    assert exit_.value.code == 2
    assert "no max_position_embeddings: pass context=<tokens>" in capsys.readouterr().err
    assert main(["model=" + str(tmp_path), "context=64"]) == 0
    out = capsys.readouterr().out
    assert "estimated from config" in out
    assert "checkpoint" not in out  # no safetensors, no measured row


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model=granite_3.2_8b_instruct", "foo=1"], "unknown key 'foo': accepted keys are model"),
        (["model=granite_3.2_8b_instruct", "context=-5"], "context must be a positive"),
        (["model=granite_3.2_8b_instruct", "context=0"], "number of tokens, got 0"),
        (["model=granite_3.2_8b_instruct", "context=abc"], "context='abc' is not a valid int"),
        (["granite_3.2_8b_instruct"], "is not key=value"),
        (["context=1024"], "model= is required"),
        (["model=a", "model=b"], "model= given twice"),
        (["model=smollm2_135m"], "smollm2_135m.yaml has no architecture: block"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("quantsweep size: error: ") and message in captured.err
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1


def test_cli_offline_hub_id_says_what_to_pass():
    """Through `python -m quantsweep size`, as users run it; HF_HUB_OFFLINE makes it fail fast."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", "quantsweep", "size", "model=no-such-org/no-such-model"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "from the Hugging Face hub" in proc.stderr
    assert "granite_3.2_8b_instruct" in proc.stderr  # the conf/model names usable instead
