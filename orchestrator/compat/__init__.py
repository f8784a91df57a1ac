"""Reaches into a library's internals, one module per library, each with a version guard.

The strategies' reaches into DeepSpeed and torch live in strategies/compat/ (the
strategies package never imports the orchestrator); this package holds Ray's.
"""
