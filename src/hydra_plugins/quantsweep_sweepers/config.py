"""The sweepers' Hydra config: one dataclass for both (they differ only in the class Hydra instantiates),
stored as `hydra/sweeper=quantsweep_grid` and `hydra/sweeper=quantsweep_optuna`."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class SweeperConf:
    _target_: str
    # Jobs handed to the launcher at once; None: the search takes one per launcher worker
    # (hydra.launcher.n_jobs, one per GPU), the grid takes every point.
    max_batch_size: int | None = None
    # The swept keys as override values (`scheme: choice(W4A16,W8A8)`); the command line's come after.
    params: dict[str, str] | None = field(default_factory=dict)


for name, target in (("quantsweep_grid", "GridSweeper"), ("quantsweep_optuna", "OptunaSweeper")):
    ConfigStore.instance().store(
        group="hydra/sweeper",
        name=name,
        node=SweeperConf(f"hydra_plugins.quantsweep_sweepers.{target}"),
        provider="quantsweep",
    )
