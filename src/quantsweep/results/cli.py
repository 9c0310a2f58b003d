"""`python -m quantsweep leaderboard [key=value ...]`: rank what an MLflow store holds, write the files.

Keys: tracking_uri, experiment, sweep, model, tag.<key>, out, formats, gpu_mem_gb, context and
concurrency (the KV cache's columns: each model's own context, 1 sequence by default), floor,
include_failed, log (true: attach the files to the sweep's parent run; needs sweep=). Prints the
Markdown table and the paths written; bad input is one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantsweep import keyvalue
from quantsweep.config import TrackingConfig
from quantsweep.errors import ConfigError, fail
from quantsweep.results import collect, export, kv, log_to_run, rank, render, sweep_run

_DEFAULTS: dict[str, Any] = {
    "tracking_uri": TrackingConfig().uri,
    "experiment": "quantsweep",
    "sweep": None,
    "model": None,
    "out": "leaderboards",
    "formats": render.FORMATS,
    "gpu_mem_gb": 80.0,
    "context": None,
    "concurrency": 1,
    "floor": None,
    "include_failed": False,
    "log": False,
}


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError


def _formats(text: str) -> tuple[str, ...]:
    chosen = tuple(f.strip() for f in text.split(",") if f.strip())
    if not chosen or set(chosen) - set(render.FORMATS):
        raise ValueError
    return chosen


_PARSERS: dict[str, Callable[[str], Any]] = {
    "tracking_uri": str,
    "experiment": str,
    "sweep": str,
    "model": str,
    "out": str,
    "formats": _formats,
    "gpu_mem_gb": float,
    "context": int,
    "concurrency": int,
    "floor": float,
    "include_failed": _bool,
    "log": _bool,
}
_EXPECTED = {
    "formats": f"a comma-separated list of {','.join(render.FORMATS)}",
    "include_failed": "true or false",
    "log": "true or false",
    "gpu_mem_gb": "a number of GB",
    "context": "a number of tokens",
    "concurrency": "a number of sequences",
    "floor": "a number in [0, 1]",
}


def parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Hydra-style key=value arguments → (options, tag filters); unknown or repeated keys fail."""
    example = "sweep=<id> or model=smollm2_135m"
    args, tags = keyvalue.parse(argv, _PARSERS, _DEFAULTS, example, _EXPECTED, prefix="tag.")
    if args["log"] and args["sweep"] is None:
        raise ConfigError("log=true attaches the files to a sweep's parent run: give sweep=<id> too")
    return args, tags


def main(argv: list[str]) -> int:
    """Collect, export, print; optionally log the files on the sweep's parent run."""
    from mlflow.exceptions import MlflowException

    try:
        args, tags = parse(argv)
        df = collect(
            args["tracking_uri"],
            args["experiment"],
            sweep_id=args["sweep"],
            model=args["model"],
            tags=tags,
            include_failed=args["include_failed"],
            gpu_mem_gb=args["gpu_mem_gb"],
        )
        df = kv.with_kv(df, args["context"], args["concurrency"])
        written = export(df, args["out"], args["formats"], args["gpu_mem_gb"], args["floor"])
        logged = None
        if args["log"]:
            run_id = sweep_run(args["tracking_uri"], args["experiment"], args["sweep"])
            log_to_run(run_id, args["out"])
            logged = run_id
    except (ValueError, MlflowException) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(message, command="leaderboard")
    print(render.to_markdown(rank.adjusted(df, args["gpu_mem_gb"], args["floor"])))
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
    if logged:
        print(f"logged under leaderboard/ on MLflow run {logged}")
    return 0
