"""`hydra/launcher=quantsweep_ray`: a sweep's points as tasks on a Ray cluster (docs/scale-out.md).

Ray does the scheduling. A point is one task that asks for its resources.gpus_per_point GPUs (none on a
cluster without GPUs, where points take CPU slots), in a worker process of its own (max_calls=1), never
retried by Ray (max_retries=0): a point cut short is redone by rerunning the sweep, which reuses every
finished point from the store. What a job learns from its sweep (the parent run, the sweep id, ...) is in
its own overrides (`sweep_run.*`, set by the sweeper), so it travels with the job's config; the user's
QUANTSWEEP_* variables the config reads reach the workers of every node through the task's runtime_env.
Every run a point starts is tagged with the Ray node and task that ran it (MLflow's MLFLOW_RUN_CONTEXT), so
a point whose worker died is found and closed KILLED by the driver.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from quantsweep.devices import ENV_GPUS, check_gpus_per_point
from quantsweep.errors import ConfigError
from quantsweep.interrupts import interrupt_on_sigterm

if TYPE_CHECKING:
    from hydra_plugins.quantsweep_launchers import RayLauncher

NODE_TAG = "ray.node_id"
TASK_TAG = "ray.task_id"
HOST_TAG = "host"
# MLflow adds the tags this JSON holds to every run the process starts.
RUN_CONTEXT = "MLFLOW_RUN_CONTEXT"
# How long an interrupted sweep waits for its cancelled points to end their runs KILLED.
CANCEL_WAIT_S = 60
log = logging.getLogger(__name__)


@dataclass
class Job:
    num: int
    overrides: list[str]
    config: DictConfig
    gpus: int


def launch(
    launcher: RayLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    """Submit every point, then collect them: a point whose worker or node died is FAILED, the rest go on."""
    import ray

    setup_globals()
    config, context = launcher.config, launcher.hydra_context
    assert config is not None and context is not None and launcher.task_function is not None
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address=launcher.address, **launcher.init)
        # ray.init's SIGTERM handler aborts the process: the sweep's turns it into KeyboardInterrupt again.
        interrupt_on_sigterm()
    nodes = [node for node in ray.nodes() if node["Alive"]]
    largest = max(int(node["Resources"].get("GPU", 0)) for node in nodes)
    log.info(
        f"Ray launcher: {len(job_overrides)} points on {len(nodes)} nodes (at most {largest} GPUs a node)"
    )
    jobs = [
        _job(context, config, num, overrides) for num, overrides in enumerate(job_overrides, initial_job_idx)
    ]
    state = Singleton.get_state()
    run = ray.remote(max_calls=1)(_run_point)
    refs: dict[int, Any] = {}
    results: dict[int, JobReturn] = {}
    for job in jobs:
        log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))}")
        if error := _unplaceable(job.gpus, largest):
            results[job.num] = _failed(job, error)
            continue
        options = _options(launcher.remote, job.gpus if largest else 0, job.num)
        refs[job.num] = run.options(**options).remote(context, job.config, launcher.task_function, state)
    try:
        for job in jobs:
            if job.num in refs:
                results[job.num] = _collect(job, refs[job.num])
    except KeyboardInterrupt:
        # A KeyboardInterrupt in each point still running: its runs end KILLED, as under Ctrl-C at home.
        for ref in refs.values():
            ray.cancel(ref)
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=CANCEL_WAIT_S)
        raise
    return [results[job.num] for job in jobs]


def _job(context: HydraContext, config: DictConfig, num: int, overrides: Sequence[str]) -> Job:
    sweep_config = context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.num = num
    return Job(num, list(overrides), sweep_config, int(sweep_config.resources.gpus_per_point))


def _unplaceable(gpus: int, largest: int) -> ConfigError | None:
    """Why no node can run a point asking for `gpus` GPUs (`largest`: the most a node has; 0: no GPUs in
    the cluster, where points take CPU slots), or None."""
    try:
        check_gpus_per_point(gpus)
    except ConfigError as exc:
        return exc
    if largest and gpus > largest:
        return ConfigError(
            f"resources.gpus_per_point={gpus}: no node of the Ray cluster has more than {largest} GPU(s); "
            f"ask for at most {largest}, or add nodes with more"
        )
    return None


def user_env() -> dict[str, str]:
    """The user's QUANTSWEEP_* variables here (QUANTSWEEP_CACHE, QUANTSWEEP_HELLASWAG, ...), which the job's
    config reads through `${oc.env:}` when a worker resolves it, so a node started with another environment
    sees what the sweep's command saw; less the joblib launcher's count of GPU shares, no business of a Ray
    task."""
    return {
        key: value for key, value in os.environ.items() if key.startswith("QUANTSWEEP_") and key != ENV_GPUS
    }


def _options(remote: dict[str, Any], gpus: int, num: int) -> dict[str, Any]:
    """The task's options: `remote`'s (num_cpus, memory, resources, scheduling_strategy, ...) over
    quantsweep's defaults, its GPUs, and the user's variables added to its runtime_env."""
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0, **remote}
    options["num_gpus"] = gpus
    options["name"] = f"quantsweep-point-{num}"
    runtime_env = dict(options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **user_env()}
    options["runtime_env"] = runtime_env
    return options


def _collect(job: Job, ref: Any) -> JobReturn:
    import ray

    try:
        result: JobReturn = ray.get(ref)
        return result
    except ray.exceptions.RayError as exc:  # its worker or node died, or it was cancelled
        close_orphans(job.config, ref.task_id().hex(), exc)
        return _failed(job, exc)


def _failed(job: Job, error: BaseException) -> JobReturn:
    """The sweep's record of a point that returned nothing: FAILED, with why."""
    return JobReturn(
        overrides=job.overrides,
        cfg=job.config,
        hydra_cfg=job.config,
        task_name=str(job.config.hydra.job.name),
        status=JobStatus.FAILED,
        _return_value=error,
    )


def close_orphans(config: DictConfig, task_id: str, error: BaseException) -> None:
    """End KILLED, with the cause, the runs a dead task left RUNNING (its process could not end them)."""
    from mlflow import MlflowClient

    from quantsweep import tracking

    client = MlflowClient(str(config.tracking.uri))
    experiment = client.get_experiment_by_name(str(config.tracking.experiment))
    if experiment is None:
        return
    running = f"tags.`{TASK_TAG}` = '{task_id}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment.experiment_id], running):
        client.set_tag(run.info.run_id, tracking.ERROR, f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run.info.run_id, "KILLED")


def _run_point(
    context: HydraContext, config: DictConfig, task_function: TaskFunction, state: dict[Any, Any]
) -> JobReturn:
    """One point, in a Ray worker: Hydra's job around the task function, as the sweep's process runs it."""
    import ray

    setup_globals()
    Singleton.set_state(state)
    runtime = ray.get_runtime_context()
    with open_dict(config):
        config.hydra.job.id = runtime.get_task_id()
    HydraConfig.instance().set_config(config)
    # Relative paths (the store, outputs) mean what they mean to the sweep's command, where that folder is
    # shared with this node.
    if Path(str(config.hydra.runtime.cwd)).is_dir():
        os.chdir(str(config.hydra.runtime.cwd))
    tags = {NODE_TAG: runtime.get_node_id(), TASK_TAG: runtime.get_task_id(), HOST_TAG: socket.gethostname()}
    os.environ[RUN_CONTEXT] = json.dumps(json.loads(os.environ.get(RUN_CONTEXT) or "{}") | tags)
    return run_job(
        hydra_context=context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
