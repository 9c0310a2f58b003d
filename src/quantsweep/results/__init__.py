"""What finished runs say: leaderboards collected from MLflow (query), ranked (rank), written as files
(render) and plotted (plots). The public API is re-exported here, loaded on first use: the search's light
modules import `results.pareto` without pulling in pandas and MLflow."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "collect": "quantsweep.results.query",
    "sweep_run": "quantsweep.results.query",
    "export": "quantsweep.results.render",
    "log_to_run": "quantsweep.results.render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'quantsweep.results' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
