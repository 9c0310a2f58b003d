"""The separate vLLM environment: where its interpreter is, and how a process started in it is configured.

vLLM pins torch and compressed-tensors versions that cannot share an environment with llm-compressor, so
`make vllm-env` (scripts/make_vllm_env.sh) builds `.venv-vllm/` beside the project's own `.venv/`, and
lm-eval's CLI (eval.backend=vllm) and the deploy probe run in it as subprocesses.
"""

from __future__ import annotations

import os
from pathlib import Path

from quantsweep.errors import ConfigError

VENV = ".venv-vllm"
ENV_PYTHON = "QUANTSWEEP_VLLM_PYTHON"
# src/quantsweep/evaluation/ -> the repository root of a source checkout.
REPO = Path(__file__).resolve().parents[3]
FIX = "run `make vllm-env` (scripts/make_vllm_env.sh) or set eval.python=/path/to/vllm-env/bin/python"
# vLLM CPU reserves its KV cache up front: without a size it asks for a fraction of the host's whole memory,
# which fails on a shared machine. GiB, as VLLM_CPU_KVCACHE_SPACE takes it; the caller's own value wins.
CPU_KV_CACHE_GIB = 2


def candidates() -> list[Path]:
    """Where the vLLM interpreter is looked for, in order: the current directory's `.venv-vllm/`, then
    the repository's (the same folder when run from the checkout)."""
    found = [Path.cwd() / VENV / "bin" / "python", REPO / VENV / "bin" / "python"]
    return list(dict.fromkeys(found))


def find_python(explicit: str | None = None) -> str:
    """The interpreter of the vLLM environment: `explicit` (eval.python), else $QUANTSWEEP_VLLM_PYTHON,
    else the first `.venv-vllm/bin/python` of `candidates()`. ConfigError naming the fix when none is."""
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"eval.python={explicit!r} does not exist; {FIX}")
        return explicit
    named = os.environ.get(ENV_PYTHON)
    if named:
        if not Path(named).is_file():
            raise ConfigError(f"{ENV_PYTHON}={named!r} does not exist; {FIX}")
        return named
    for path in candidates():
        if path.is_file():
            return str(path)
    looked = ", ".join(str(p) for p in candidates())
    raise ConfigError(
        f"eval.backend='vllm' needs the vLLM environment, which is not built (no {looked}, "
        f"{ENV_PYTHON} unset): {FIX}"
    )


def available(explicit: str | None = None) -> str | None:
    """The vLLM interpreter if an environment exists, else None (for checks that run only where it does)."""
    try:
        return find_python(explicit)
    except ConfigError:
        return None


def subprocess_env(device: str) -> dict[str, str]:
    """This process's environment plus what vLLM needs on `device` (a KV-cache size on CPU)."""
    env = dict(os.environ)
    if device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    return env
