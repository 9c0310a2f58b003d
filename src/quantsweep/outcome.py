"""The one record of a point's result, from the pipeline to the sweeper to the summary.

Picklable, so it crosses process launchers (joblib, Ray, submitit) as a job's return value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    name: str
    # FINISHED | FAILED | KILLED
    status: str
    # Answered from a FINISHED run with the same fingerprint: nothing was computed.
    reused: bool = False
    run_id: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # The baseline it was compared with: {"run_id", "name", "metrics"}.
    baseline: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
