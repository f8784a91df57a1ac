"""The `orchestrator` command: parse arguments and delegate."""
from orchestrator.cli.commands import app

__all__ = ["app"]
