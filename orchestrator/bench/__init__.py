"""`orchestrator bench`: was distributing this job worth it?

The job's sequential reference (one plain process, the whole machine), then each
strategy at each worker count through the real launcher, repeated and alternated;
speedup, efficiency, convergence against the reference and what every worker used,
written as results.json, report.md and report.html with plots.
"""
