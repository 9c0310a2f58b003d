"""What a shared store costs per point: the same sweep on SQLite and on an MLflow tracking server backed by
PostgreSQL (scripts/tracking_server.sh, on 127.0.0.1), on a tiny model, points evaluated on 6 items.

    .venv/bin/python bench/store_overhead.py [--points W8A8,FP8_dynamic,W8A16] [--repeat 2]

Prints each sweep's wall time (3 points and their baseline by default), alternating the stores, each run on
a new SQLite file or a new experiment of the one server: the difference over the points is the store's cost.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(overrides: list[str], work: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={work}/multirun"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    from conftest import base_overrides, build_tiny_llama, write_hellaswag_jsonl

    parser = argparse.ArgumentParser()
    parser.add_argument("--points", default="W8A8,FP8_dynamic,W8A16")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    points = len(args.points.split(","))
    root = Path(tempfile.mkdtemp(prefix="qs-store-"))
    model = build_tiny_llama(root / "model")
    task = write_hellaswag_jsonl(root / "task.jsonl")
    calib = root / "calib.txt"
    calib.write_text("the man walks the dog\n" * 32)
    env = dict(os.environ, PG_PORT=str(free_port()), MLFLOW_PORT=str(free_port()))
    services = root / "services"
    script = ["bash", "scripts/tracking_server.sh"]
    subprocess.run([*script, "start", str(services)], cwd=ROOT, env=env, check=True)
    try:
        for i in range(args.repeat):
            for store in ("sqlite", "server"):
                work = root / f"{store}-{i}"
                overrides = [*base_overrides(model, task, calib, work), f"scheme={args.points}"]
                if store == "server":
                    overrides = [o for o in overrides if not o.startswith("tracking.")]
                    uri = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
                    overrides += ["tracking=server", f"tracking.uri={uri}", f"tracking.experiment=bench{i}"]
                wall = sweep(overrides, work, env)
                print(f"{store:6s} run {i}: {points} points + baseline in {wall:.1f} s", flush=True)
    finally:
        subprocess.run([*script, "stop", str(services)], cwd=ROOT, env=env)


if __name__ == "__main__":
    main()
