"""Quantizing under `quantize.max_gpu_memory_gib` (issue 16), the memory-to-quantize formulas, and the
per-card peak (issue 18). Real llm-compressor on the tiny model; the CUDA-only tests run on a GPU host."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from quantsweep import point, recipes
from quantsweep.devices import Peak, cap_fraction, memory_cap, peak_memory
from quantsweep.errors import ConfigError
from quantsweep.quantize import quantize
from quantsweep.sizing.cli import CONF_DIR, main
from quantsweep.sizing.quantize_memory import (
    DecoderShape,
    gptq_work_bytes,
    gptq_work_per_linear,
    quantize_memory,
)
from quantsweep.tables import GIB

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPTQ = ("scheme=W4A16", "scheme.algorithm=GPTQ", "scheme.group_size=64")


def _meta_llama(tiny_model: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    with torch.device("meta"):
        return config, AutoModelForCausalLM.from_config(config)


def test_formulas_match_a_count_of_the_tiny_models_modules(tiny_model):
    """Hessians, one layer's weights, the model and GPTQ's batches, counted on the module tree instead."""
    config, model = _meta_llama(tiny_model)
    shape = DecoderShape.from_hf_config(config.to_dict())
    memory = quantize_memory(shape, num_samples=8, seq_len=64)
    layer = model.model.layers[0]
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    assert memory.hessians == sum(4 * m.in_features**2 for m in linears)
    assert memory.layer_weights == 2 * sum(p.numel() for p in layer.parameters())  # saved in bf16
    assert memory.model == 2 * sum(p.numel() for p in model.parameters())
    largest = max(m.weight.numel() for m in linears)
    assert (memory.rtn_onloaded, memory.rtn_whole) == (6 * largest, memory.model + 4 * largest)
    # llm-compressor batches Linears whose weights have one shape: the largest batch's working memory
    same_shape = Counter(tuple(m.weight.shape) for m in linears)
    assert memory.gptq_work == max(n * gptq_work_per_linear(*s) for s, n in same_shape.items())
    whole = memory.model + memory.hessians + memory.gptq_work + memory.activations
    layer_peak = memory.layer_weights + memory.hessians + memory.gptq_work + memory.activations
    assert memory.gptq_whole == whole
    assert memory.gptq_sequential == max(layer_peak, 2 * (config.vocab_size + 64) * config.hidden_size)
    assert memory.sequential_floor == memory.layer_weights + memory.hessians + memory.activations
    assert memory.cpu_cache == 8 * 2 * 64 * (config.hidden_size + 64 + 2 * 48)  # head_dim 192 / 4


def test_llama_8b_by_hand():
    """Llama-3.1-8B: Hessians 4 x (5 x 4096² + 4096² + 14336²) B; down_proj (4096 x 14336) is GPTQ's
    largest batch, with activation ordering's 3 x in² + 2 x out x in elements."""
    arch = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model/llama3.1_8b_instruct.yaml"))[
        "architecture"
    ]
    shape = DecoderShape.from_hf_config(arch)  # type: ignore[arg-type]
    memory = quantize_memory(shape, num_samples=64, seq_len=512)
    assert memory.hessians == 4 * (6 * 4096**2 + 14336**2)
    assert memory.gptq_work == 4 * (3 * 14336**2 + 2 * 4096 * 14336)
    assert gptq_work_bytes([(4096, 4096)] * 2) == 2 * 4 * (3 * 4096**2 + 2 * 4096**2)
    assert memory.layer_weights == 2 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096 + 2 * 4096)
    assert memory.model == 2 * 8_030_261_248  # Llama-3.1-8B's parameter count
    assert memory.sequential_floor < memory.gptq_sequential < 10 * GIB < memory.gptq_whole


