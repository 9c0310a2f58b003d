"""What the SmolLM2 bench scripts share: one real sweep through run.py -m, timed, its output in a log file;
and the machine a figure was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLASWAG = ROOT.parent / "shared" / "data" / "hellaswag_val_full.txt.bz2"


def run_sweep(
    overrides: list[str], log_path: Path, hellaswag: Path, may_fail: bool = False
) -> tuple[float, int]:
    """`python run.py -m <overrides>` with HellaSwag from the local file: (seconds of wall time, exit code).
    The log starts with the command; a failed sweep stops the bench, naming the log, unless `may_fail` (a
    sweep whose failed points are results)."""
    env = os.environ | {"QUANTSWEEP_HELLASWAG": str(hellaswag)}
    start = time.perf_counter()
    with log_path.open("w") as log:
        log.write("python run.py -m " + " ".join(overrides) + "\n")
        log.flush()
        cmd = [sys.executable, "run.py", "-m", *overrides]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 and not may_fail:
        raise SystemExit(f"the sweep failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - start, proc.returncode


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
