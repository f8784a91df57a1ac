"""Driver side of a run: Ray up, data prepared, workers sized, a backend run, a summary.

With no cluster address an embedded Ray is started, sized to this machine, and
shut down at the end; with `--address` (or RAY_ADDRESS) the run joins that cluster.

Exercised by: orchestrator launch examples/quickstart.yaml
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

from orchestrator.config.loading import dump_spec
from orchestrator.config.spec import JobSpec
from orchestrator.errors import ResourceError, RunDirError, TrainingError, VerificationError
from orchestrator.execution.backend import backend_for
from orchestrator.execution.progress import ProgressReporter
from orchestrator.execution.ray_runtime import RayStart, refuse_ray_client, worker_env
from orchestrator.execution.resources import WorkerResources, size_workers
from orchestrator.run.control import HEARTBEAT_S, DriverLock, request, write_heartbeat
from orchestrator.run.files import RunFiles, atomic_write_text, flush_logs, read_json
from orchestrator.run.storage import ObjectPath, RunPath, run_path
from orchestrator.run.summary import write_summary
from orchestrator.run.tracking import Tracking, check_reachable


def default_run_dir(spec: JobSpec) -> Path:
    return Path("runs") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"


class Launcher:
    """Runs one job to the end (or to a failure it cannot recover from)."""

    def __init__(self, spec: JobSpec, run_dir: Path, address: str | None = None, resume: bool = False,
                 force: bool = False) -> None:
        self.spec = spec
        self.run_dir = run_path(run_dir).resolve()
        self.resume = resume  # continue the run in run_dir; else run_dir must hold no run yet
        self.lock = DriverLock(self.run_dir, force=force)  # force: take the run over from a live driver
        self._last_beat = 0.0
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.backend = backend_for(spec.scaling.backend)
        self.signal: signal.Signals | None = None  # SIGTERM or SIGINT received: stop with a checkpoint
        self._stop_asked = False
        self._started = 0.0
        self._ray: RayStart | None = None

    def start_ray(self) -> None:
        """Start Ray, or join the cluster, on a thread now, while the caller goes on (the
        job's checks, imports); `run` waits for it and shuts it down. A caller that ends
        without `run` calls `stop_ray`."""
        if self._ray is None:
            refuse_ray_client(self.address)
            self._ray = RayStart(self.address, _say, worker_env(self.spec, self.run_dir))

    def stop_ray(self) -> None:
        if self._ray is not None:
            self._ray.stop()

    def run(self) -> dict:
        refuse_ray_client(self.address)
        if self.spec.scaling.use_gpu and not self.address:
            _require_local_gpu()
        check_reachable(self.spec)  # before the run directory holds this run
        _open_run_dir(self.run_dir, self.spec, self.lock, self.resume)
        try:
            self.tracking = Tracking(self.spec, self.run_dir, self.resume)
        except BaseException:
            self.lock.release()
            raise
        started = self._started = time.time()
        _say(f"run directory: {self.run_dir}")
        self.start_ray()  # unless the caller has started it already
        try:
            self._ray.wait()
            with _StopOnSignal(self):
                state, error = self._train()
        except KeyboardInterrupt:  # a second signal, or one a backend cannot stop on
            state, error = "interrupted", None
            self.signal = self.signal or signal.SIGINT
        finally:
            self.stop_ray()
            self.lock.release()
        flush_logs()
        summary = write_summary(self.run_dir, "failed" if error else state, time.time() - started, error)
        self.tracking.finish(summary)
        if self.signal is not None:
            _say(f"{self.signal.name}: {summary['status']} at step {summary['steps']}; "
                 f"`orchestrator resume {self.run_dir}` continues it")
        if isinstance(error, VerificationError):
            raise error
        if error is not None:
            raise TrainingError(f"training failed: {error}") from error
        _say(f"{summary['status']}: {self.run_dir}")
        return summary

    def _train(self) -> tuple[str, BaseException | None]:
        """Start the workers, prepare the data meanwhile, then run the backend on a
        thread while showing progress."""
        import ray

        from orchestrator.compat.ray import autoscaler_running
        from orchestrator.data.pipeline import prepare_data
        from orchestrator.verify.preflight import launch_check

        resources = size_workers(self.spec, ray.cluster_resources(), self.backend.spares(self.spec),
                                 can_grow=autoscaler_running())
        workers = self.backend.start_workers(self.spec, self.run_dir, resources)  # start meanwhile
        try:
            data = prepare_data(self.spec, RunFiles(self.run_dir).data)
        except BaseException:
            if workers is not None:
                workers.shutdown()
            raise
        _say(f"data: {data.describe()}")
        _say(_describe_workers(resources, self.spec.strategy.name))
        data_ref = ray.put(data)
        check = launch_check(self.spec, self.run_dir, _say)
        outcome: dict = {"error": None, "state": "finished"}

        def target() -> None:
            try:
                outcome["state"] = self.backend.run(self.spec, self.run_dir, data_ref, resources, check,
                                                    workers)
            except Exception as error:  # kept for the summary, raised by run()
                outcome["error"] = error

        thread = threading.Thread(target=target, name="training", daemon=True)
        thread.start()
        with ProgressReporter(self.run_dir, self.spec) as progress:
            while thread.is_alive():
                thread.join(timeout=0.5)
                progress.update()
                self.tracking.update()
                self._pass_on_signal()
                self._beat()
            flush_logs()
            progress.update(final=True)
        return outcome["state"], outcome["error"]

    def _beat(self) -> None:
        """The heartbeat `status` and a second driver read, on any host."""
        if time.time() - self._last_beat >= HEARTBEAT_S:
            write_heartbeat(self.run_dir, self._started)
            self._last_beat = time.time()

    def on_signal(self, received: signal.Signals) -> None:
        """First SIGTERM/SIGINT: checkpoint and stop (SLURM's and Kubernetes' notice of
        preemption). A second one, or a backend that takes no stop: stop at once."""
        if self.signal is not None or not self.backend.controllable:
            raise KeyboardInterrupt(received.name)
        self.signal = received
        _say(f"{received.name}: checkpointing and stopping (send it again to stop at once)")

    def _pass_on_signal(self) -> None:
        """Hand a received signal to the controller as a stop request, once it is there
        to read it (its controller.json is newer than this launch)."""
        if self.signal is None or self._stop_asked:
            return
        state = read_json(RunFiles(self.run_dir).controller_state) or {}
        if state.get("time", 0) >= self._started:
            request(self.run_dir, stop=True)
            self._stop_asked = True


class _StopOnSignal:
    """SIGTERM and SIGINT call `launcher.on_signal` while training runs (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.previous: dict = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, lambda number, _: self.launcher.on_signal(signal.Signals(number)))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _open_run_dir(run_dir: RunPath, spec: JobSpec, lock: DriverLock, resume: bool) -> None:
    """Hold the run directory (`lock`) and write the job into it; `resume`: it may hold
    the run already.

    Raises:
        RunDirError: the directory is a file, cannot be written, holds a run `launch`
            would overwrite, or another driver holds it.
    """
    files = RunFiles(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file; choose another --run-dir")
    if not resume and files.job.exists():
        raise RunDirError(f"{run_dir} holds a run already: `orchestrator resume {run_dir}` "
                          "continues it; choose another --run-dir for a new one")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        atomic_write_text(files.job, dump_spec(spec))
    except OSError as error:
        lock.release()
        raise RunDirError(f"cannot write run directory {run_dir}: {error.strerror or error}") from None
    files.summary.unlink(missing_ok=True)  # a resumed run is running again
    _log_to_file(files.controller_log)


def _require_local_gpu() -> None:
    """An embedded Ray has this machine's GPUs only: none means the job cannot start."""
    import torch

    if not torch.cuda.is_available():
        raise ResourceError("scaling.use_gpu: true, and this machine has no GPU (CUDA is not available to "
                            "torch); set it to false, or launch on a cluster with GPUs (--address)")


def _describe_workers(resources: WorkerResources, strategy: str) -> str:
    gpu = " + 1 GPU" if resources.use_gpu else ""
    return f"workers: {resources.workers} x {resources.cpus_per_worker:g} CPU{gpu}, strategy {strategy}"


def _log_to_file(path: RunPath) -> None:
    """The driver's own decisions (restarts, resizes) go to RUN_DIR/controller.log."""
    handler = _SegmentHandler(path) if isinstance(path, ObjectPath) else logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)


class _SegmentHandler(logging.Handler):
    """controller.log on object storage: lines appended to this driver's segment."""

    def __init__(self, path: ObjectPath) -> None:
        from orchestrator.run.files import SegmentLog

        super().__init__()
        self.log = SegmentLog.of(path)

    def emit(self, record: logging.LogRecord) -> None:
        self.log.append((self.format(record) + "\n").encode("utf-8"))


def _say(message: str) -> None:
    print(f"[orchestrator] {message}", flush=True)
