"""`orchestrator report RUN_DIR`: one run's story as plots in RUN_DIR/plots/: loss,
throughput and world size against time, failures, restarts, resizes and checkpoints
marked where they happened. Read from metrics.jsonl and events.jsonl only, so it draws
a run that is still going, one that failed, and one on object storage."""
from __future__ import annotations

import io

from orchestrator.run.records import RunRecords
from orchestrator.run.storage import RunPath


def draw_run(run_dir: RunPath) -> list[tuple[RunPath, str]]:
    """Writes the figures; returns each one's path and what it shows. Raises ValueError
    when the run has no step record yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = RunRecords(run_dir)
    metrics, events = records.metrics(), records.events()
    if not metrics:
        raise ValueError(f"{run_dir} has no step records yet (metrics.jsonl): nothing to draw")
    origin = min([m["time"] for m in metrics] + [e["time"] for e in events])
    scale, unit = (60.0, "minutes") if metrics[-1]["time"] - origin > 600 else (1.0, "seconds")

    def at(t: float) -> float:
        return (t - origin) / scale

    fig, (loss, speed, size) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    times = [at(m["time"]) for m in metrics]
    loss.plot(times, [m["loss"] for m in metrics], ".-", markersize=2, linewidth=0.8, label="training loss")
    validation = [m for m in metrics if "val_loss" in m]
    if validation:
        loss.plot([at(m["time"]) for m in validation], [m["val_loss"] for m in validation], "o", label="validation loss")
    loss.set(ylabel="loss", title=f"Run {run_dir.name}")
    speed.plot(times, [m["samples_per_s"] for m in metrics], ".-", markersize=2, linewidth=0.8)
    speed.set(ylabel="samples per second")
    size.step(times, [m["world_size"] for m in metrics], where="post", color="tab:green")
    size.set(ylabel="workers", xlabel=f"{unit} since the run started")
    size.set_ylim(0, max(m["world_size"] for m in metrics) + 1)
    size.yaxis.set_major_locator(MaxNLocator(integer=True))
    marks = _marks(events)
    for axis in (loss, speed, size):
        for kind, when in marks:
            axis.axvline(at(when), **_MARK_STYLES[kind])
    handles = [plt.Line2D([], [], label=kind, **_MARK_STYLES[kind]) for kind in dict.fromkeys(k for k, _ in marks)]
    loss.legend(handles=loss.get_legend_handles_labels()[0] + handles, fontsize=8, loc="upper right")
    fig.tight_layout()
    target = _write(fig, run_dir, "run.png")
    plt.close(fig)
    counts = {kind: sum(k == kind for k, _ in marks) for kind in _MARK_STYLES}
    said = (f"{len(records.steps())} steps, loss {metrics[0]['loss']:.4g} -> {metrics[-1]['loss']:.4g}; "
            f"world sizes {sorted({m['world_size'] for m in metrics})}; "
            + ", ".join(_count(counts[kind], kind) for kind in ("failure", "resize", "checkpoint")))
    return [(target, said)]


_MARK_STYLES = {
    "failure": {"color": "tab:red", "linestyle": "--", "linewidth": 1.2},
    "resize": {"color": "tab:purple", "linestyle": "-.", "linewidth": 1.2},
    "checkpoint": {"color": "0.6", "linestyle": ":", "linewidth": 0.8},
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _marks(events: list[dict]) -> list[tuple[str, float]]:
    """(kind, time) of each failure, each resize (an attempt at another world size than
    the one before it) and each checkpoint written."""
    marks = []
    for event in events:
        if event["event"] == "failure":
            marks.append(("failure", event["time"]))
        elif event["event"] == "attempt" and event.get("previous") and event["previous"] != event.get("world_size"):
            marks.append(("resize", event["time"]))
        elif event["event"] == "checkpoint":
            marks.append(("checkpoint", event["time"]))
    return marks


def _write(fig, run_dir: RunPath, name: str) -> RunPath:
    """PNG bytes to RUN_DIR/plots/NAME, a folder or an object storage prefix alike."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    target = run_dir / "plots" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return target
