"""Ray for one run: an embedded local Ray sized to this machine, or a cluster to join."""
from __future__ import annotations

import logging
import os

from orchestrator.errors import ResourceError


def refuse_ray_client(address: str | None) -> None:
    """Ray Data's executor does not run over Ray Client, so `ray://` cannot host a run.

    Raises:
        ResourceError: naming the address forms that work.
    """
    if address and address.startswith("ray://"):
        raise ResourceError(
            f"--address {address}: Ray Client addresses are not supported (Ray Data does "
            "not run over Ray Client); run the driver on a cluster node with --address HOST:6379 "
            "or --address auto"
        )


def worker_env(spec, run_dir) -> dict[str, str]:
    """Variables every Ray process of the run gets: `scaling.env`, and for a run on object
    storage the driver's credentials and endpoint for it (run/storage.py)."""
    from orchestrator.run.storage import is_remote, storage_env

    return {**(storage_env() if is_remote(run_dir) else {}), **spec.scaling.env}


def start_ray(address: str | None, say, env: dict[str, str] | None = None) -> bool:
    """Join the cluster at `address`, or start an embedded Ray; its tasks and actors get
    the variables `env`. Returns whether it is embedded (and so must be shut down by the
    caller)."""
    import ray

    runtime_env = {"env_vars": dict(env)} if env else None
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # A driver submitted through the Jobs API: the job's runtime environment carries
        # scaling.env already, and Ray refuses a second one that sets the same variables.
        runtime_env = None

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Progress comes from our own reporter; Ray's own INFO lines would drown it.
    for name in ("ray", "ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if address:
        say(f"joining Ray cluster at {address}")
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env)
        return False
    # address="local": start a new Ray even when another one runs on this machine
    # (without it ray.init joins the newest local cluster it finds).
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env=runtime_env,
    )
    return True


