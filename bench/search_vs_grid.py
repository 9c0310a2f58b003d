"""Does the Optuna search find the exhaustive grid's answer for less? Run both on one space and compare.

(a) the grid: every configuration, fully evaluated (`run.py -m`, the quantsweep_grid sweeper);
(b) one study per `--search SAMPLER:LOW[:FLOOR]` (default `smallest_first:25`; LOW items of the
    low-fidelity evaluation, or `none`; FLOOR, if given, replaces --floor for that study, and the grid's
    answer is read again at it, so one grid serves several floors): `sweep=search_smallest` narrowed to the
    same space.
Each gets its own MLflow store and checkpoint folder under --work, so none reuses another's points.
The grid's best is judged by the search's own rule (lower confidence bound of what the floor is on ≥ floor,
then smallest on disk), from its MLflow runs.

    .venv/bin/python bench/search_vs_grid.py docs/search_vs_grid.md --limit 100 --num-fewshot 0
    # smoke test on a small model and space:
    .venv/bin/python bench/search_vs_grid.py /tmp/b.md --work /tmp/b --schemes W4A16,W8A16 \\
        --ignores lm_head --layers none --override model=custom --override model.source=/path/to/tiny ...

Prints a Markdown table and writes it to the given path, with every grid point's numbers in a JSON file
beside it (`<out>.grid.json`); the logs of every run are kept under --work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from quantsweep.sweeps.search import decisions  # noqa: E402
from quantsweep.sweeps.search.decisions import TrialRecord  # noqa: E402
from quantsweep.sweeps.search.samplers import SAMPLERS  # noqa: E402

STUDY = "bench"


@dataclass
class Side:
    """One approach's bill and answer."""

    name: str
    seconds: float
    exit_code: int
    quantizations: int
    full_evaluations: int
    low_evaluations: int
    eval_seconds: float
    eval_tokens: float
    failed: int
    best: str
    best_bytes: float | None
    floor: float = 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="Markdown file to write the table to")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "search_vs_grid")
    p.add_argument("--limit", type=int, default=100, help="items per task of a full evaluation")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--floor", type=float, default=0.95)
    p.add_argument("--floor-on", default="recovery", choices=["recovery", "accuracy"])
    p.add_argument("--confidence", type=float, default=0.5, help="0.5 judges the point estimate")
    p.add_argument("--n-trials", type=int, default=12, help="configurations the search may evaluate")
    p.add_argument(
        "--search",
        action="append",
        type=variant,
        help="SAMPLER:LOW[:FLOOR], a study to run (repeatable): sampler, low-fidelity items or none, "
        "and its floor (default --floor)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schemes", default="W4A16,W4A16_ASYM,W8A16", help="schemes with weight groups")
    p.add_argument("--group-sizes", default="32,64")
    p.add_argument("--ignores", default="lm_head,lm_head_first_last,lm_head_attn")
    p.add_argument("--layers", default="none,down_proj_w8")
    p.add_argument("--algorithms", default="RTN", help="e.g. RTN,GPTQ (GPTQ calibrates on hellaswag_file)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra Hydra override for both runs (repeatable), e.g. model=custom",
    )
    return p.parse_args(argv)


def variant(text: str) -> tuple[str, int | None, float | None]:
    sampler, _, rest = text.partition(":")
    low, _, floor = rest.partition(":")
    if sampler not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return sampler, None if low in ("", "none") else int(low), float(floor) if floor else None


def space(args: argparse.Namespace) -> list[str]:
    """The swept keys as Hydra overrides; a single value is a fixed setting."""
    keys = {"scheme": args.schemes, "scheme.group_size": args.group_sizes, "ignore": args.ignores}
    keys["layers"] = args.layers
    keys["scheme.algorithm"] = args.algorithms
    return [f"{k}={v}" for k, v in keys.items()]


def size_of_space(args: argparse.Namespace) -> int:
    dims = (args.schemes, args.group_sizes, args.ignores, args.layers, args.algorithms)
    return math.prod(len(v.split(",")) for v in dims)


def common(args: argparse.Namespace, work: Path) -> list[str]:
    return [
        "eval=hellaswag_file",
        f"eval.limit={args.limit}",
        f"eval.num_fewshot={args.num_fewshot}",
        # GPTQ's calibration, offline; the search sweep selects it too, so both sides key checkpoints alike.
        "calibration=hellaswag_file",
        f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db",
        f"tracking.artifact_location={work}/mlruns/artifacts",
        f"output_dir={work}/checkpoints",
        f"hydra.sweep.dir={work}/multirun",
        *args.override,
    ]


