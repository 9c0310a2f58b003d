"""A real quantsweep sweep through run.py against the seed's manual workflow on the same host.

On the GPU host (no network; see ../shared/gpu/README.md), from the project root:

    . .gpu/install.sh && python bench/sweep_vs_seed.py --shape tinyllama --stages sweep,seed --out $OUT

There, models are built with random weights of real shapes (timing does not depend on the values) and a
BPE tokenizer trained on the HellaSwag text. Points: W4A16 RTN, W4A16 GPTQ, W8A8, FP8_dynamic, NVFP4;
HellaSwag 5-shot, 250 items, from the shared file. On a CPU host, with a real model:

    .venv/bin/python bench/sweep_vs_seed.py --shape smollm2 \
        --model-dir ~/.cache/quantsweep/models/SmolLM2-135M-Instruct.Q4_1 \
        --points W8A8,FP8_dynamic,NVFP4A16,MXFP4A16 --limit 40 --fewshot 0 --data FILE

Writes `<shape>.json` (and the logs of every process) to --out.
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/qsbench")
SHAPES: dict[str, dict[str, Any]] = {
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "llama8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192),
}  # fmt: skip
# quantsweep scheme config → (seed's preset, GPTQ?, needs calibration data?)
POINTS = {
    "W4A16": ("W4A16", False, False),
    "W4A16_GPTQ": ("W4A16", True, True),
    "W8A8": ("W8A8", False, False),
    "FP8_dynamic": ("FP8_DYNAMIC", False, False),
    "NVFP4": ("NVFP4", False, True),
    "NVFP4A16": ("NVFP4A16", False, False),
    "MXFP4A16": ("MXFP4A16", False, False),
}
DEFAULT_POINTS = "W4A16,W4A16_GPTQ,W8A8,FP8_dynamic,NVFP4"


def build(shape: str, data: Path) -> Path:
    """Random bf16 weights of the shape, written like a downloaded checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = WORK / "models" / shape
    if (path / "config.json").exists():
        return path
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    with bz2.open(data, "rt") as f:
        text = f.read().splitlines()
    tok.train_from_iterator(
        text, trainers.BpeTrainer(vocab_size=32000, special_tokens=["<unk>", "<s>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    config = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=2, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def timed(cmd: list[str], log: Path, budget_s: float | None = None, env: dict | None = None) -> float:
    """Wall seconds of one fresh process (with `env` over this one's); past `budget_s` its whole process
    group is stopped, the sweep's workers too (what it logged stays)."""
    start = time.perf_counter()
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=os.environ | (env or {}),
            start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait()
            print(f"  stopped after the {budget_s:.0f}s budget: {' '.join(cmd[:6])}...")
        seconds = time.perf_counter() - start
        out.write(f"# {seconds:.2f}s exit {code}\n")
    if code != 0:
        print(f"  exit {code} after {seconds:.1f}s: {' '.join(cmd[:6])}... (see {log.name})")
    return seconds


def eval_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "eval=hellaswag_file", f"eval.data_path={args.data}",
        f"eval.num_fewshot={args.fewshot}", f"eval.limit={args.limit}",
    ]  # fmt: skip


def sweep(
    shape: str, model: Path, out: Path, args: argparse.Namespace,
    name: str = "", extra: tuple[str, ...] = (), env: dict | None = None,
) -> dict:  # fmt: skip
    """The real thing: `run.py -m` over the points; per-point figures read back from MLflow. `name` keeps
    a measurement's store, checkpoints and cache apart from another's (nothing reused); `extra` overrides."""
    import mlflow

    work = WORK / (name or shape)
    store = work / "mlruns"
    cmd = [
        sys.executable, "run.py", "-m", "model=custom", f"model.source={model}", f"model.name={shape}",
        "scheme=" + ",".join(args.points), "calibration=hellaswag_file",
        f"calibration.dataset={args.data}", *eval_overrides(args), f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_location={store}/artifacts", f"output_dir={work}/checkpoints",
        f"cache_dir={work if name else WORK}/cache", f"hydra.sweep.dir={work}/multirun", *extra,
    ]  # fmt: skip
    seconds = timed(cmd, out / f"{name or shape}-sweep.log", args.budget_s, env)
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    assert exp is not None, f"no MLflow experiment in {store}: see the sweep's log"
    rows = []
    for run in mlflow.search_runs([exp.experiment_id], output_format="list"):
        m, tags = run.data.metrics, run.data.tags
        if tags.get("quantsweep.role") not in ("baseline", "point"):
            continue
        gpu = tags.get("cuda_visible_devices", "")
        span = {"start_ms": run.info.start_time, "end_ms": run.info.end_time}
        rows.append({"run": run.info.run_name, "status": run.info.status, "gpu": gpu, **span,
                     **{k: m[k] for k in sorted(m)}})  # fmt: skip
    return {"wall_s": seconds, "split": split(rows, seconds), "runs": rows}


def split(rows: list[dict], wall_s: float) -> dict[str, float]:
    """Wall time as baseline, quantize, evaluate, and overhead: everything that is none of those."""

    def total(keys: tuple[str, ...], baseline: bool) -> float:
        picked = [r for r in rows if r["run"].endswith("/baseline") == baseline]
        return sum(r.get(k, 0.0) for r in picked for k in keys)

    parts = {
        "baseline_s": total(("time_total_s",), True),
        "quantize_s": total(
            ("time_load_s", "time_calibration_data_s", "time_quantize_s", "time_save_s"), False
        ),
        "evaluate_s": total(("time_eval_load_s", "time_eval_s"), False),
    }
    parts["overhead_s"] = wall_s - sum(parts.values())
    parts["overhead_pct"] = 100 * parts["overhead_s"] / wall_s
    return parts


def seed_way(shape: str, model: Path, out: Path, args: argparse.Namespace) -> dict:
    """One quantize.py process per point, then lm-eval's CLI for the baseline and the quantized model."""
    import torch
    from omegaconf import OmegaConf

    from quantsweep.evaluation.harness import include_dir

    cfg = OmegaConf.create({"tasks": ["hellaswag_file"], "data_path": str(args.data)})
    include = include_dir(cfg, WORK / "cache")
    log = out / f"{shape}-seed.log"
    gpu = torch.cuda.is_available()
    lm_eval = [
        sys.executable, "-m", "lm_eval", "--model", "hf", "--tasks", "hellaswag_file", "--include_path",
        str(include), "--num_fewshot", str(args.fewshot), "--limit", str(args.limit),
        "--batch_size", "auto" if gpu else "8", "--device", "cuda:0" if gpu else "cpu",
    ]  # fmt: skip
    dtype = "bfloat16" if gpu else "float32"
    points, total = [], 0.0
    for name in args.points:
        preset, gptq, data = POINTS[name]
        if args.budget_s is not None and total > args.budget_s:
            break
        target = WORK / shape / "seed" / name
        cmd = [sys.executable, "bench/seed_quantize.py", str(model), str(target), "--scheme", preset]
        cmd += (["--gptq"] if gptq else []) + (["--calibration", str(args.data)] if data else [])
        quantize_s = timed(cmd, log)
        baseline_s = timed([*lm_eval, "--model_args", f"pretrained={model},dtype={dtype}"], log)
        quantized_s = timed([*lm_eval, "--model_args", f"pretrained={target},dtype={dtype}"], log)
        points.append({"point": name, "quantize_s": quantize_s, "baseline_eval_s": baseline_s,
                       "quantized_eval_s": quantized_s})  # fmt: skip
        total += quantize_s + baseline_s + quantized_s
    return {"wall_s": total, "points": points}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", required=True, help=f"one of {sorted(SHAPES)} to build, or a name")
    parser.add_argument("--model-dir", type=Path, help="an existing checkpoint instead of building --shape")
    parser.add_argument("--stages", default="sweep,seed", help="sweep, seed; build alone only builds")
    parser.add_argument("--points", default=DEFAULT_POINTS, type=lambda s: s.split(","))
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu" / "data" / "hellaswag_val_full.txt.bz2")
    parser.add_argument("--limit", type=int, default=250)
    parser.add_argument("--fewshot", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    parser.add_argument("--budget-s", type=float, default=None, help="stop the sweep stage after this long")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"
    result: dict = {"shape": args.shape, "device": device, "date": time.strftime("%F"), "args": sys.argv[1:]}
    start = time.perf_counter()
    model = args.model_dir.expanduser() if args.model_dir else build(args.shape, args.data)
    result["build_s"] = time.perf_counter() - start
    print(f"built {args.shape} in {result['build_s']:.1f}s")
    for stage, run in (("sweep", sweep), ("seed", seed_way)):
        if stage in stages:
            result[stage] = run(args.shape, model, args.out, args)
            print(f"{stage}: {result[stage]['wall_s']:.1f}s", flush=True)
            # written after each stage, so a run cut off by the time limit still returns what it measured
            (args.out / f"{args.shape}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
