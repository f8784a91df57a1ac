"""The job as each layout to check: the same model, data, seed, optimizer and global
batch, trimmed to the first steps, with the gradient norm reported at every step."""
from __future__ import annotations

from typing import Any

from orchestrator.config.loading import spec_from_dict
from orchestrator.config.spec import JobSpec
from orchestrator.errors import JobSpecError

# A clip threshold no gradient reaches: every strategy then reports the global gradient
# norm at each step, and the clip factor is exactly 1.
NORM_ONLY_CLIP = 1e30

# `--strategies` names: each a strategy section and the workers it needs at the least.
PRESETS: dict[str, tuple[dict[str, Any], int]] = {
    "ddp": ({"name": "ddp"}, 2),
    "zero1": ({"name": "zero", "stage": 1}, 2),
    "zero2": ({"name": "zero", "stage": 2}, 2),
    "zero3": ({"name": "zero", "stage": 3}, 2),
    "fsdp": ({"name": "fsdp"}, 2),
    "tensor": ({"name": "tensor", "tp": 2, "plan": "auto"}, 2),
    "pipeline": ({"name": "pipeline", "pp": 2}, 2),
    "hybrid": ({"name": "hybrid", "tp": 2, "plan": "auto"}, 4),
}


def trimmed(spec: JobSpec, steps: int, strategy: dict[str, Any], workers: int,
            model_options: dict[str, Any] | None = None) -> JobSpec:
    """`spec` for `steps` steps under `strategy` at `workers`, with nothing else running:
    no chaos, no intermediate checkpoints, no standby workers; on the smaller instance
    of the model that `model_options` (else `strategy.verify_options`) ask for, if any."""
    raw = spec.model_dump(mode="json")
    raw["model"]["options"].update(spec.strategy.verify_options if model_options is None else model_options)
    raw["strategy"] = strategy
    raw["train"].update(steps=steps, validate_every=0, log_every=max(1, steps), audit_samples=False)
    if raw["train"]["grad_clip"] is None:
        raw["train"]["grad_clip"] = NORM_ONLY_CLIP
    raw["scaling"].update(workers=workers, spares=0, backend="elastic")
    raw["checkpoint"].update(every_steps=0, keep=1)
    raw["chaos"] = {}
    raw["failure"].update(max_failures=0)
    return spec_from_dict(raw, base_dir=spec.base_dir)


def reference_spec(spec: JobSpec, steps: int, model_options: dict[str, Any] | None = None) -> JobSpec:
    return trimmed(spec, steps, {"name": "sequential"}, 1, model_options)


def chosen_layouts(spec: JobSpec, names: list[str] | None, workers: int | None) -> dict[str, tuple[dict[str, Any], int]]:
    """Layout name -> (strategy section, workers); by default the job's own strategy.

    Raises:
        JobSpecError: naming an unknown layout and the ones there are.
    """
    if not names:
        own = spec.strategy.model_dump(mode="json")
        return {own["name"]: (own, workers or spec.scaling.max_workers)}
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise JobSpecError([f"--strategies: unknown layout(s) {unknown}; choose from {', '.join(PRESETS)}"])
    return {name: (PRESETS[name][0], max(PRESETS[name][1], workers or 0)) for name in names}
