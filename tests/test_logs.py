"""The terminal shows quantsweep's own lines; the libraries' output goes to each MLflow run's logs.txt."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys

import mlflow
from conftest import ROOT, base_overrides

from quantsweep import logs, tracking
from quantsweep.config import TrackingConfig

# What llm-compressor's GPTQ logs (loguru) once per Linear it quantizes.
GPTQ_ERROR = "| GPTQ | METRIC - error"
# The tiny Llama's quantized Linears: 2 layers x (q, k, v, o, gate, up, down); lm_head is ignored.
QUANTIZED_LINEARS = 2 * 7


def run_log(run_id: str) -> str:
    return mlflow.artifacts.load_text(f"runs:/{run_id}/{tracking.LOG}")


def test_a_run_logs_what_the_libraries_write_and_gives_the_terminal_back(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(logs, "_verbose", False)
    store = TrackingConfig(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"), "logs")
    experiment = tracking.setup(store)
    capfd.readouterr()
    with tracking.Tracked(experiment, "custom/W4A16", {}, None) as tracked:
        os.write(2, b"a library line on fd 2\n")
        child = (
            "import sys; print('a child on stdout', flush=True); print('a child on stderr', file=sys.stderr)"
        )
        subprocess.run([sys.executable, "-c", child], check=True)
        # What harness.py does with lm-eval in another environment: its output relayed, its tail kept.
        cmd = [sys.executable, "-c", "print('lm-eval in another environment')"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
            tail = logs.relay(proc.stdout)
        assert tail == "lm-eval in another environment\n"
        logs.say("quantsweep: custom/W4A16: quantizing")
        raise RuntimeError("boom")
    out, err = capfd.readouterr()
    assert tracked.status == "FAILED"
    assert out == "quantsweep: custom/W4A16: quantizing\n"
    # The failure names the log, and nothing the libraries wrote reached the terminal.
    log_uri = f"{mlflow.get_run(tracked.run_id).info.artifact_uri}/logs.txt"
    assert err == f"quantsweep: custom/W4A16 FAILED; the libraries' log: {log_uri}\n"
    log = run_log(tracked.run_id).splitlines()
    assert log == [
        "a library line on fd 2",
        "a child on stdout",
        "a child on stderr",
        "lm-eval in another environment",
        "quantsweep: custom/W4A16: quantizing",
    ]
    capfd.readouterr()
    os.write(2, b"after the run\n")
    assert capfd.readouterr().err == "after the run\n"


def read_terminal(master: int) -> bytes:
    data = b""
    while select.select([master], [], [], 0.5)[0]:
        data += os.read(master, 1 << 16)
    return data


def test_on_a_terminal_only_the_long_phases_bars_show_and_they_are_cleared(tmp_path):
    master, terminal = os.openpty()
    read, write = os.pipe()
    pump = logs.Pump(read, (tmp_path / "logs.txt").open("ab"), terminal, verbose=False, bars=True)
    pump.start()
    os.write(write, b"2026-11-29T16:26:04.2161 | GPTQ | METRIC - error 0.57\n")
    os.write(write, b"\rMap:   0%|   | 0/8\rMap: 100%|###| 8/8\n")
    os.write(write, b"\rRunning loglikelihood requests:   0%|   | 0/24")
    os.write(write, b"\rRunning loglikelihood requests: 100%|###| 24/24\n")
    os.close(write)
    pump.join(timeout=10)
    shown = read_terminal(master)
    os.close(master)
    os.close(terminal)
    assert b"METRIC" not in shown and b"Map" not in shown
    assert shown.startswith(b"\rRunning loglikelihood requests:   0%")
    assert b"24/24\x1b[K" + logs.CLEAR_LINE in shown and shown.endswith(logs.CLEAR_LINE)
    # The log keeps one line per bar, its last state, as a terminal would have shown it.
    assert (tmp_path / "logs.txt").read_text().splitlines() == [
        "2026-11-29T16:26:04.2161 | GPTQ | METRIC - error 0.57",
        "Map: 100%|###| 8/8",
        "Running loglikelihood requests: 100%|###| 24/24",
    ]


def run_py(overrides: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "run.py", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_gptq_run_prints_few_lines_and_verbose_shows_the_libraries(
    tiny_model, task_file, calib_file, tmp_path
):
    overrides = [
        *base_overrides(tiny_model, task_file, calib_file, tmp_path),
        "scheme=W4A16_GPTQ",
        "scheme.group_size=64",
        f"hydra.run.dir={tmp_path}/hydra",
    ]
    quiet = run_py(overrides)
    terminal = (quiet.stdout + quiet.stderr).splitlines()
    assert not [line for line in terminal if re.search(r"METRIC|INFO|WARNING|\[lm_eval|%\|", line)]
    assert "quantsweep: custom/W4A16_GPTQ/GPTQ/g64/lm_head: quantizing (GPTQ)…" in terminal
    assert any(line.startswith("custom baseline  ") for line in terminal)
    assert any(line.startswith("custom/W4A16_GPTQ/GPTQ/g64/lm_head  FINISHED") for line in terminal)
    (mlflow_line,) = [line for line in terminal if line.startswith("MLflow run ")]
    assert len(terminal) <= 20  # 6 phase lines, the summary and the run: not the libraries' hundreds
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    point = mlflow_line.split()[2]
    assert run_log(point).count(GPTQ_ERROR) == QUANTIZED_LINEARS
    baseline = run_log(mlflow.get_run(point).data.tags[tracking.BASELINE_RUN])
    assert "[lm_eval.evaluator][INFO] - Running loglikelihood requests" in baseline

    # Again, the baseline reused and the checkpoint remade, with the libraries' output shown.
    loud = run_py([*overrides, "verbose=true", "force=true"])
    assert (loud.stdout + loud.stderr).count(GPTQ_ERROR) == QUANTIZED_LINEARS
    assert "[lm_eval.evaluator][INFO]" in loud.stdout + loud.stderr
    (mlflow_line,) = [line for line in loud.stdout.splitlines() if line.startswith("MLflow run ")]
    assert run_log(mlflow_line.split()[2]).count(GPTQ_ERROR) == QUANTIZED_LINEARS
