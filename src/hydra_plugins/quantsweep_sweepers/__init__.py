"""Hydra sweepers shipped with quantsweep, found by Hydra's plugin scan of the `hydra_plugins` namespace.

Hydra instantiates plugins only from this package; the behaviour lives in `quantsweep.grid_sweeper` and
`quantsweep.optuna_sweeper`.
"""

from hydra.core.config_store import ConfigStore

from quantsweep.grid_sweeper import GridSweeperConf, QuantsweepGridSweeper
from quantsweep.optuna_sweeper import OptunaSweeperConf, QuantsweepOptunaSweeper


class GridSweeper(QuantsweepGridSweeper):
    """`hydra/sweeper=quantsweep_grid`."""


class OptunaSweeper(QuantsweepOptunaSweeper):
    """`hydra/sweeper=quantsweep_optuna`."""


ConfigStore.instance().store(
    group="hydra/sweeper", name="quantsweep_grid", node=GridSweeperConf, provider="quantsweep"
)
ConfigStore.instance().store(
    group="hydra/sweeper", name="quantsweep_optuna", node=OptunaSweeperConf, provider="quantsweep"
)
