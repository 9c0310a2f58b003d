"""SmolLM2-135M-Instruct on a two-task suite, offline: HellaSwag (the shared file, 250 items, 5-shot) and
the word perplexity of a local English text file (the GNU GPL v3 text Debian's base-files package ships,
/usr/share/common-licenses/GPL-3: 122 paragraphs, 5,644 words). Baseline, W4A16 group 64 RTN and GPTQ
(calibrated on HellaSwag items past the evaluated ones), W8A8: each task's score and recovery ± its paired
stderr, the mean and the worst, and the time each evaluation took.

    .venv/bin/python bench/suite_smollm2.py --out bench-out/suite

One real sweep through run.py -m into its own MLflow store (--work), then the runs are read back; writes
suite_smollm2.json and suite_smollm2.md to --out, and the sweep's own output to sweep.log.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from common import HELLASWAG, machine, run_sweep

from quantsweep.tables import pm

TEXT = Path("/usr/share/common-licenses/GPL-3")
TASKS = ("hellaswag_file", "text_file")


def sweep(work: Path, hellaswag: Path, text: Path, out: Path) -> float:
    overrides = [
        "scheme=W4A16,W4A16_GPTQ,W8A8",
        "scheme.group_size=64",
        "calibration=hellaswag_file",
        f"eval.tasks=[{','.join(TASKS)}]",
        f"+eval.data_paths.text_file={text}",
        "eval.floor_on=mean",
        "profile=seed",
        # The vLLM deployability probe is another measurement (docs/vllm.md): not timed here.
        "deploy_check=false",
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_location={work}/artifacts",
        f"output_dir={work}/checkpoints",
        f"hydra.sweep.dir={work}/multirun",
    ]
    return run_sweep(overrides, out / "sweep.log", hellaswag)[0]


STAMP = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]\[lm_eval\.evaluator\]\[INFO\] - Running (\w+) requests"
)
BAR = re.compile(r"\| (\d+)/\1 \[(\d+):(\d+)<")


def task_seconds(log: str) -> tuple[float | None, float | None]:
    """(HellaSwag's log-likelihood phase, the text file's rolling phase) in seconds, from lm-eval's lines
    in the run's logs.txt: the first lasts until the second starts; the second is the sum of its progress
    bars (lm-eval runs the multiple-choice requests, then the rolling ones)."""
    from datetime import datetime

    lines = log.replace("\r", "\n").splitlines()
    starts = {}
    for i, line in enumerate(lines):
        found = STAMP.match(line)
        if found:
            starts[found[2]] = (datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f"), i)
    if "loglikelihood" not in starts or "loglikelihood_rolling" not in starts:
        return None, None
    (ll, _), (rolling, at) = starts["loglikelihood"], starts["loglikelihood_rolling"]
    bars = [m for line in lines[at:] if (m := BAR.search(line))]  # each bar's 100% line, once
    return (rolling - ll).total_seconds(), float(sum(60 * int(m[2]) + int(m[3]) for m in bars))


def rows(work: Path) -> list[dict[str, Any]]:
    """Baseline first, then the points, with what the tables need."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    runs = mlflow.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", output_format="list")
    found = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        m, p, tags = run.data.metrics, run.data.params, run.data.tags
        role = tags.get("quantsweep.role")
        if role not in ("baseline", "point"):
            continue
        row = {
            "run": "baseline" if role == "baseline" else f"{p['scheme.name']} {p['scheme.algorithm']}",
            "group_size": p.get("scheme.group_size_used", "-"),
            "disk_gib": m.get("disk_gib"),
            "time_quantize_s": m.get("time_quantize_s"),
            "time_eval_load_s": m.get("time_eval_load_s"),
            "time_eval_s": m.get("time_eval_s"),
            "eval_tokens": m.get("eval_tokens"),
            "run_id": run.info.run_id,
        }
        for task in TASKS:
            row[f"score.{task}"] = m.get(f"score.{task}")
            row[f"score_stderr.{task}"] = m.get(f"score_stderr.{task}")
            row[f"recovery.{task}"] = m.get(f"recovery.{task}", 1.0 if role == "baseline" else None)
            row[f"recovery_stderr.{task}"] = m.get(f"recovery_stderr.{task}")
        for name in ("recovery_mean", "recovery_mean_stderr", "recovery_worst", "recovery_worst_stderr"):
            row[name] = m.get(name)
        row["worst_task"] = tags.get("quantsweep.worst_task")
        log = Path(run.info.artifact_uri.removeprefix("file://"), "logs.txt")
        row["hellaswag_s"], row["text_s"] = task_seconds(log.read_text()) if log.is_file() else (None, None)
        found.append(row)
    return found


def markdown(found: list[dict[str, Any]]) -> str:
    head = (
        "| run | GiB | HellaSwag acc_norm | word perplexity | HellaSwag recovery | perplexity recovery "
        "| mean recovery | worst | quantize s | eval s | of which HellaSwag s | perplexity s |"
        "\n|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"
    )
    lines = [head]
    for r in found:
        base = r["run"] == "baseline"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["run"] + ("" if base or r["group_size"] in ("n/a", None) else f" g{r['group_size']}"),
                    f"{r['disk_gib']:.3f}" if r["disk_gib"] else "-",
                    pm(r["score.hellaswag_file"], r["score_stderr.hellaswag_file"], 3),
                    pm(r["score.text_file"], r["score_stderr.text_file"], 2),
                    "100%"
                    if base
                    else pm(r["recovery.hellaswag_file"], r["recovery_stderr.hellaswag_file"], 1, 100, "%"),
                    "100%"
                    if base
                    else pm(r["recovery.text_file"], r["recovery_stderr.text_file"], 1, 100, "%"),
                    "100%" if base else pm(r["recovery_mean"], r["recovery_mean_stderr"], 1, 100, "%"),
                    "-" if base else str(r["worst_task"]),
                    "-" if r["time_quantize_s"] is None else f"{r['time_quantize_s']:.1f}",
                    f"{r['time_eval_s']:.0f}",
                    "-" if r["hellaswag_s"] is None else f"{r['hellaswag_s']:.0f}",
                    "-" if r["text_s"] is None else f"{r['text_s']:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qsbench-suite"))
    parser.add_argument("--hellaswag", type=Path, default=HELLASWAG)
    parser.add_argument("--text", type=Path, default=TEXT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    wall = sweep(args.work, args.hellaswag, args.text, args.out)
    found = rows(args.work)
    report = {"wall_s": wall, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": found}
    (args.out / "suite_smollm2.json").write_text(json.dumps(report, indent=2))
    (args.out / "suite_smollm2.md").write_text(markdown(found))
    print(markdown(found), f"\nwhole sweep {wall:.0f} s", sep="")


if __name__ == "__main__":
    main()
