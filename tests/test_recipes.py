"""Schemes → llm-compressor modifiers: every shipped scheme config builds, and knows whether it needs data."""

from __future__ import annotations

import pytest
from conftest import CONF, compose

from quantsweep import recipes
from quantsweep.config import IgnoreConfig, SchemeConfig

SCHEMES = sorted(p.stem for p in (CONF / "scheme").glob("*.yaml"))


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


def test_kv_cache_fp8_needs_data_and_adds_a_kv_scheme():
    scheme = SchemeConfig(name="x", preset="FP8_DYNAMIC", kv_cache_fp8=True)
    assert recipes.needs_calibration(scheme)
    (modifier,) = recipes.build_recipe(scheme, [])
    assert modifier.kv_cache_scheme.num_bits == 8 and not modifier.kv_cache_scheme.dynamic


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
