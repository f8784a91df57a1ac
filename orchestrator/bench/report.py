"""The bench's report: report.md (a table, the plots, a sentence under each) and a
self-contained report.html (the same, with the PNGs inlined)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from orchestrator.bench.plots import Figure
from orchestrator.bench.summary import BenchSummary, Row, Spread

MB = 1 << 20

COLUMNS = ["configuration", "workers", "wall s", "launch to step 1 s", "step ms", "samples/s", "speedup",
           "efficiency", "wall speedup", "time to target s", "max loss deviation", "final loss",
           "val loss", "peak RSS MiB", "state MiB", "activations MiB", "CPU cores", "comm MiB/step", "comm GB/s",
           "comm waited ms"]


def _spread(value: Spread | None, scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value.low == value.high:
        return f"{value.median * scale:.{digits}f}"
    return f"{value.median * scale:.{digits}f} ({value.low * scale:.{digits}f}-{value.high * scale:.{digits}f})"


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def cells(row: Row) -> list[str]:
    """A row of the table, as text: medians, with (lowest-highest) over repeats."""
    state = sum(row.state_bytes.values()) / MB if row.state_bytes else None
    return [row.name, str(row.workers), _spread(row.wall_s), _spread(row.first_step_s),
            _spread(row.step_s, 1000.0, 1), _number(row.samples_per_s, ".0f"), _number(row.speedup, ".2f"),
            _number(row.efficiency, ".0%"), _number(row.wall_speedup, ".2f"), _spread(row.time_to_target_s),
            _number(row.max_loss_deviation, ".2e"), _number(row.final_loss, ".4f"),
            _number(row.validation.get("val_loss"), ".4f"),
            _number(row.peak_rss_bytes / MB if row.peak_rss_bytes else None, ".0f"),
            _number(state, ".3f"), _number(row.activation_bytes / MB if row.activation_bytes else None, ".3f"),
            _number(row.cpu_cores, ".2f"),
            _number(row.comm_bytes / MB if row.comm_bytes is not None else None, ".3f"),
            _number(row.comm_bytes / row.comm_s / 1e9 if row.comm_bytes and row.comm_s else None, ".3f"),
            _number(sum(row.exposed_s.values()) * 1000 if row.exposed_s else None, ".2f")]


def _headline(summary: BenchSummary) -> list[str]:
    lines = []
    reference = summary.reference
    others = [r for r in summary.rows if r.speedup is not None and r is not reference]
    if reference is not None and reference.step_s is not None:
        lines.append(f"The sequential reference takes {reference.step_s.median * 1000:.1f} ms per step "
                     f"({reference.samples_per_s:,.0f} samples/s) and {reference.wall_s.median:.1f} s in all.")
    if others:
        best = max(others, key=lambda r: r.speedup)
        verdict = "faster" if best.speedup > 1 else "no faster"
        lines.append(f"The fastest configuration, {best.name}, is {verdict} per step than the reference: "
                     f"{best.speedup:.2f}x (efficiency {best.efficiency:.0%}); over the whole run, start-up "
                     f"included, {best.wall_speedup:.2f}x.")
        worst = max(others, key=lambda r: r.max_loss_deviation or 0.0)
        if worst.max_loss_deviation == 0:
            lines.append("Every configuration trains the reference's losses exactly, step for step.")
        elif worst.max_loss_deviation is not None:
            lines.append(f"Every configuration trains the reference's losses to within "
                         f"{worst.max_loss_deviation:.2g} relative per step (largest: {worst.name}).")
    return lines


def _preamble(summary: BenchSummary, command: str) -> list[str]:
    m = summary.machine
    target = f"{summary.target_loss:.4f}" if summary.target_loss is not None else "none"
    return [f"Job `{summary.job}`: {summary.steps} steps, global batch {summary.global_batch_size}. "
            f"Machine: {m.get('cpus')} CPUs, {m.get('gpus', 0)} GPUs, torch {m.get('torch')}, Ray {m.get('ray')}.",
            f"Command: `{command}`",
            f"Medians over repeats, (lowest-highest) where they differ. Step time is the median time from "
            f"one step's end to the next after the warm-up steps; speedup is the sequential reference's median step time over the configuration's, "
            f"efficiency that over the worker count; wall speedup compares whole runs, start-up included. "
            f"Target loss {target}: the time from launch to the first step whose 5-step mean loss reaches it. "
            f"Communication: what one steady step's collectives moved on the busiest worker (each call's "
            f"input tensor, from PyTorch's profiler) and those bytes over the collectives' own time, "
            f"waiting included: a lower bound on the bandwidth. Comm waited: the time the profiled step "
            f"spent waiting for collectives with nothing computed (the breakdown plot applies each phase's "
            f"share of it to the phase's median). Activations: the most the tensors kept for backward held at "
            f"once in the profiled step."] + _where(m)


def _where(machine: dict) -> list[str]:
    if not machine.get("cluster"):
        return []
    return [f"The launcher's configurations ran on the Ray cluster at {machine['cluster']}; the sequential "
            f"reference and the peers ran on this machine (the one described above), so their ratios compare "
            f"different hardware."]


def write_report(summary: BenchSummary, figures: list[Figure], folder: Path, command: str) -> tuple[Path, Path]:
    markdown = folder / "report.md"
    markdown.write_text(_markdown(summary, figures, command))
    page = folder / "report.html"
    page.write_text(_html(summary, figures, folder, command))
    return markdown, page


def _markdown(summary: BenchSummary, figures: list[Figure], command: str) -> str:
    lines = ["# Bench report", "", *(_preamble(summary, command)), "", *_headline(summary), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in summary.rows]
    lines += [""] + _problems(summary)
    for figure in figures:
        lines += ["", f"## {figure.title}", "", f"![{figure.title}](plots/{figure.file})", "", figure.caption]
    return "\n".join(lines) + "\n"


def _problems(summary: BenchSummary) -> list[str]:
    lines = [f"- skipped {s.name}: {s.reason}" for s in summary.skipped]
    lines += [f"- {row.name}: {len(row.failed)} of {row.repeats} runs failed: {row.failed[0]}"
              for row in summary.rows if row.failed]
    return lines


def _html(summary: BenchSummary, figures: list[Figure], folder: Path, command: str) -> str:
    escape = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>Bench report</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:"
             "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "td:first-child{text-align:left}img{max-width:100%}</style>", "<h1>Bench report</h1>"]
    parts += [f"<p>{escape(line)}</p>" for line in _preamble(summary, command) + _headline(summary)]
    parts.append("<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in COLUMNS) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells(row)) + "</tr>" for row in summary.rows]
    parts.append("</table><ul>" + "".join(f"<li>{escape(p[2:])}</li>" for p in _problems(summary)) + "</ul>")
    for figure in figures:
        data = base64.b64encode((folder / "plots" / figure.file).read_bytes()).decode("ascii")
        parts += [f"<h2>{escape(figure.title)}</h2>", f"<img alt='{escape(figure.title)}' "
                  f"src='data:image/png;base64,{data}'>", f"<p>{escape(figure.caption)}</p>"]
    return "\n".join(parts) + "\n"
