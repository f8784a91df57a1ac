"""Work that should take only the CPU that training leaves.

On CPU workers training keeps every core busy; a background checkpoint write, a spare's
imports and a checkpoint writer process (once started) run beside it. At Linux's SCHED_IDLE
they get a core only when nothing else wants it, so they cannot slow the steps by
taking its share. An unprivileged process cannot raise a priority back, which is why
this lowers one thread, and processes inherit it from the thread that starts them.
"""
from __future__ import annotations

import os


def run_when_idle() -> None:
    """Give the calling thread the lowest CPU priority the OS offers (best effort)."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread, on Linux
        except OSError:
            pass
