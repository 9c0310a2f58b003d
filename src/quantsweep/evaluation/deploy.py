"""Deployability: does vLLM load a checkpoint, and at what load time, generation speed and KV capacity.

A compressed checkpoint that scores well is worth little if the serving engine cannot run its scheme on the
target hardware. `check` runs `vllm_probe.py` in the vLLM environment (`make vllm-env`) and returns what it
measured; a checkpoint vLLM refuses gives `loads=False` and vLLM's reason in one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from quantsweep.config import Config
from quantsweep.devices import accelerator
from quantsweep.evaluation import vllm_env

PROBE = Path(__file__).with_name("vllm_probe.py")
ERROR_TAG = "quantsweep.vllm_error"
# How vLLM's front end and engine report a process that died while starting ("Engine core initialization
# failed. See root cause above", "WorkerProc initialization failed ..."): the cause is logged before.
_GENERIC = re.compile(r"initialization failed|root cause")
_EXCEPTION_LINE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")
# How many continuation lines a reason takes, and its length as a tag.
_MORE_LINES = 8
_MAX_CHARS = 1000


@dataclass
class DeployCheck:
    """What the probe measured; None where it was not reached. KV tokens and concurrency are within the
    KV budget vLLM was given (VLLM_CPU_KVCACHE_SPACE on CPU, gpu_memory_utilization on GPU)."""

    loads: bool
    load_s: float | None = None
    gen_tokens_per_s: float | None = None
    kv_cache_tokens: int | None = None
    # How many requests of `max_model_len` tokens the KV cache holds at once.
    max_concurrency: float | None = None
    max_model_len: int | None = None
    vllm_version: str | None = None
    error: str | None = None

    def metrics(self) -> dict[str, float | None]:
        """MLflow metrics (None is left out by `tracking.log_metrics`)."""
        return {
            "vllm_loads": float(self.loads),
            "vllm_load_s": self.load_s,
            "vllm_gen_tokens_per_s": self.gen_tokens_per_s,
            "vllm_kv_cache_tokens": None if self.kv_cache_tokens is None else float(self.kv_cache_tokens),
            "vllm_max_concurrency": self.max_concurrency,
        }

    def tags(self) -> dict[str, str]:
        return {ERROR_TAG: self.error} if self.error else {}


def check(
    checkpoint: str | Path,
    python: str | None = None,
    max_model_len: int | None = None,
    tokens: int = 64,
    timeout_s: float = 1800,
) -> DeployCheck:
    """Load `checkpoint` with vLLM in its environment (`python`, else `vllm_env.find_python`: ConfigError
    when none is built) and generate `tokens` greedily. `max_model_len` defaults to the model's context."""
    interpreter = vllm_env.find_python(python)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        cmd = [interpreter, str(PROBE), str(checkpoint), str(out), "--tokens", str(tokens)]
        if max_model_len is not None:
            cmd += ["--max-model-len", str(max_model_len)]
        returncode, log = _run(cmd, timeout_s)
        if returncode is None:
            return DeployCheck(False, error=f"vLLM probe timed out after {timeout_s:.0f} s")
        if not out.is_file():
            why = reason(log) or f"vLLM probe exited with code {returncode} and wrote no result"
            return DeployCheck(False, error=why)
        data = json.loads(out.read_text())
    error = data.get("error")
    if error and _GENERIC.search(error):
        error = reason(log) or error
    return DeployCheck(
        loads=bool(data["vllm_loads"]),
        load_s=data.get("load_s"),
        gen_tokens_per_s=data.get("gen_tokens_per_s"),
        kv_cache_tokens=data.get("kv_cache_tokens"),
        max_concurrency=data.get("max_concurrency"),
        max_model_len=data.get("max_model_len"),
        vllm_version=data.get("vllm_version"),
        error=error,
    )


def _run(cmd: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run the probe in its own process group, so a timeout also ends vLLM's engine process.
    (None, log) on timeout."""
    env = vllm_env.subprocess_env(accelerator())
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    ) as proc:
        try:
            log, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            return None, log
    return proc.returncode, log


def reason(log: str) -> str | None:
    """The last specific exception line of vLLM's log (the engine's root cause), in one line, with the lines
    vLLM logged right after it under the same prefix (e.g. each kernel it tried after "Failed to find a
    kernel ... Reasons:"), after it, separated by "; "."""
    lines = log.splitlines()
    for at in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.search(lines[at])
        if not match or _GENERIC.search(lines[at]):
            continue
        prefix, parts = lines[at][: match.start()], [f"{match[1]}: {' '.join(match[2].split())}"]
        for line in lines[at + 1 : at + 1 + _MORE_LINES]:
            more = " ".join(line[len(prefix) :].split())
            if not prefix or not line.startswith(prefix) or not more:
                break
            parts.append(more)
        return " ".join([parts[0], "; ".join(parts[1:])]).strip()[:_MAX_CHARS]
    return None


def for_point(cfg: Config, name: str, checkpoint: Path) -> dict[str, float | None]:
    """The check a point gets after it is scored (`deploy_check`, on where a vLLM environment exists): its
    metrics, with vLLM's reason set as the run's tag when it cannot load. Empty when skipped."""
    import mlflow

    from quantsweep import logs

    python = vllm_env.available(cfg.eval.python if cfg.eval.backend == "vllm" else None)
    if not cfg.deploy_check or python is None:
        return {}
    start = time.perf_counter()
    with logs.phase(f"{name}: vLLM deployability check"):
        found = check(checkpoint, python=python)
    mlflow.set_tags(found.tags())
    if not found.loads:
        logs.say(f"quantsweep: {name}: vLLM cannot load it: {found.error}", err=True)
    return found.metrics() | {"time_deploy_check_s": time.perf_counter() - start}
