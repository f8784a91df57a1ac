"""A layout's run against the sequential reference: per-step loss, the global gradient
norm, and every parameter and buffer after the last step, by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from orchestrator.run.export import load_weights
from orchestrator.run.files import RunFiles
from orchestrator.run.records import RunRecords

# Parameters are held to a looser tolerance than losses: a few optimizer steps scale up
# the rounding differences of the gradients.
PARAMETER_TOLERANCE_FACTOR = 100
# A tensor whose gradient is mathematically zero (an attention key bias: softmax does
# not see it) moves by rounding noise alone, and Adam turns that noise into whole steps.
# A second sequential run that only sums in another order (see check.Reference) shows
# how far such a tensor wanders by itself; a layout may wander as far, times this.
NOISE_FACTOR = 3.0


@dataclass
class ModelFacts:
    """What is known about the model's tensors, to explain the ones that differ."""

    shared: dict[str, list[str]] = field(default_factory=dict)  # name -> other names of it
    buffers: set[str] = field(default_factory=set)
    plan: dict[str, str] = field(default_factory=dict)  # tensor plan: module -> style
    batch_norm: set[str] = field(default_factory=set)  # buffers of batch-norm layers

    def explain(self, name: str) -> str:
        notes = []
        partners = self.shared.get(name) or [n for n, others in self.shared.items() if name in others]
        if partners:
            notes.append(f"shared with {', '.join(partners)}")
        if name in self.batch_norm:
            notes.append("a batch-norm running statistic: each data-parallel rank updates it from its "
                         "own micro-batches and rank 0's is kept; nn.SyncBatchNorm computes it over the "
                         "whole batch, strategy.verify: false accepts the difference")
        elif name in self.buffers:
            notes.append("a buffer: changed in forward, not kept in step across ranks")
        module = name.rpartition(".")[0]
        if self.plan:
            style = self.plan.get(module)
            notes.append(f"split by the tensor plan ({style})" if style else "not in the tensor plan")
        return "; ".join(notes)


@dataclass
class Comparison:
    loss_deviation: float
    grad_norm_deviation: float | None
    parameter_deviation: float
    worst_parameter: str | None
    first_divergent_step: int | None
    differing: list[str]  # the tensors over tolerance, worst first, each with what is known
    noisy: list[str] = field(default_factory=list)  # tensors set by rounding noise in the reference too

    def passed(self) -> bool:
        return self.first_divergent_step is None and not self.differing


def compare_runs(reference: Path, layout: Path, rtol: float, facts: ModelFacts,
                 reordered: Path | None = None) -> Comparison:
    """`reordered`: the reference summed in another order, whose distance from the
    reference is each tensor's rounding noise (None: no noise allowance)."""
    want, got = RunRecords(reference).steps(), RunRecords(layout).steps()
    if len(got) != len(want):
        raise ValueError(f"the layout ran {len(got)} steps, the reference {len(want)}")
    loss = [_relative(g["loss"], w["loss"]) for g, w in zip(got, want)]
    norms = [_relative(g["grad_norm"], w["grad_norm"]) for g, w in zip(got, want)
             if "grad_norm" in g and "grad_norm" in w]
    diverged = [w["step"] for g, w, d in zip(got, want, loss) if d > rtol]
    diverged += [w["step"] for g, w in zip(got, want)
                 if "grad_norm" in g and "grad_norm" in w and _relative(g["grad_norm"], w["grad_norm"]) > rtol]
    tensors = _tensor_deviations(RunFiles(reference).weights, RunFiles(layout).weights)
    limit = rtol * PARAMETER_TOLERANCE_FACTOR
    noise = _noise(reference, reordered, rtol, facts) if reordered else {}
    noisy = {name for name, d in noise.items() if d > limit}
    over = [(name, d) for name, d in tensors if d > max(limit, NOISE_FACTOR * noise.get(name, 0.0))]
    settled = [(name, d) for name, d in tensors if name not in noisy]
    return Comparison(
        loss_deviation=max(loss, default=0.0),
        grad_norm_deviation=max(norms) if norms else None,
        parameter_deviation=settled[0][1] if settled else 0.0,
        worst_parameter=settled[0][0] if settled and settled[0][1] > 0 else None,
        first_divergent_step=min(diverged) if diverged else None,
        differing=[_describe(name, d, facts) for name, d in over[:5]],
        noisy=sorted(noisy),
    )


def _noise(reference: Path, reordered: Path, rtol: float, facts: ModelFacts) -> dict[str, float]:
    """Each parameter's distance between the reference and its reordered run; nothing
    when the reordering changed the math itself (its losses differ: batch statistics
    over a smaller micro-batch). Buffers get no allowance: they are not optimized, and
    one updated per forward pass counts passes, which the reordering changes."""
    losses = [_relative(r["loss"], w["loss"]) for r, w in zip(RunRecords(reordered).steps(), RunRecords(reference).steps())]
    if max(losses, default=0.0) > rtol:
        return {}
    noise = _tensor_deviations(RunFiles(reference).weights, RunFiles(reordered).weights)
    return {name: d for name, d in noise if name not in facts.buffers}


def _describe(name: str, deviation: float, facts: ModelFacts) -> str:
    known = facts.explain(name)
    return f"{name} (relative deviation {deviation:.1e}{'; ' + known if known else ''})"


def _tensor_deviations(reference: Path, layout: Path) -> list[tuple[str, float]]:
    """(name, |layout - reference| / |reference|) for every tensor, worst first; a tensor
    one side lacks counts as infinitely far."""
    want, got = load_weights(reference), load_weights(layout)
    deviations = []
    for name in sorted(set(want) | set(got)):
        if name not in want or name not in got or want[name].shape != got[name].shape:
            deviations.append((name, float("inf")))
            continue
        a, b = got[name].double(), want[name].double()
        scale = max(float(b.norm()), 1e-12)
        deviations.append((name, float((a - b).norm()) / scale))
    return sorted(deviations, key=lambda item: -item[1])


def _relative(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-12)
