"""Schemes → llm-compressor modifiers: every shipped scheme config builds, and knows whether it needs data."""

from __future__ import annotations

import pytest
from conftest import CONF, compose

from quantsweep import recipes
from quantsweep.config import IgnoreConfig, SchemeConfig

# scheme=dense quantizes nothing: its recipe is a sparsity's alone (tests/test_sparsity.py).
SCHEMES = sorted(p.stem for p in (CONF / "scheme").glob("*.yaml") if p.stem != "dense")


@pytest.mark.parametrize("name", SCHEMES)
def test_every_scheme_config_composes_and_builds_a_recipe(name):
    scheme = compose([f"scheme={name}"]).scheme
    modifiers = recipes.build_recipe(scheme, ["lm_head"])
    assert type(modifiers[-1]).__name__ in {"QuantizationModifier", "GPTQModifier"}
    assert modifiers[-1].ignore == ["lm_head"]


@pytest.mark.parametrize(
    ("preset", "algorithm", "needed"),
    [
        ("W8A8", "RTN", False),  # dynamic per-token activations
        ("FP8_DYNAMIC", "RTN", False),
        ("W4A16", "RTN", False),
        ("FP8", "RTN", True),  # static activation scales
        ("NVFP4", "RTN", True),  # calibrated global activation scale
        ("W4A16", "GPTQ", True),
        ("W8A8", "SMOOTHQUANT_GPTQ", True),
    ],
)
def test_needs_calibration(preset, algorithm, needed):
    assert recipes.needs_calibration(SchemeConfig(name=preset, preset=preset, algorithm=algorithm)) is needed


@pytest.mark.parametrize(("kv", "strategy"), [("fp8", "tensor"), ("fp8_head", "attn_head")])
def test_kv_cache_fp8_needs_data_and_adds_a_kv_scheme(kv, strategy):
    scheme = SchemeConfig(name="x", preset="FP8_DYNAMIC", kv_cache=kv)
    assert recipes.needs_calibration(scheme)
    (modifier,) = recipes.build_recipe(scheme, [])
    assert modifier.kv_cache_scheme.num_bits == 8 and not modifier.kv_cache_scheme.dynamic
    assert modifier.kv_cache_scheme.strategy == strategy and modifier.kv_cache_scheme.type == "float"


def test_group_size_override_reaches_the_weights():
    groups = recipes.config_groups(SchemeConfig(name="x", preset="W4A16", group_size=64))
    assert groups["group_0"].weights.group_size == 64 and groups["group_0"].targets == ["Linear"]


def test_layer_overrides_become_config_groups_and_bf16_joins_ignore():
    scheme = SchemeConfig(
        name="x", preset="W4A16", layer_overrides={r"re:.*down_proj": "W8A16", r"re:.*layers\.0\..*": "bf16"}
    )
    groups = recipes.config_groups(scheme)
    assert [g.targets for g in groups.values()] == [["Linear"], [r"re:.*down_proj"]]
    assert groups["group_1"].weights.num_bits == 8
    ignore = recipes.ignore_list(IgnoreConfig(name="i", patterns=["lm_head"]), scheme, num_layers=4)
    assert ignore == ["lm_head", r"re:.*layers\.0\..*"]


def test_first_and_last_layers_are_expanded_for_the_model_depth():
    ignore = IgnoreConfig(name="i", patterns=["lm_head"], keep_first_last_layers=True)
    patterns = recipes.ignore_list(ignore, SchemeConfig(name="x", preset="W8A8"), num_layers=30)
    assert patterns == ["lm_head", r"re:.*layers\.0\..*", r"re:.*layers\.29\..*"]


def test_weight_bits():
    assert recipes.weight_bits("W4A16") == 4 and recipes.weight_bits("FP8_DYNAMIC") == 8


@pytest.mark.parametrize(
    ("preset", "size"),
    [("W4A16", 128), ("W8A16", 128), ("W4AFP8", 128), ("MXFP4", 32), ("NVFP4", 16), ("FP8_BLOCK", 128)]
    + [(p, None) for p in ("W8A8", "FP8_DYNAMIC", "FP8")],
)
def test_preset_group_size(preset, size):
    assert recipes.preset_group_size(preset) == size


def test_group_size_sizes_group_wise_groups_only():
    # A channel-wise preset takes no group size: its recipe is the preset's, whatever scheme.group_size says.
    (fp8,) = recipes.config_groups(SchemeConfig(name="x", preset="FP8_DYNAMIC", group_size=64)).values()
    assert fp8.weights.strategy == "channel" and fp8.weights.group_size is None
    overrides = {"re:.*down_proj": "W8A16", "re:.*up_proj": "W4A16", "re:.*q_proj": "W8A8"}
    scheme = SchemeConfig(name="x", preset="W4A16", group_size=64, layer_overrides=overrides)
    assert recipes.group_size_targets(scheme) == {"Linear", "re:.*up_proj"}
    sizes = {g.targets[0]: g.weights.group_size for g in recipes.config_groups(scheme).values()}
    # the main preset's groups are sized; another group-wise preset keeps its own 128; W8A8 has no groups
    assert sizes == {"Linear": 64, "re:.*down_proj": 128, "re:.*up_proj": 64, "re:.*q_proj": None}


def test_group_size_resizes_blocks_and_activation_groups_together():
    (block,) = recipes.config_groups(SchemeConfig(name="x", preset="FP8_BLOCK", group_size=64)).values()
    assert block.weights.block_structure == [64, 64] and block.input_activations.group_size == 64
    (nvfp4,) = recipes.config_groups(SchemeConfig(name="x", preset="NVFP4", group_size=32)).values()
    assert nvfp4.weights.group_size == 32 and nvfp4.input_activations.group_size == 32
