"""`orchestrator verify`'s output: one row per layout, then what differs and why."""
from __future__ import annotations

from orchestrator.verify.runner import VerifyReport


def render_report(report: VerifyReport) -> str:
    lines = [
        f"sequential reference: {report.steps} steps in {report.reference_seconds:.1f} s; "
        f"tolerance {report.rtol:g} relative (losses, gradient norms), "
        f"{report.rtol * 100:g} (parameters)",
        f"{'layout':<12} {'workers':>7} {'loss dev':>9} {'norm dev':>9} {'param dev':>9}  worst parameter"
        f"{'':<14} result   time",
    ]
    for check in report.checks:
        if check.refused is not None:
            lines.append(f"{check.layout:<12} {check.workers:>7}  refused: {check.refused}")
            continue
        c = check.comparison
        norm = f"{c.grad_norm_deviation:9.1e}" if c.grad_norm_deviation is not None else f"{'n/a':>9}"
        lines.append(
            f"{check.layout:<12} {check.workers:>7} {c.loss_deviation:9.1e} {norm} {c.parameter_deviation:9.1e}  "
            f"{(c.worst_parameter or '-'):<29} {'pass' if check.passed else 'FAIL':<6} {check.seconds:5.1f} s"
        )
    for check in report.checks:
        if check.refused is None and not check.passed:
            lines += _failure(check)
    if report.nondeterministic and not report.passed:
        lines.append(
            "the model draws random numbers in its forward pass ("
            + ", ".join(report.nondeterministic)
            + "): each rank draws its own, so layouts differ from the reference for that reason "
            "alone; set them to 0 in model.options to verify the layout"
        )
    return "\n".join(lines)


def _failure(check) -> list[str]:
    c = check.comparison
    lines = [f"{check.layout}: differs from the sequential reference"]
    if c.first_divergent_step is not None:
        lines.append(f"  first divergent step: {c.first_divergent_step}")
    if c.differing:
        lines.append("  tensors that differ most:")
        lines += [f"    {entry}" for entry in c.differing]
    return lines
