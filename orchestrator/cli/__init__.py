"""The `orchestrator` command: parse arguments and delegate."""
from __future__ import annotations

import os
import sys

from orchestrator.cli.commands import app

__all__ = ["app", "main"]


def main() -> None:
    """The console entry point: every path ends in exit 0, 1 or 2 with a message.
    An error no command expected is reported in one line (ORCHESTRATOR_DEBUG=1 shows
    its traceback), with exit 1."""
    try:
        app()
    except Exception as error:  # SystemExit (typer's exits) is not an Exception
        if os.environ.get("ORCHESTRATOR_DEBUG"):
            raise
        print(f"error: unexpected {type(error).__name__}: {error}\n"
              "  set ORCHESTRATOR_DEBUG=1 to see where; please report it", file=sys.stderr)
        sys.exit(1)
