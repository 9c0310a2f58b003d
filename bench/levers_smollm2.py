"""SmolLM2-135M-Instruct with the seed's other levers: 2:4 sparsity (alone, with FP8_dynamic, with W4A16) and
an FP8 KV cache with W4A16, against plain W4A16, on HellaSwag from the shared file (250 items). Each row has
its size figures (as saved, what a 2:4 runtime would need, KV cache per token and at the model's context),
its recovery ± paired stderr and its times, and, for the sparse points, whether vLLM (the CPU build here)
loads and runs the checkpoint.

    .venv/bin/python bench/levers_smollm2.py --out bench-out/levers [--fewshot 5] [--dtype bfloat16]

Two real sweeps through run.py -m into one MLflow store (--work; the baseline is evaluated once), then the
runs are read back; writes levers_smollm2.json and levers_smollm2.md to --out, and each sweep's output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import HELLASWAG, machine, run_sweep

from quantsweep.tables import pm

# The two sweeps: 2:4 with each scheme it composes with (the deployability probe on), and W4A16 with and
# without an FP8 KV cache. Every point calibrates on HellaSwag contexts past the evaluated items.
SWEEPS = {
    "sparsity": ["sparsity=2of4", "scheme=dense,FP8_dynamic,W4A16", "deploy_check=true"],
    "kv_cache": ["scheme=W4A16", "scheme.kv_cache=none,fp8", "deploy_check=false"],
}


def sweep(name: str, extra: list[str], work: Path, args: argparse.Namespace) -> float:
    overrides = [
        *extra,
        "calibration=hellaswag_file",
        "eval=hellaswag_file",
        f"eval.num_fewshot={args.fewshot}",
        f"eval.limit={args.limit}",
        f"eval.dtype={args.dtype}",
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_location={work}/artifacts",
        f"output_dir={work}/checkpoints",
        f"hydra.sweep.dir={work}/multirun-{name}",
    ]
    return run_sweep(overrides, args.out / f"{name}.log", args.hellaswag)[0]


METRICS = (
    "disk_gib",
    "sparse_runtime_gib",
    "sparsity_zero_fraction",
    "sparsity_pattern_fraction",
    "weights_vram_est_gib",
    "kv_cache_bytes_per_token",
    "kv_cache_gib_max_context",
    "accuracy",
    "accuracy_stderr",
    "recovery",
    "recovery_stderr",
    "time_quantize_s",
    "time_eval_s",
    "vllm_loads",
    "vllm_gen_tokens_per_s",
)


def _settings(params: dict[str, str]) -> tuple[float, int, str]:
    """The evaluation settings a run was scored under, as this script sets them."""
    limit = float(params.get("eval.limit", "nan"))
    return limit, int(params.get("eval.num_fewshot", -1)), params.get("eval.dtype", "auto")


def rows(work: Path, fewshot: int, limit: int, dtype: str) -> list[dict[str, Any]]:
    """Baseline first, then the points in the order they ran; only the runs of these evaluation settings (a
    store kept from a smaller try holds others, whose checkpoints this run reused)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    runs = mlflow.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", output_format="list")
    settings = (float(limit), fewshot, dtype)
    runs = [r for r in runs if _settings(r.data.params) == settings]
    found = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        tags = run.data.tags
        role = tags.get("quantsweep.role")
        if role not in ("baseline", "point"):
            continue
        row: dict[str, Any] = {"run": "baseline" if role == "baseline" else run.info.run_name}
        row |= {name: run.data.metrics.get(name) for name in METRICS}
        row["kv_cache_applied"] = tags.get("quantsweep.kv_cache_applied")
        row["vllm_error"] = tags.get("quantsweep.vllm_error")
        row["run_id"] = run.info.run_id
        found.append(row)
    return found


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(found: list[dict[str, Any]]) -> str:
    head = (
        "| run | disk GiB | 2:4 runtime GiB | zeros | 2:4 groups | KV KiB/token | KV GiB at context "
        "| KV applied | acc_norm | recovery | quantize s | eval s | vLLM |\n"
        "| --- | --: | --: | --: | --: | --: | --: | --- | --: | --: | --: | --: | --- |"
    )
    lines = [head]
    for r in found:
        vllm = {None: "-", 1.0: "loads", 0.0: f"no: {r['vllm_error']}"}.get(r["vllm_loads"], "-")
        per_token = r["kv_cache_bytes_per_token"]
        cells = [
            r["run"],
            _num(r["disk_gib"], ".3f"),
            _num(r["sparse_runtime_gib"], ".3f"),
            pm(r["sparsity_zero_fraction"], None, 1, 100, "%"),
            pm(r["sparsity_pattern_fraction"], None, 1, 100, "%"),
            "-" if per_token is None else f"{per_token / 1024:.1f}",
            _num(r["kv_cache_gib_max_context"], ".3f"),
            r["kv_cache_applied"] or "-",
            pm(r["accuracy"], r["accuracy_stderr"], 3),
            "100%" if r["run"] == "baseline" else pm(r["recovery"], r["recovery_stderr"], 1, 100, "%"),
            _num(r["time_quantize_s"], ".1f"),
            _num(r["time_eval_s"], ".0f"),
            vllm,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qsbench-levers"))
    parser.add_argument("--hellaswag", type=Path, default=HELLASWAG)
    parser.add_argument("--fewshot", type=int, default=5)
    parser.add_argument("--limit", type=int, default=250)
    parser.add_argument("--dtype", default="auto", help="eval.dtype (bfloat16: SmolLM2's own, faster on CPU)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    walls = {name: sweep(name, extra, args.work, args) for name, extra in SWEEPS.items()}
    found = rows(args.work, args.fewshot, args.limit, args.dtype)
    settings = {
        "fewshot": args.fewshot,
        "limit": args.limit,
        "dtype": args.dtype,
        "hellaswag": str(args.hellaswag),
    }
    report = {"walls_s": walls, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "settings": settings}
    (args.out / "levers_smollm2.json").write_text(json.dumps(report | {"rows": found}, indent=2))
    (args.out / "levers_smollm2.md").write_text(markdown(found))
    print(markdown(found), "\n", {k: f"{v:.0f} s" for k, v in walls.items()}, sep="")


if __name__ == "__main__":
    main()