def launch(cmd: list[str], log: Path) -> tuple[float, int]:
    """Run one `run.py -m`, its output to a log file; returns (seconds, exit code)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"search_vs_grid: {' '.join(cmd[1:])}\n  log: {log}", file=sys.stderr, flush=True)
    env = os.environ | {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    return time.perf_counter() - start, code


def point_runs(work: Path) -> tuple[list[Any], list[Any]]:
    """(point runs, baseline runs) of the store under `work`."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []
    role = lambda r: r.data.tags.get("quantsweep.role")  # noqa: E731
    return [r for r in runs if role(r) == "point"], [r for r in runs if role(r) == "baseline"]


def label(params: dict[str, str]) -> str:
    """A configuration as the runs' params describe it: scheme, group, ignore list, layer overrides (one
    JSON param, or flattened keys when every target is a plain module name)."""
    overrides = json.loads(params.get("scheme.layer_overrides", "{}"))
    overrides |= {
        k.removeprefix("scheme.layer_overrides."): v for k, v in params.items() if "overrides." in k
    }
    text = (
        f"{params.get('scheme.name')} {params.get('scheme.algorithm')} g{params.get('scheme.group_size')} "
        f"ignore={params.get('ignore.name')}"
    )
    return text + "".join(f" {target}:{preset}" for target, preset in sorted(overrides.items()))


def bill(
    name: str, work: Path, seconds: float, code: int, full_limit: int
) -> tuple[Side, list[Any], list[Any]]:
    points, baselines = point_runs(work)
    quantized = [r for r in points if "time_quantize_s" in r.data.metrics]
    evaluated = [r for r in [*points, *baselines] if "time_eval_s" in r.data.metrics]
    evaluated_points = [r for r in points if "time_eval_s" in r.data.metrics]
    full = [r for r in evaluated_points if float(r.data.params["eval.limit"]) == full_limit]
    side = Side(
        name=name,
        seconds=seconds,
        exit_code=code,
        quantizations=len(quantized),
        full_evaluations=len(full),
        low_evaluations=len(evaluated_points) - len(full),
        eval_seconds=sum(r.data.metrics["time_eval_s"] for r in evaluated),
        eval_tokens=sum(r.data.metrics.get("eval_tokens", 0.0) for r in evaluated),
        failed=len([r for r in points if r.info.status == "FAILED"]),
        best="-",
        best_bytes=None,
    )
    return side, points, full


def grid_best(full: list[Any], args: argparse.Namespace, floor: float) -> tuple[str, float | None]:
    """The grid's answer by the search's rule: smallest on disk whose lower bound clears the floor."""
    z = decisions.z_value(args.confidence)
    feasible = []
    for r in full:
        if r.info.status != "FINISHED":
            continue
        b = decisions.bound(r.data.metrics, args.floor_on, z)
        if b is not None and b.lower >= floor:
            feasible.append((r.data.metrics["disk_bytes"], -b.lower, label(r.data.params), r))
    if not feasible:
        return "no configuration clears the floor", None
    size, _, text, _ = min(feasible, key=lambda f: f[:2])
    return text, size


def search_best(work: Path, points: list[Any]) -> tuple[str, float | None]:
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work}/optuna.db")
    records = [
        TrialRecord(**(t.user_attrs[decisions.RECORD] | {"number": t.number}))
        for t in study.trials
        if decisions.RECORD in t.user_attrs
    ]
    top = decisions.best(records)
    if top is None:
        return "no configuration clears the floor", None
    run = next(r for r in points if r.info.run_id == top.full_run_id)
    return label(run.data.params), top.disk_bytes


