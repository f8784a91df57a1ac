"""Ray for one run: an embedded local Ray sized to this machine, or a cluster to join."""
from __future__ import annotations

import logging
import os
import threading

from orchestrator.compat.ray import init_without_dashboard_head
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
    """Variables every Ray process of the run gets: `scaling.env`, for a run on object
    storage the driver's credentials and endpoint for it (run/storage.py), and for a run on
    the host malloc's one arena (training/allocator.py)."""
    from orchestrator.run.storage import is_remote, storage_env
    from orchestrator.training.allocator import process_start_environment

    return {**(storage_env() if is_remote(run_dir) else {}), **process_start_environment(spec.scaling),
            **spec.scaling.env}


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
    init_without_dashboard_head(
        address="local",
        num_cpus=os.cpu_count(),
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env=runtime_env,
    )
    return True


def _inherit(address: str | None, env: dict[str, str] | None) -> tuple[dict[str, str] | None, dict]:
    """Where Ray's processes are to take `env` from: returns what a runtime environment
    must carry, and the variables' values before (None: unset), for `_restore`.

    An embedded Ray's processes are this one's children: they inherit `env` from this
    process's environment, set here before they start. The workers Ray starts ahead of
    any task then serve the run's; given a runtime environment instead, Ray would start
    fresh ones for it (1.1 s more to a launch's first step, benchmarks/results/startup.md).
    A joined cluster's processes are not this one's: they take a runtime environment."""
    if address or not env:
        return env, {}
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    return None, before


def _restore(before: dict) -> None:
    """The variables `_inherit` set, as they were: the run's must not reach whatever this
    process does next (another launch in the same process, a test's next case)."""
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class RayStart:
    """`start_ray` on a thread of its own, so that the driver's imports and the job's
    checks run while Ray's processes come up (a GCS, a raylet and their agents: about
    3 s on 2 cores, mostly in those processes).

    The thread lives until `stop`: Ray ties the GCS and the raylet it starts to the
    thread that started them (PR_SET_PDEATHSIG is per thread), so they would die with
    it. `stop` waits for a start under way to end before shutting Ray down: a process
    that exits while Ray is starting leaves Ray's agents running. ray.init on a thread
    leaves SIGTERM's handler alone; the launcher sets its own.
    """

    def __init__(self, address: str | None, say, env: dict[str, str] | None = None) -> None:
        # The environment is changed here, not on the thread: the caller's own thread may
        # be reading it meanwhile (setenv is not safe beside getenv).
        runtime_env, self._env_before = _inherit(address, env)
        self._args = (address, say, runtime_env)
        self._embedded = False
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="ray-start", daemon=True)
        self._thread.start()

    def _hold(self) -> None:
        logging.getLogger("ray._private.worker").addFilter(_not_the_sigterm_notice)
        try:
            self._embedded = start_ray(*self._args)
        except BaseException as error:  # raised by wait(), on the caller's thread
            self._error = error
        finally:
            self._started.set()
        self._stop.wait()
        if self._embedded:
            import ray

            ray.shutdown()

    def wait(self) -> bool:
        """Block until Ray is up; returns whether it is embedded.

        Raises:
            what starting or joining Ray raised.
        """
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self._embedded

    def stop(self) -> None:
        """Shut an embedded Ray down (once it has started); a joined cluster is left as it
        is. The run's variables leave this process's environment."""
        self._stop.set()
        self._thread.join()
        _restore(self._env_before)
        self._env_before = {}


def _not_the_sigterm_notice(record: logging.LogRecord) -> bool:
    """Ray's warning that ray.init on a thread sets no SIGTERM handler: the launcher sets
    its own (SIGTERM checkpoints and stops the run), so it would only alarm."""
    return "SIGTERM handler is not set" not in record.getMessage()
