"""Hydra sweepers shipped with quantsweep, found by Hydra's plugin scan of the `hydra_plugins` namespace.

Hydra imports every module here at each start of run.py, so this package stays light (no torch, optuna or
mlflow): like Hydra's own sweeper plugins, each class here imports its implementation,
`quantsweep.sweeps.grid` or `quantsweep.sweeps.search.sweeper`, only when Hydra instantiates it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

import hydra_plugins.quantsweep_sweepers.config  # noqa: F401  (stores the sweepers' configs)


class _Lazy(Sweeper):
    """Hands setup and sweep to the implementation `load` imports (abstract, so Hydra's scan skips it)."""

    def __init__(self, params: dict[str, str] | None = None, max_batch_size: int | None = None) -> None:
        self.impl = self.load()(params=params, max_batch_size=max_batch_size)

    @staticmethod
    @abstractmethod
    def load() -> Callable[..., Sweeper]: ...

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.impl.sweep(arguments)


class GridSweeper(_Lazy):
    """`hydra/sweeper=quantsweep_grid`."""

    @staticmethod
    def load() -> Callable[..., Sweeper]:
        from quantsweep.sweeps.grid import QuantsweepGridSweeper

        return QuantsweepGridSweeper


class OptunaSweeper(_Lazy):
    """`hydra/sweeper=quantsweep_optuna`."""

    @staticmethod
    def load() -> Callable[..., Sweeper]:
        from quantsweep.sweeps.search.sweeper import QuantsweepOptunaSweeper

        return QuantsweepOptunaSweeper
