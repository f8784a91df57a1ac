"""Exceptions the orchestrator raises. All picklable, so they cross Ray process boundaries."""
from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose."""


class JobSpecError(OrchestratorError):
    """job.yaml (or a --set override) asks for something invalid.

    Each problem names the key path, shows the bad value and says what to change.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def __reduce__(self):
        return (type(self), (self.problems,))


class DataError(OrchestratorError):
    """The data source cannot be read or prepared as the job asks."""


class ResourceError(OrchestratorError):
    """The cluster cannot host the job as sized."""


class RunDirError(OrchestratorError):
    """The run directory cannot be used as asked (it is a file, unwritable, holds
    another run, or another driver holds it)."""


class TrackingError(OrchestratorError):
    """A tracker the job asks for (tracking: in job.yaml) cannot be opened."""


class ControlError(OrchestratorError):
    """A request to a running job (scale, stop) that cannot be carried out."""


class CheckpointError(OrchestratorError):
    """No usable checkpoint where one was required."""


class TrainingError(OrchestratorError):
    """Training failed on the workers and could not be recovered."""


class VerificationError(OrchestratorError):
    """The job's layout does not train its model as one process does (`launch`'s check)."""
