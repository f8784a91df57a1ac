"""The error every model setting problem raises."""


class ModelConfigError(ValueError):
    """A ``model.*`` setting in the job spec that cannot be used.

    Args:
        key: dotted path of the offending setting, e.g. ``model.options.width``.
        message: what is wrong and what to change.
    """

    def __init__(self, key: str, message: str):
        # Both go to ValueError so that args round-trip through pickle (Ray workers).
        super().__init__(key, message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"
