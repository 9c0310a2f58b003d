"""A search plan built directly (no Hydra, no model), for the parts that only read its settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quantsweep.config import SearchConfig
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.plan import Plan
from quantsweep.sweeps.search.space import Space


@pytest.fixture
def make_plan(tmp_path: Path) -> Callable[..., Plan]:
    """Plan(**settings) over two configurations, a (predicted 1.0) and b (2.0), with a study in tmp_path."""

    def make(low_limit: int | None = None, **settings) -> Plan:
        s = SearchConfig(
            **{
                "floor": 0.5,
                "floor_on": "accuracy",
                "sampler": "tpe",
                "storage": f"sqlite:///{tmp_path}/studies/optuna.db",
                "study_name": "s",
            }
            | settings
        )
        return Plan(
            s,
            Space({"scheme": ["a", "b"]}, ["seed=1"]),
            "W4A16",
            {},
            decisions.z_value(s.confidence),
            decisions.z_value(s.prune_confidence),
            low_limit,
            {"floor": s.floor},
            [{"scheme": "a"}, {"scheme": "b"}],
            {(("scheme", "a"),): 1.0, (("scheme", "b"),): 2.0},
        )

    return make
