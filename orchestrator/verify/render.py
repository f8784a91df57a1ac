"""`orchestrator verify`'s output: one row per layout, then what differs and why."""
from __future__ import annotations

from orchestrator.verify.check import LayoutCheck, VerifyReport
from orchestrator.verify.compare import NOISE_FACTOR

HEADER = (f"{'layout':<12} {'workers':>7} {'loss dev':>9} {'norm dev':>9} {'param dev':>9}  worst parameter"
          f"{'':<14} result   time")


def render_report(report: VerifyReport) -> str:
    lines = [
        f"sequential reference: {report.steps} steps in {report.reference_seconds:.1f} s; "
        f"tolerance {report.rtol:g} relative (losses, gradient norms), "
        f"{report.rtol * 100:g} (parameters)",
        HEADER,
    ]
    if report.smaller_instance:
        lines.insert(0, smaller_instance_line(report))
    if report.dropout_off:
        lines.insert(0, f"dropout off for the check: {', '.join(report.dropout_off)} = 0")
    lines += [row(check) for check in report.checks]
    noisy = sorted({name for check in report.checks if check.comparison for name in check.comparison.noisy})
    if noisy:
        lines.append(noise_line(noisy))
    for check in report.checks:
        if check.refused is None and not check.passed:
            lines += failure_lines(check)
    if report.nondeterministic and not report.passed:
        lines.append(randomness_line(report))
    return "\n".join(lines)


def row(check: LayoutCheck) -> str:
    if check.refused is not None:
        return f"{check.layout:<12} {check.workers:>7}  refused: {check.refused}"
    if check.error is not None:
        return f"{check.layout:<12} {check.workers:>7}  FAIL: the run failed"
    c = check.comparison
    norm = f"{c.grad_norm_deviation:9.1e}" if c.grad_norm_deviation is not None else f"{'n/a':>9}"
    return (
        f"{check.layout:<12} {check.workers:>7} {c.loss_deviation:9.1e} {norm} {c.parameter_deviation:9.1e}  "
        f"{(c.worst_parameter or '-'):<29} {'pass' if check.passed else 'FAIL':<6} {check.seconds:5.1f} s"
    )


def failure_lines(check: LayoutCheck) -> list[str]:
    if check.error is not None:
        return [f"{check.layout}: the layout's run failed:", "  " + check.error.replace("\n", "\n  ")]
    c = check.comparison
    lines = [f"{check.layout}: differs from the sequential reference"]
    if c.first_divergent_step is not None:
        lines.append(f"  first divergent step: {c.first_divergent_step}")
    if c.differing:
        lines.append("  tensors that differ most:")
        lines += [f"    {entry}" for entry in c.differing]
    return lines


def smaller_instance_line(report: VerifyReport) -> str:
    return f"checked on a smaller instance of the model: {report.smaller_instance} (strategy.verify_options)"


def randomness_line(report: VerifyReport) -> str:
    return ("the model draws random numbers in its forward pass (" + ", ".join(report.nondeterministic)
            + "): each rank draws its own, so layouts differ from the reference for that reason "
            "alone; set them to 0 in model.options to verify the layout")


def noise_line(noisy: list[str]) -> str:
    shown = ", ".join(noisy[:4]) + (f" and {len(noisy) - 4} more" if len(noisy) > 4 else "")
    return (f"{len(noisy)} tensor(s) move by rounding noise alone, in a reordered sequential run too "
            f"(a gradient that is mathematically zero, scaled up by the optimizer): {shown}; "
            f"held to {NOISE_FACTOR:g}x that noise, left out of 'param dev'")
