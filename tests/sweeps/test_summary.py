"""The summary's line on how a baseline was evaluated, from the params a run logs."""

from __future__ import annotations

from quantsweep.sweeps import summary
from quantsweep.tracking import DATA_SOURCE


def params(backend: str | None) -> dict[str, str]:
    logged = {"eval.tasks": '["hellaswag_file"]', "eval.num_fewshot": "0", "eval.limit": "250.0"}
    return logged | ({"eval.backend": backend} if backend else {})


def test_the_two_baselines_of_a_sweep_over_backends_are_told_apart():
    tags = {DATA_SOURCE: "file:/data/hs.jsonl sha256:abc"}
    hf, vllm = summary.eval_line(params("hf"), tags), summary.eval_line(params("vllm"), tags)
    assert hf == "hellaswag_file, 0-shot, 250 items, from file:/data/hs.jsonl sha256:abc"
    assert vllm == "hellaswag_file, 0-shot, 250 items, vllm backend, from file:/data/hs.jsonl sha256:abc"
    # Runs logged before eval.backend existed were scored by HF.
    assert summary.eval_line(params(None), {}) == "hellaswag_file, 0-shot, 250 items"
