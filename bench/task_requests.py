"""How long lm-eval takes to build a task's requests (documents, few-shot contexts, targets): work every
evaluation repeats before the model runs, so on a small model on a GPU it is a large share of one.

    .venv/bin/python bench/task_requests.py --data ../shared/data/hellaswag_val_full.txt.bz2 \\
        --limit 250 --num-fewshot 5 --repeat 3

Builds the shipped `hellaswag_file` task through lm-eval's TaskManager as an evaluation does (seeded
few-shot sampling), times `build_all_requests` on a fresh task each repeat, and prints the seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from quantsweep.config import EvalConfig  # noqa: E402
from quantsweep.evaluation.harness import include_dir, task_manager  # noqa: E402


def build_seconds(cfg: EvalConfig, cache: Path, limit: int, seed: int) -> tuple[float, int]:
    """One fresh task's request building: (seconds, requests built)."""
    task = task_manager(cfg, include_dir(cfg, cache)).load(list(cfg.tasks))["tasks"][cfg.tasks[0]]
    task.set_config("num_fewshot", cfg.num_fewshot)
    task.set_fewshot_seed(seed)
    start = time.perf_counter()
    task.build_all_requests(limit=limit)
    return time.perf_counter() - start, len(task.instances)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a HellaSwag file (.jsonl, six-line .txt or .txt.bz2)")
    p.add_argument("--limit", type=int, default=250)
    p.add_argument("--num-fewshot", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    cfg = EvalConfig(
        name="hellaswag_file", tasks=["hellaswag_file"], data_path=args.data, num_fewshot=args.num_fewshot
    )
    with tempfile.TemporaryDirectory() as cache:
        for i in range(args.repeat):
            seconds, requests = build_seconds(cfg, Path(cache), args.limit, seed=0)
            print(f"repeat {i}: {requests} requests built in {seconds:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
