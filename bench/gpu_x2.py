"""Two GPUs of one host (issue 18), and the one-GPU sweep they are measured against (issue 16's "before").

On a host with 2 GPUs (../shared/gpu/README.md), from the project root:

    . .gpu/install.sh && python3 bench/gpu_x2.py --out $OUT
    . .gpu/install.sh && python3 bench/gpu_x2.py --out $OUT --stages big_two --big-points W4A16   # one part

Every measurement is a fresh `run.py -m` with its own MLflow store, checkpoints and cache (nothing reused),
HellaSwag 5-shot, 250 items from the shared file, models of real shapes with random weights
(bench/sweep_vs_seed.py builds them):

  tiny_one  the 1.1B shape, 5 points + baseline, on GPU 0 alone (CUDA_VISIBLE_DEVICES=0)
  tiny_two  the same sweep with both GPUs: the host launcher's two workers, each holding one card
  big_two   the 8B shape, W4A16 RTN and GPTQ + baseline, resources.gpus_per_point=2: each point on both cards
  big_one   the same on GPU 0 alone
  seed      the 1.1B points the seed's way on GPU 0 (sweep_vs_seed.py --stages seed), in the time left

While each runs, NVML is sampled every 0.2 s: per card, the most memory in use (CUDA contexts and the
caching allocator's reserve included, so above torch's max_memory_allocated) and the mean utilisation.
Writes gpu-tinyllama-sweep-one-gpu.json, gpu-x2-tinyllama-parallel.json and gpu-x2-llama8b-point.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_vs_seed as svs  # noqa: E402

TINY_POINTS = svs.DEFAULT_POINTS.split(",")
BIG_POINTS = ["W4A16", "W4A16_GPTQ"]
ON_GPU0 = {"CUDA_VISIBLE_DEVICES": "0"}
# The host has no vLLM environment (so no deploy check), as in the 2026-11-27 figures these compare with.
NO_VLLM = ("deploy_check=false",)
FILES = {
    "tiny": "gpu-tinyllama-sweep-one-gpu.json",
    "parallel": "gpu-x2-tinyllama-parallel.json",
    "big": "gpu-x2-llama8b-point.json",
}


@contextmanager
def cards(period_s: float = 0.2) -> Iterator[list[dict]]:
    """Per card, NVML's peak memory in use and mean utilisation over the block."""
    import pynvml

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    idle = [pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles]
    peak, util, samples = list(idle), [0] * len(handles), [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(period_s):
            samples[0] += 1
            for i, handle in enumerate(handles):
                peak[i] = max(peak[i], pynvml.nvmlDeviceGetMemoryInfo(handle).used)
                util[i] += pynvml.nvmlDeviceGetUtilizationRates(handle).gpu

    report: list[dict] = []
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield report
    finally:
        stop.set()
        thread.join()
        for i in range(len(handles)):
            report.append({
                "card": i, "idle_used_gib": idle[i] / 2**30, "peak_used_gib": peak[i] / 2**30,
                "mean_util_pct": util[i] / max(samples[0], 1),
            })  # fmt: skip


def measure(shape: str, model: Path, points: list[str], args: argparse.Namespace, name: str,
            budget_s: float, extra: tuple[str, ...] = (), env: dict | None = None) -> dict:  # fmt: skip
    """One sweep (sweep_vs_seed.sweep) under the NVML sampler."""
    run_args = argparse.Namespace(
        points=points, data=args.data, fewshot=args.fewshot, limit=args.limit, budget_s=budget_s
    )
    with cards() as use:
        result = svs.sweep(shape, model, args.out, run_args, name=name, extra=extra, env=env)
    gpus = {row["gpu"] for row in result["runs"]}
    print(f"{name}: {result['wall_s']:.1f}s, {len(result['runs'])} runs on CUDA_VISIBLE_DEVICES {gpus}")
    return {
        "name": name,
        "points": points,
        "overrides": list(extra),
        "env": env or {},
        **result,
        "cards": use,
    }


def clashes(runs: list[dict]) -> list[str]:
    """Runs that overlapped in time on a shared card (the tag names the worker's cards; none: all)."""
    found = []
    for a, b in combinations(runs, 2):
        shared = not a["gpu"] or not b["gpu"] or set(a["gpu"].split(",")) & set(b["gpu"].split(","))
        overlap = a["start_ms"] < (b["end_ms"] or 1e18) and b["start_ms"] < (a["end_ms"] or 1e18)
        if shared and overlap:
            found.append(f"{a['run']} and {b['run']} (cards {a['gpu'] or 'all'} / {b['gpu'] or 'all'})")
    return found


def build(shape: str, args: argparse.Namespace) -> tuple[Path, float]:
    """The model, built in a process of its own so this one holds no CUDA context during the sweeps."""
    cmd = [sys.executable, "bench/sweep_vs_seed.py", "--shape", shape, "--stages", "build"]
    seconds = svs.timed([*cmd, "--data", str(args.data), "--out", str(args.out)], args.out / "build.log")
    return svs.WORK / "models" / shape, seconds


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def host() -> dict:
    import pynvml

    pynvml.nvmlInit()
    names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
             for i in range(pynvml.nvmlDeviceGetCount())]  # fmt: skip
    packages = ("torch", "transformers", "llmcompressor", "compressed-tensors", "lm_eval", "mlflow-skinny")
    return {"date": time.strftime("%F"), "cards": names,
            "versions": {p: version(p) for p in packages}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stages", default="tiny_one,tiny_two,big_two,big_one,seed")
    parser.add_argument("--deadline-s", type=float, default=1350, help="skip or cut stages past this")
    parser.add_argument(
        "--data", type=Path, default=svs.ROOT / ".gpu" / "data" / "hellaswag_val_full.txt.bz2"
    )
    parser.add_argument("--limit", type=int, default=250)
    parser.add_argument("--fewshot", type=int, default=5)
    parser.add_argument("--big-points", default=",".join(BIG_POINTS), type=lambda s: s.split(","))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stages = args.stages.split(",")
    results: dict[str, dict] = {key: {**host(), "bench": "bench/gpu_x2.py"} for key in FILES}

    def left() -> float:
        return args.deadline_s - (time.perf_counter() - start)

    def save() -> None:
        for key, name in FILES.items():
            (args.out / name).write_text(json.dumps(results[key], indent=1))

    if any(stage.startswith("tiny") for stage in stages):
        tiny, results["tiny"]["build_s"] = build("tinyllama", args)
    for stage, budget in (("tiny_one", 300), ("tiny_two", 300), ("big_two", 420), ("big_one", 360)):
        if stage not in stages or left() < 90:
            print(f"{stage}: skipped, {left():.0f}s left")
            continue
        if stage.startswith("big") and "build_s" not in results["big"]:
            big, results["big"]["build_s"] = build("llama8b", args)
        on_one = stage.endswith("_one")
        shape, model, points = (
            ("llama8b", big, args.big_points) if stage.startswith("big") else ("tinyllama", tiny, TINY_POINTS)
        )
        extra = NO_VLLM + (("resources.gpus_per_point=2",) if stage == "big_two" else ())
        key = {"tiny_one": "tiny", "tiny_two": "parallel"}.get(stage, "big")
        try:
            result = measure(
                shape, model, points, args, stage, min(budget, left()), extra, ON_GPU0 if on_one else None
            )
        except Exception as exc:  # one stage's failure (in its log) leaves the others to run
            results[key][stage] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{stage}: {results[key][stage]['error']}")
            save()
            continue
        result["clashes"] = clashes(result["runs"])
        results[key][stage] = result
        if stage == "tiny_two" and "wall_s" in results["tiny"].get("tiny_one", {}):
            results["parallel"]["tiny_one_wall_s"] = one = results["tiny"]["tiny_one"]["wall_s"]
            results["parallel"]["throughput_x"] = one / result["wall_s"]
            print(f"tiny_two: {results['parallel']['throughput_x']:.2f}x the one-GPU sweep's throughput")
        save()
    if "seed" in stages and left() > 150:
        cmd = [sys.executable, "bench/sweep_vs_seed.py", "--shape", "tinyllama", "--stages", "seed"]
        cmd += ["--budget-s", str(left() - 120), "--data", str(args.data), "--out", str(args.out / "seed")]
        svs.timed(cmd, args.out / "seed.log", env=ON_GPU0)
        seed_json = args.out / "seed" / "tinyllama.json"
        if seed_json.exists():
            results["tiny"]["seed"] = json.loads(seed_json.read_text())["seed"]
        save()
    (args.out / "DONE").write_text(f"{time.perf_counter() - start:.1f}\n")


if __name__ == "__main__":
    main()
