"""Load one checkpoint with vLLM and generate greedily from a fixed prompt: does it deploy, how fast does it
load and generate, and how many tokens of KV cache does vLLM give it.

Runs inside the vLLM environment (`make vllm-env`), not quantsweep's, so it imports only vLLM and the
standard library:

    <vllm python> vllm_probe.py CHECKPOINT OUT.json [--max-model-len N] [--tokens N] [--dtype D]

It always writes OUT.json: {"vllm_loads": 1|0, "load_s", "gen_tokens", "gen_s", "gen_tokens_per_s",
"kv_cache_tokens", "max_concurrency", "max_model_len", "vllm_version", "error"} (nulls where not measured;
"error" is one line). `quantsweep.evaluation.deploy.check` runs it and reads that file.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

PROMPT = "The history of the city begins with a small village by the river, where"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:400]


def probe(checkpoint: str, max_model_len: int | None, tokens: int, dtype: str) -> dict[str, Any]:
    """Everything measured before a failure is kept; `error` names the step that failed."""
    result: dict[str, Any] = {"vllm_loads": 0, "error": None}
    try:
        import vllm
        from vllm import LLM, SamplingParams

        result["vllm_version"] = vllm.__version__
        start = time.perf_counter()
        llm = LLM(model=checkpoint, max_model_len=max_model_len, dtype=dtype, seed=0)
        result["load_s"] = time.perf_counter() - start
        result["vllm_loads"] = 1
    except Exception as exc:  # the reason a checkpoint does not deploy is the result, not a crash
        result["error"] = one_line(exc)
        return result
    cache = llm.llm_engine.vllm_config.cache_config
    result["max_model_len"] = llm.llm_engine.model_config.max_model_len
    # What vLLM logs as "KV cache size: N tokens, Maximum concurrency for L tokens per request: Cx".
    result["kv_cache_tokens"] = cache.kv_cache_size_tokens
    if result["kv_cache_tokens"] is None and cache.num_gpu_blocks:
        result["kv_cache_tokens"] = cache.num_gpu_blocks * cache.block_size
    result["max_concurrency"] = cache.kv_cache_max_concurrency
    if result["max_concurrency"] is None and result["kv_cache_tokens"]:
        result["max_concurrency"] = result["kv_cache_tokens"] / result["max_model_len"]
    try:
        # ignore_eos: a fixed number of tokens whatever the weights say; a short run first warms up.
        llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True), use_tqdm=False)
        params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        start = time.perf_counter()
        (output,) = llm.generate([PROMPT], params, use_tqdm=False)
        result["gen_s"] = time.perf_counter() - start
        result["gen_tokens"] = len(output.outputs[0].token_ids)
        result["gen_tokens_per_s"] = result["gen_tokens"] / result["gen_s"]
    except Exception as exc:
        result["error"] = "generation failed: " + one_line(exc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's context")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate for the speed")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    result = probe(args.checkpoint, args.max_model_len, args.tokens, args.dtype)
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which re-imports this module
    main()
