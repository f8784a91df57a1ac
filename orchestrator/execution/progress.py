"""Live progress on the driver, read from the metrics rank 0 appends.

On a terminal: a progress bar with loss, throughput and ETA. Elsewhere (CI, logs
piped to a file): one plain line every `train.log_every` steps and at validation.
Either way, each failure the controller records is shown as it happens, with its decision.
"""
from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.config.spec import JobSpec
from orchestrator.run.files import JsonlFollower, RunFiles


class ProgressReporter:
    def __init__(self, run_dir: Path, spec: JobSpec, interactive: bool | None = None) -> None:
        self.follower = JsonlFollower(RunFiles(run_dir).metrics)
        self.events = JsonlFollower(RunFiles(run_dir).events, from_end=True)  # this run's only
        self.total = spec.train.steps
        self.log_every = spec.train.log_every
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._progress = None
        self._task = None

    def __enter__(self) -> "ProgressReporter":
        if self.interactive:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, status="starting workers")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, final: bool = False) -> None:
        """Show what was written since the last call; `final`: everything, now."""
        for event in self.events.poll(force=final):
            if event["event"] == "failure":
                self._say(f"attempt {event['attempt']} failed at step {event['step']}: "
                          f"{event['error'].splitlines()[0]}; {event['decision']}")
            elif event["event"] == "request_rejected":
                self._say(f"WARNING: a line of requests.jsonl is not a request ({event['reason']}); ignored")
            elif event["event"] == "checkpoint_skipped":
                self._say(f"WARNING: checkpoint {event['checkpoint']} is not used: {event['reason']}")
            elif event["event"] == "checkpoint_none_valid":
                self._say(f"WARNING: none of the {event['checked']} checkpoints is valid: "
                          "training starts from step 0")
        for record in self.follower.poll(force=final):
            status = _status(record)
            if self._progress is not None:
                self._progress.update(self._task, completed=record["step"], status=status)
                if "val_loss" in record:
                    self._progress.console.print(f"step {record['step']}: {_validation(record)}")
            elif record["step"] % self.log_every == 0 or "val_loss" in record or record["step"] == self.total:
                line = f"step {record['step']}/{self.total} {status}"
                if "val_loss" in record:
                    line += f" | {_validation(record)}"
                print(line, flush=True)

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)


def _status(record: dict) -> str:
    return (
        f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
        f"{record['samples_per_s']:.0f} samples/s  workers {record['world_size']}"
    )


def _validation(record: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_"))
