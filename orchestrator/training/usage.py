"""What one rank's process used during an attempt: CPU, memory, GPU, over time.

A thread samples this process about once a second; when the attempt ends the rank
appends one record to `usage.jsonl` (every rank writes its own, unlike the metrics):
peak resident memory, CPU seconds, the samples, the bytes of state the strategy
left on this rank, and what it read of streamed data. `orchestrator bench` reads them; a rank killed outright writes none.
"""
from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any, Callable

import psutil
import torch

from orchestrator.run.files import RunFiles, append_jsonl

SAMPLE_S = 0.5
MAX_SAMPLES = 600  # past this, every other sample is dropped and the interval doubles


class UsageSampler:
    """Samples this process's CPU use and resident memory (and, on a GPU, the memory
    allocated and NVML's utilisation) until `stop`."""

    def __init__(self, device: torch.device, interval_s: float = SAMPLE_S) -> None:
        self.device = device
        self.interval_s = interval_s
        self.samples: list[list[float]] = []  # [time, CPU cores used since the last, RSS bytes, GPU %]
        self.state_bytes: Callable[[], dict[str, int]] | None = None  # the strategy's, once built
        self.profile = None  # a StepProfile: what the profiled step did
        self.data_reads: Callable[[], dict[str, int]] | None = None  # the training split's reads
        self._process = psutil.Process()
        self.started = time.time()
        self._cpu_started = _cpu_seconds()
        self._last = (self.started, self._cpu_started)
        self._done = threading.Event()
        self._nvml = _nvml_handle(device)
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            self._sample()
            if len(self.samples) >= MAX_SAMPLES:
                self.samples = self.samples[::2]
                self.interval_s *= 2

    def _sample(self) -> None:
        """CPU cores used since the previous sample (or the start), memory now."""
        now, cpu = time.time(), _cpu_seconds()
        last_time, last_cpu = self._last
        self.samples.append([now, round((cpu - last_cpu) / max(now - last_time, 1e-9), 3),
                             self._process.memory_info().rss, self._gpu_percent()])
        self._last = (now, cpu)

    def _gpu_percent(self) -> float | None:
        if self._nvml is None:
            return None
        import pynvml

        return float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the attempt's totals and samples."""
        self._done.set()
        self._thread.join(timeout=5)
        self._sample()  # the last stretch: a short attempt has this one at least
        ended = time.time()
        found: dict[str, Any] = {
            "started": self.started, "ended": ended, "cpu_s": round(_cpu_seconds() - self._cpu_started, 3),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
            "samples": self.samples,
        }
        if self.device.type == "cuda":
            found["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
        if self.state_bytes is not None:
            found["state_bytes"] = self.state_bytes()
        if self.profile is not None:
            found.update(self.profile.findings())
        if self.data_reads is not None:
            found.update(self.data_reads())
        return found


def write_usage(run_dir, rank: int, world_size: int, step: int, usage: dict[str, Any]) -> None:
    """Append this rank's record of the attempt that ended at `step`."""
    record = {"rank": rank, "world_size": world_size, "step": step, "pid": os.getpid(), "node": _node_id(), **usage}
    append_jsonl(RunFiles(run_dir).usage, record)


def _node_id() -> str | None:
    """The Ray node this rank runs on (where placement put it), if it runs in Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _nvml_handle(device: torch.device):
    """NVML's handle of this rank's GPU, where the `nvidia-ml-py` package is installed.
    Found by UUID: NVML counts every GPU, CUDA only those CUDA_VISIBLE_DEVICES shows."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # no NVML: utilisation is left out, memory is still measured
        return None
