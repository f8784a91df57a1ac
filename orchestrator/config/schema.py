"""job.yaml's JSON Schema, generated from the spec: editors complete and check job files
with it (`# yaml-language-server: $schema=...` at the top of a job file).

    orchestrator schema > job.schema.json

Shipped as `job.schema.json` at the repository root; tests/test_schema.py keeps it the
same as what this generates. It checks structure (keys, types, choices); what needs the
data, the model or the layout is `orchestrator validate`'s.
"""
from __future__ import annotations

import json
from typing import Any

from orchestrator.config.spec import JobSpec

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def job_schema() -> dict[str, Any]:
    schema = JobSpec.model_json_schema(mode="validation")
    schema["properties"].pop("base_dir", None)  # where the file lives, not a key of it
    return {"$schema": SCHEMA_URI, "title": "orchestrator job.yaml", **{k: v for k, v in schema.items()
                                                                          if k != "title"}}


def schema_text() -> str:
    return json.dumps(job_schema(), indent=2, sort_keys=True) + "\n"
