"""The bench's figures, as PNG files, each with the sentence that says what it shows.

matplotlib (the `report` extra) is imported here only, with its file-only backend."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.bench.measure import RunMeasures
from orchestrator.bench.plan import SEQUENTIAL
from orchestrator.bench.summary import BenchSummary, Row, step_parts
from orchestrator.training.usage import SAMPLE_S

MB = 1 << 20


@dataclass(frozen=True)
class Figure:
    file: str
    title: str
    caption: str


def draw_all(summary: BenchSummary, runs: list[RunMeasures], folder: Path) -> list[Figure]:
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    first = {}
    for run in runs:  # each configuration's first repeat that finished draws its curves
        if run.error is None and run.losses and run.name not in first:
            first[run.name] = run
    rows = [row for row in summary.rows if row.step_s is not None]
    with matplotlib.rc_context({"axes.prop_cycle": _colours()}):
        figures = [_loss(first, folder), _deviation(summary, folder), _scaling(summary, folder),
                   _throughput(rows, folder), _breakdown(rows, folder), _memory(rows, folder),
                   _utilisation(first, folder)]
    return [figure for figure in figures if figure is not None]


def _colours():
    """matplotlib's tab10, then tab20's light shades, without their greys (the reference's)."""
    import matplotlib
    from cycler import cycler

    dark, light = matplotlib.colormaps["tab10"].colors, matplotlib.colormaps["tab20"].colors[1::2]
    return cycler(color=[c for i, c in enumerate(dark) if i != 7] + [c for i, c in enumerate(light) if i != 7])


def _style(run_name: str) -> dict:
    """The reference wide, grey and underneath: a configuration that matches it is drawn over it."""
    if run_name == SEQUENTIAL:
        return {"color": "0.25", "linewidth": 4, "alpha": 0.45, "zorder": 1}
    return {"linewidth": 1.2, "zorder": 2}


def _legend_outside(axis) -> None:
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def _save(fig, folder: Path, file: str) -> None:
    fig.tight_layout()
    fig.savefig(folder / file, dpi=110, bbox_inches="tight")  # legends outside the axes included
    import matplotlib.pyplot as plt

    plt.close(fig)


def _loss(first: dict[str, RunMeasures], folder: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    if not first:
        return None
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in first.items():
        by_step.plot(range(1, len(run.losses) + 1), run.losses, label=name, **_style(name))
        by_time.plot(run.loss_times, run.losses, label=name, **_style(name))
    by_step.set(xlabel="step", ylabel="training loss", title="Loss per step")
    by_time.set(xlabel="seconds since launch", ylabel="training loss", title="Loss against wall time")
    _legend_outside(by_time)
    _save(fig, folder, "loss.png")
    finals = ", ".join(f"{name} {run.losses[-1]:.4g}" for name, run in first.items())
    return Figure("loss.png", "Convergence", f"Training loss of each configuration (first repeat) over the "
                  f"sequential reference (wide grey line, under them), by step and by time since launch. Final loss: {finals}.")


def _deviation(summary: BenchSummary, folder: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    rows = [row for row in summary.rows if row.loss_deviation and row.strategy != SEQUENTIAL]
    if not rows:
        return None
    fig, axis = plt.subplots(figsize=(7, 4))
    floor = 1e-12  # an identical step is drawn at the floor of the log scale
    for row in rows:
        axis.plot(range(1, len(row.loss_deviation) + 1), [max(d, floor) for d in row.loss_deviation],
                  label=row.name, linewidth=1.2)
    axis.set(yscale="log", xlabel="step", ylabel="|loss - reference| / reference",
             title="Per-step loss deviation from the sequential run")
    _legend_outside(axis)
    _save(fig, folder, "deviation.png")
    same = [row.name for row in rows if row.max_loss_deviation == 0]
    apart = [row for row in rows if row.max_loss_deviation]
    said = f"Identical to the reference at every step: {', '.join(same) or 'none'}."
    if apart:
        starts = ", ".join(f"{row.name} {next(d for d in row.loss_deviation if d):.1g} at step "
                           f"{next(i for i, d in enumerate(row.loss_deviation, 1) if d)}, "
                           f"{row.max_loss_deviation:.1g} at most" for row in apart)
        said += (f" The others sum in another order (split matrices, micro-batches): {starts}. A difference "
                 "that starts at rounding level and grows step by step is that noise, amplified by "
                 "training; a wrong layout differs from step 1 (orchestrator verify holds each layout to "
                 "1e-5 over its first steps).")
    return Figure("deviation.png", "Deviation from the sequential run",
                  f"Relative difference of each step's loss from the reference's at the same step "
                  f"(identical steps drawn at {floor:g}). {said}")


def _scaling(summary: BenchSummary, folder: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    rows = [row for row in summary.rows if row.speedup is not None and row.strategy != SEQUENTIAL]
    if not rows:
        return None
    fig, (speed, efficiency) = plt.subplots(1, 2, figsize=(11, 4))
    counts = sorted({row.workers for row in rows} | {1})
    speed.plot(counts, counts, "k--", label="ideal (linear)")
    efficiency.plot(counts, [1.0] * len(counts), "k--", label="ideal")
    for strategy in dict.fromkeys(row.strategy for row in rows):
        mine = sorted((row for row in rows if row.strategy == strategy), key=lambda r: r.workers)
        speed.plot([r.workers for r in mine], [r.speedup for r in mine], "o-", label=strategy)
        efficiency.plot([r.workers for r in mine], [r.efficiency for r in mine], "o-", label=strategy)
    speed.set(xlabel="workers", ylabel="speedup over sequential (steady step)", title="Speedup", xticks=counts)
    efficiency.set(xlabel="workers", ylabel="parallel efficiency (speedup / workers)", title="Efficiency",
                   xticks=counts, ylim=(0, max(1.1, max(r.efficiency for r in rows) * 1.1)))
    _legend_outside(efficiency)
    _save(fig, folder, "speedup.png")
    best = max(rows, key=lambda r: r.speedup)
    said = "; ".join(f"{r.name}: {r.speedup:.2f}x, efficiency {r.efficiency:.0%}" for r in rows)
    return Figure("speedup.png", "Speedup and efficiency",
                  f"Steady-state speedup (the reference's median step time over the configuration's) and "
                  f"efficiency against workers, with the ideal line. {said}. Fastest: {best.name}.")


def _throughput(rows: list[Row], folder: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    if not rows:
        return None
    fig, axis = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    names = [row.name for row in rows]
    axis.barh(names, [row.samples_per_s for row in rows],
              color=["0.4" if row.strategy == SEQUENTIAL else "tab:blue" for row in rows])
    axis.invert_yaxis()
    axis.set(xlabel="samples per second (global batch / median step)", title="Throughput")
    _save(fig, folder, "throughput.png")
    said = ", ".join(f"{row.name} {row.samples_per_s:,.0f}" for row in rows)
    return Figure("throughput.png", "Throughput", f"Samples per second in steady state: {said}.")


PART_ORDER = ["data", "forward", "backward", "forward + backward", "optimizer", "communication waited for",
              "between steps"]
PART_NOTES = {"forward + backward": "forward + backward (a pipeline schedule interleaves them)",
              "optimizer": "optimizer (+ sharded reduction)",
              "communication waited for": "communication waited for (its share of each phase, profiled)",
              "between steps": "between steps (records, agreement, checkpoints)"}


def _breakdown(rows: list[Row], folder: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    parts = {row.name: step_parts(row) for row in rows if row.phases}
    if not parts:
        return None
    names = list(parts)
    drawn = {label for found in parts.values() for label in found}
    labels = [label for label in PART_ORDER if label in drawn]
    fig, axis = plt.subplots(figsize=(8, 0.45 * len(names) + 1.8))
    left = [0.0] * len(names)
    for label in labels:
        widths = [parts[name].get(label, 0.0) * 1000 for name in names]
        # One colour per part in every report, whichever parts this one has.
        axis.barh(names, widths, left=left, label=PART_NOTES.get(label, label), color=f"C{PART_ORDER.index(label)}")
        left = [a + b for a, b in zip(left, widths)]
    axis.invert_yaxis()
    axis.set(xlabel="milliseconds per step (medians)", title="Where a step's time goes")
    _legend_outside(axis)
    _save(fig, folder, "breakdown.png")
    said = "; ".join(f"{name}: " + ", ".join(f"{label} {seconds / sum(found.values()):.0%}"
                                              for label, seconds in found.items() if seconds > 0)
                     for name, found in parts.items())
    return Figure("breakdown.png", "Step-time breakdown",
                  "Median time of each part of a step, stacked: data, forward, backward, the optimizer (with "
                  "ZeRO's reduction), the time the step waited for collectives that computation did not hide "
                  "(from the profiled step, taken out of the part it fell in) and what the loop does between "
                  f"steps. Shares of the step: {said}.")


def _memory(rows: list[Row], folder: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row.state_bytes or row.peak_rss_bytes]
    if not rows:
        return None
    fig, axis = plt.subplots(figsize=(max(7, 1.1 * len(rows) + 2), 4.5))
    positions = range(len(rows))
    bottom = [0.0] * len(rows)
    for part in ("params", "grads", "optimizer", "activations"):
        heights = [_held(row, part) / MB for row in rows]
        axis.bar([p - 0.2 for p in positions], heights, 0.4, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axis.set_ylabel("held by a worker (MiB)")
    process = axis.twinx()
    process.bar([p + 0.2 for p in positions], [(row.peak_rss_bytes or 0) / MB for row in rows], 0.4,
                color="lightgray", edgecolor="gray", label="peak process memory (RSS)")
    process.set_ylabel("peak RSS of the largest worker (MiB)")
    axis.set_xticks(list(positions), [row.name for row in rows], rotation=30, ha="right")
    axis.set_title("Memory per worker")
    handles = axis.get_legend_handles_labels()[0] + process.get_legend_handles_labels()[0]
    axis.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left",
                bbox_to_anchor=(1.12, 1.0), borderaxespad=0)  # right of the second axis' label
    _save(fig, folder, "memory.png")
    said = ", ".join(f"{row.name} {sum(row.state_bytes.values()) / MB:.2f} MiB state + "
                     f"{_held(row, 'activations') / MB:.2f} MiB activations / "
                     f"{(row.peak_rss_bytes or 0) / MB:.0f} MiB RSS" for row in rows)
    return Figure("memory.png", "Memory per worker",
                  "Parameters, gradients and optimizer state on the worker holding the most, and the most its "
                  "activations (the tensors kept for backward, in the profiled step) held at once (left axis, "
                  "stacked); the peak resident memory of the largest worker process (right axis, grey; it "
                  f"includes the framework). {said}.")


def _held(row: Row, part: str) -> int:
    return (row.activation_bytes or 0) if part == "activations" else row.state_bytes.get(part, 0)


def _utilisation(first: dict[str, RunMeasures], folder: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    drawn = {name: run for name, run in first.items() if any(r["samples"] for r in run.ranks)}
    if not drawn:
        return None
    fig, (cpu, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in drawn.items():
        times, cores, rss = _combined(run)
        cpu.plot(times, cores, "o-", markersize=3, label=name, **_style(name))  # a short run: one point
        memory.plot(times, [b / MB for b in rss], "o-", markersize=3, label=name, **_style(name))
    cpu.set(xlabel="seconds since the workers started training", ylabel="CPU cores busy (all workers)",
            title="CPU utilisation")
    memory.set(xlabel="seconds since the workers started training", ylabel="resident memory, all workers (MiB)",
               title="Memory over time")
    _legend_outside(memory)
    _save(fig, folder, "utilisation.png")
    said = ", ".join(f"{name} {run.cpu_cores:.2f}" for name, run in drawn.items())
    return Figure("utilisation.png", "Utilisation over time",
                  f"CPU cores kept busy and resident memory of all workers together, sampled every half second "
                  f"while they trained. Mean cores busy: {said}.")


def _combined(run: RunMeasures) -> tuple[list[float], list[float], list[float]]:
    """The ranks' samples summed per half second since the earliest rank started (a
    rank's last sample in a second stands for it there)."""
    origin = min(r["started"] for r in run.ranks)
    per_rank: dict[tuple[int, int], tuple[float, float]] = {}
    for rank, record in enumerate(run.ranks):
        for t, cores, rss, _gpu in record["samples"]:
            per_rank[(int((t - origin) / SAMPLE_S), rank)] = (cores, rss)
    seconds = sorted({second for second, _ in per_rank})
    cores = [sum(v[0] for (s, _), v in per_rank.items() if s == second) for second in seconds]
    rss = [sum(v[1] for (s, _), v in per_rank.items() if s == second) for second in seconds]
    return [k * SAMPLE_S for k in seconds], cores, rss
