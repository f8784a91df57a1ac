"""`orchestrator verify`: every parallel layout proves itself on the job's own model.

    reference.py  the sequential reference: the job's first steps in one plain process
    layouts.py    the job as each layout to check, trimmed to those steps
    compare.py    per-step loss, gradient norm and final tensors against the reference
    check.py      the reference once (and its reordered twin), then each layout against it
    runner.py     `orchestrator verify`: each layout on fresh workers
    preflight.py  `launch`'s check of its own layout, on the workers it then trains on
    render.py     the rows and the explanations
"""