def table(
    grid: Side,
    studies: list[Side],
    answers: dict[float, tuple[str, float | None]],
    args: argparse.Namespace,
    configurations: int,
) -> str:
    """One column per approach; each study is judged against the grid's answer at the study's floor."""

    def mib(b: float | None) -> str:
        return "-" if b is None else f"{b / 2**20:.2f}"

    sides = [grid, *studies]
    rows = [
        ("floor", [f"{x.floor:g}" for x in sides]),
        ("best feasible configuration", [x.best for x in sides]),
        ("its size on disk (MiB)", [mib(x.best_bytes) for x in sides]),
        ("the grid's answer at this floor", ["-", *(answers[x.floor][0] for x in studies)]),
        ("same answer as the grid", ["-", *(_same(answers[x.floor], x) for x in studies)]),
        ("quantizations", [str(x.quantizations) for x in sides]),
        (f"full evaluations ({args.limit} items)", [str(x.full_evaluations) for x in sides]),
        ("low-fidelity evaluations", ["-", *(str(x.low_evaluations) for x in studies)]),
        ("failed points", [str(x.failed) for x in sides]),
        (
            "evaluation seconds (MLflow time_eval_s, baselines included)",
            [f"{x.eval_seconds:.1f}" for x in sides],
        ),
        (
            "evaluation seconds / grid's",
            ["1", *(f"{x.eval_seconds / grid.eval_seconds:.3f}" for x in studies)],
        ),
        ("tokens evaluated (MLflow eval_tokens)", [f"{x.eval_tokens:,.0f}" for x in sides]),
        (
            "tokens / grid's",
            ["1", *(f"{x.eval_tokens / grid.eval_tokens:.3f}" if grid.eval_tokens else "-" for x in studies)],
        ),
        ("wall seconds", [f"{x.seconds:.0f}" for x in sides]),
        ("exit code", [str(x.exit_code) for x in sides]),
    ]
    lines = [
        f"Search vs grid: {configurations} configurations ({args.schemes} × {args.algorithms} × group "
        f"{args.group_sizes} × {args.ignores} × layers {args.layers}), eval hellaswag_file "
        f"{args.num_fewshot}-shot, {args.limit} items; feasible: {args.floor_on} {args.confidence:.0%} lower "
        f"bound ≥ floor; studies: budget {args.n_trials} configurations, seed {args.seed}.",
        "",
        "| | " + " | ".join(x.name for x in sides) + " |",
        "|---|" + "---|" * len(sides),
        *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows),
    ]
    return "\n".join(lines)


def _same(grid: tuple[str, float | None], study: Side) -> str:
    grid_label, grid_bytes = grid
    if grid_bytes is None or study.best_bytes is None:
        return "yes" if grid_bytes == study.best_bytes else "no"
    if study.best_bytes == grid_bytes:
        return "yes" if study.best == grid_label else "same size (a configuration of equal size)"
    return f"no ({100 * (study.best_bytes / grid_bytes - 1):+.1f}% size)"


def grid_points(points: list[Any]) -> list[dict[str, Any]]:
    """Every grid point: configuration, status, size (measured and predicted), accuracy, recovery."""
    keys = (
        "disk_bytes",
        "disk_bytes_predicted",
        "accuracy",
        "accuracy_stderr",
        "recovery",
        "recovery_stderr",
        "time_eval_s",
        "eval_tokens",
    )
    rows = [
        {"configuration": label(r.data.params), "status": r.info.status}
        | {k: r.data.metrics.get(k) for k in keys}
        for r in points
    ]
    return sorted(rows, key=lambda r: (r["disk_bytes"] is None, r["disk_bytes"] or 0))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work.resolve()
    configurations = size_of_space(args)
    py = sys.executable
    grid_work = work / "grid"
    seconds, code = launch(
        [py, "run.py", "-m", *space(args), *common(args, grid_work)], grid_work / "run.log"
    )
    grid, grid_runs, grid_full = bill("grid", grid_work, seconds, code, args.limit)
    grid.floor = args.floor
    grid.best, grid.best_bytes = grid_best(grid_full, args, args.floor)
    answers = {args.floor: (grid.best, grid.best_bytes)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".grid.json").write_text(json.dumps(grid_points(grid_runs), indent=1) + "\n")
    studies: list[Side] = []
    # After the grid and after each study, so a run cut short keeps what it finished.
    args.out.write_text(table(grid, studies, answers, args, configurations) + "\n")
    for i, (sampler, low, floor) in enumerate(args.search or [("smallest_first", 25, None)]):
        floor = args.floor if floor is None else floor
        answers.setdefault(floor, grid_best(grid_full, args, floor))
        study_work = work / f"search{i}-{sampler}-{low or 'full'}-{floor:g}"
        settings = [
            "sweep=search_smallest",
            f"search.floor={floor}",
            f"search.floor_on={args.floor_on}",
            f"search.confidence={args.confidence}",
            f"search.low_fidelity_limit={'null' if low is None else low}",
            f"search.n_trials={args.n_trials}",
            f"search.sampler={sampler}",
            f"search.seed={args.seed}",
            f"search.storage=sqlite:///{study_work}/optuna.db",
            f"search.study_name={STUDY}",
        ]
        seconds, code = launch(
            [py, "run.py", "-m", *settings, *space(args), *common(args, study_work)], study_work / "run.log"
        )
        name = f"{sampler}, low fidelity {low or '-'}, floor {floor:g}"
        study, study_points, _ = bill(name, study_work, seconds, code, args.limit)
        study.floor = floor
        study.best, study.best_bytes = search_best(study_work, study_points)
        studies.append(study)
        args.out.write_text(table(grid, studies, answers, args, configurations) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