def test_sizing_cli_prints_memory_to_quantize(capsys):
    assert main(["model=llama3.1_8b_instruct", "calib_samples=64", "calib_seq_len=512"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory to quantize (GiB; calibration 64 samples x 512 tokens):" in out
    line = next(row for row in out.splitlines() if "GPTQ, sequential onloading" in row)
    arch = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model/llama3.1_8b_instruct.yaml"))[
        "architecture"
    ]
    expected = quantize_memory(DecoderShape.from_hf_config(arch), 64, 512).gptq_sequential  # type: ignore[arg-type]
    assert line.split()[-1] == f"{expected / GIB:.2f}"


def test_gptq_under_a_cap_goes_sequential_and_writes_the_same_checkpoint(make_cfg, tmp_path, capfd):
    """With the cap the model is loaded on the CPU; llm-compressor's sequential pipeline calibrates it a
    subgraph at a time (the embeddings, then each of the 2 layers: its progress bars say so) and the
    checkpoint is the uncapped one's (on CPU, byte for byte: the same arithmetic on the same device)."""
    outputs: dict[str, Path] = {}
    for name, cap in (("uncapped", None), ("capped", 1.0)):
        overrides = (*GPTQ, f"quantize.max_gpu_memory_gib={'null' if cap is None else cap}")
        cfg = make_cfg(*overrides, work=tmp_path / name)
        resolved = point.resolve(cfg)
        capfd.readouterr()
        result = quantize(
            resolved.source,
            recipes.build_recipe(resolved.scheme, resolved.ignore),
            tmp_path / name / "checkpoint",
            cfg.calibration,
            cfg.seed,
            max_gpu_memory_gib=cap,
        )
        out, err = capfd.readouterr()
        assert "(3/3): Calibrating" in err and "(3/3): Propagating" in err, name
        if cap is not None and not torch.cuda.is_available():
            assert "no CUDA GPU here; the model is quantized on the CPU as without a cap" in out + err
        if not torch.cuda.is_available():
            assert result.peak_memory_bytes is None and result.peak_memory_max_card_bytes is None
        outputs[name] = result.checkpoint
    configs = [json.loads((p / "config.json").read_text())["quantization_config"] for p in outputs.values()]
    assert configs[0] == configs[1]
    assert configs[0]["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    if not torch.cuda.is_available():
        weights = [(p / "model.safetensors").read_bytes() for p in outputs.values()]
        assert weights[0] == weights[1]


def test_the_cap_is_no_part_of_any_fingerprint(make_cfg, tmp_path):
    plain = point.resolve(make_cfg(*GPTQ, work=tmp_path))
    capped = point.resolve(make_cfg(*GPTQ, "quantize.max_gpu_memory_gib=2", work=tmp_path))
    assert (plain.fp, plain.checkpoint_fp) == (capped.fp, capped.checkpoint_fp)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (GPTQ, "quantize.max_gpu_memory_gib=0.0001 is below the 0.00"),
        (("scheme=W8A8",), "with RTN holds on the GPU at once, even onloading one layer at a time (no calib"),
    ],
)
def test_a_cap_too_small_for_one_layer_is_refused_before_work(make_cfg, tmp_path, overrides, message):
    cfg = make_cfg(*overrides, "quantize.max_gpu_memory_gib=0.0001")
    with pytest.raises(ConfigError, match=r"quantize\.max_gpu_memory_gib=0\.0001") as refused:
        point.resolve(cfg)
    assert message in str(refused.value)
    assert "set it to null" in str(refused.value)
    assert not (tmp_path / "checkpoints").exists()


def test_a_cap_that_is_no_size_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"quantize\.max_gpu_memory_gib=0\.0 must be positive"):
        point.resolve(make_cfg(*GPTQ, "quantize.max_gpu_memory_gib=0"))


def test_peak_over_several_cards_is_their_sum_and_largest():
    """Issue 18: a point on two cards reports what it took of both, not card 0's alone."""
    peak = Peak.from_cards([3 * GIB, 5 * GIB])
    assert (peak.bytes, peak.max_card, peak.per_card) == (8 * GIB, 5 * GIB, [3 * GIB, 5 * GIB])
    assert Peak.from_cards([7]).bytes == 7
    assert Peak.from_cards([]) == Peak()


def test_cap_fraction_of_a_card():
    assert cap_fraction(10, 140 * GIB) == pytest.approx(10 / 140)
    assert cap_fraction(200, 140 * GIB) is None  # the card is smaller than the cap: nothing to cap


@CUDA
def test_peak_memory_counts_every_card():
    cards = torch.cuda.device_count()
    with peak_memory("cuda") as peak:
        held = [torch.empty(256 * 2**20, dtype=torch.uint8, device=f"cuda:{i}") for i in range(cards)]
        del held
    assert len(peak.per_card) == cards
    assert all(b >= 256 * 2**20 for b in peak.per_card)
    assert peak.bytes == sum(peak.per_card)


@CUDA
def test_memory_cap_makes_exceeding_it_fail():
    with memory_cap(0.25), pytest.raises(torch.OutOfMemoryError):
        torch.empty(GIB, dtype=torch.uint8, device="cuda")
    torch.cuda.empty_cache()
    torch.empty(GIB, dtype=torch.uint8, device="cuda")  # restored afterwards


@CUDA
def test_quantization_peak_stays_under_the_cap(make_cfg, tmp_path):
    cap = 0.5
    cfg = make_cfg(*GPTQ, f"quantize.max_gpu_memory_gib={cap}")
    resolved = point.resolve(cfg)
    recipe = recipes.build_recipe(resolved.scheme, resolved.ignore)
    result = quantize(
        resolved.source, recipe, tmp_path / "ckpt", cfg.calibration, cfg.seed, max_gpu_memory_gib=cap
    )
    assert result.peak_memory_bytes is not None
    assert 0 < result.peak_memory_bytes <= cap * GIB


def test_a_capped_point_runs_end_to_end_and_records_the_cap(make_cfg):
    import mlflow

    from quantsweep import pipeline

    outcome = pipeline.run(make_cfg(*GPTQ, "quantize.max_gpu_memory_gib=1.5"))
    assert outcome.status == "FINISHED", outcome.error
    run = mlflow.get_run(outcome.run_id)
    assert run.data.params["quantize.max_gpu_memory_gib"] == "1.5"
    assert ("peak_gpu_mem_quantize_gib" in run.data.metrics) == torch.cuda.is_available()
    if torch.cuda.is_available():
        assert run.data.metrics["peak_gpu_mem_quantize_gib"] <= 1.5
