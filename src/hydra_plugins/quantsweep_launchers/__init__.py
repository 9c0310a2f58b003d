"""Hydra launchers shipped with quantsweep, found by Hydra's plugin scan of the `hydra_plugins` namespace.

`hydra/launcher=quantsweep_ray` (conf/hydra/launcher/quantsweep_ray.yaml) runs a sweep's points as tasks on
a Ray cluster; named apart from hydra-ray-launcher's `ray`, whose schema Hydra would merge into a config of
the same name. Hydra imports this module at each start of run.py, so it stays light: Ray and the
implementation, `quantsweep.ray_launcher`, are imported only when a sweep launches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


def _plain(options: Any) -> dict[str, Any]:
    """Config nodes as the plain dicts ray.init() and task options take."""
    if OmegaConf.is_config(options):
        return OmegaConf.to_container(options, resolve=True)  # type: ignore[return-value]
    return dict(options or {})


class RayLauncher(Launcher):
    """`hydra/launcher=quantsweep_ray`: `address` (None: $RAY_ADDRESS, else a Ray started on this host),
    more ray.init() keywords (`init`) and task options for every point (`remote`)."""

    def __init__(self, address: str | None = None, init: Any = None, remote: Any = None) -> None:
        self.address = address
        self.init = _plain(init)
        self.remote = _plain(remote)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from quantsweep.ray_launcher import launch

        return launch(self, job_overrides, initial_job_idx)
