"""`orchestrator verify`: every parallel layout proves itself on the job's own model.

    reference.py  the sequential reference: the job's first steps in one plain process
    layouts.py    the job as each layout to check, trimmed to those steps
    compare.py    per-step loss, gradient norm and final parameters against the reference
    runner.py     runs the reference and each layout, and reports
"""
