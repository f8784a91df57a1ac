"""The job's model, built the same way wherever it is needed: on the workers, and on
the meta device for `validate` and `plan`."""
from __future__ import annotations

from torch import nn

import models
from orchestrator.config.spec import JobSpec


def build_job_model(spec: JobSpec, arguments: dict[str, int | None]) -> nn.Module:
    """Build the model `spec` names, with the data-derived `arguments` (see
    `PreparedData.model_arguments`). Weights come from torch's global RNG, or from
    `model.pretrained`."""
    pretrained = spec.pretrained_path
    return models.build_model(
        spec.model.name,
        spec.model.options,
        **arguments,
        pretrained=None if pretrained is None else str(pretrained),
        input_shape=None if spec.model.input_shape is None else tuple(spec.model.input_shape),
    )
