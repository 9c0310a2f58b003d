"""The checkpoint size predicted from a model's config alone (what the search orders its candidates by)
against real llm-compressor checkpoints of a tiny Llama: RTN, several formats, per-layer-group precision."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import build_tiny_llama

from quantsweep import recipes, validate
from quantsweep.config import IgnoreConfig, SchemeConfig
from quantsweep.quantize import quantize
from quantsweep.sizing import measured, predicted

CASES = [
    ("W4A16", 64, {}),
    ("W4A16", 32, {}),
    ("W4A16_ASYM", 64, {}),
    ("W8A16", 64, {}),
    ("W8A8", None, {}),
    ("FP8_dynamic", None, {}),
    ("NVFP4A16", None, {}),
    ("MXFP4A16", None, {}),
    ("FP8_BLOCK", None, {}),
    ("W4A16", 64, {"re:.*down_proj": "W8A8"}),
    ("W4A16", 64, {"re:.*self_attn.*": "bf16"}),
]


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model_dir(request, tmp_path_factory) -> Path:
    """Hidden 256 (so FP8_BLOCK's 128×128 blocks fit); tied input and output embeddings, or not."""
    return build_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", hidden=256, tie=request.param)


def test_predicted_size_matches_the_checkpoint_and_orders_like_it(model_dir, tmp_path):
    meta = validate.meta_model(str(model_dir))
    predicted_sizes, measured_sizes = [], []
    for i, (preset, group, overrides) in enumerate(CASES):
        scheme = SchemeConfig(preset=preset, group_size=group, layer_overrides=overrides)
        ignore = recipes.ignore_list(IgnoreConfig(patterns=["lm_head"]), scheme, num_layers=2)
        out = quantize(str(model_dir), recipes.build_recipe(scheme, ignore), tmp_path / str(i), None, 0)
        predicted_sizes.append(predicted.disk_bytes(meta, predicted.quantized_layers(meta, scheme, ignore)))
        measured_sizes.append(measured.disk_bytes(out.checkpoint))
        assert predicted_sizes[-1] == pytest.approx(measured_sizes[-1], rel=2e-3), (preset, group, overrides)
    # Distinct sizes keep their order (ties in measurement may break either way in prediction).
    pairs = [(p, m) for p, m in zip(predicted_sizes, measured_sizes, strict=True)]
    for a in pairs:
        for b in pairs:
            if a[1] < b[1] * 0.99:
                assert a[0] < b[0]
