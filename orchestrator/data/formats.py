"""The kinds of data source a job can name, each with its typed options and natural
task: known without reading anything (the job spec checks `data.options` with these).

A job names a built-in source (`synthetic`, `digits`, `chars`) or a location: a file,
a folder, a glob or a URI. A location's files are `tables` (Parquet, CSV, JSON lines),
`images` (labelled by their sub-folder's name) or `text` (one row per file).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticOptions(Options):
    samples: int = Field(4096, gt=0, description="Rows to generate.")
    features: int = Field(16, gt=0, description="Feature columns.")
    classes: int = Field(4, gt=1, description="Classes (classification).")
    noise: float = Field(0.5, ge=0, description="Noise around each class's centre, or on the target.")


class CharsOptions(Options):
    context: int = Field(64, gt=0, description="Tokens per training window.")
    max_chars: int = Field(400_000, gt=0, description="Characters of standard-library source to read.")


class TextOptions(Options):
    context: int = Field(64, gt=0, description="Tokens per window (lm), or the tokens a text is cut or "
                         "padded to (classification).")
    tokenizer: str | None = Field(None, description="A tokenizer.json (`tokenizers`/`transformers`), "
                                  "relative to job.yaml, for the `tokenize` step.")


class ImageOptions(Options):
    size: tuple[int, int] = Field((32, 32), description="Every image is resized to [height, width].")
    mode: Literal["L", "RGB"] = Field("L", description="L (grey, one channel) or RGB (three).")


@dataclass(frozen=True)
class SourceKind:
    name: str
    options: type[Options]
    task: str  # the task `data.task: auto` takes
    about: str


SOURCES = {kind.name: kind for kind in (
    SourceKind("synthetic", SyntheticOptions, "classification", "seeded Gaussian blobs or a noisy linear target"),
    SourceKind("digits", Options, "classification", "scikit-learn's bundled 8x8 digits images"),
    SourceKind("chars", CharsOptions, "lm", "text of the Python standard library's own sources"),
    SourceKind("tables", TextOptions, "classification", "Parquet, CSV or JSON-lines files: feature and "
               "label columns, or a `text` column"),
    SourceKind("images", ImageOptions, "classification", "image files labelled by their sub-folder's name"),
    SourceKind("text", TextOptions, "lm", "text files, one row (`text`) per file"),
)}
BUILTIN_SOURCES = ("synthetic", "digits", "chars")
FORMATS = ("parquet", "csv", "json", "images", "text")
SUFFIX_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json",
                  ".png": "images", ".jpg": "images", ".jpeg": "images", ".bmp": "images", ".txt": "text"}
FORMAT_KINDS = {"parquet": "tables", "csv": "tables", "json": "tables", "images": "images", "text": "text"}


def kind_of(source: str, file_format: str | None) -> SourceKind:
    """The kind of a built-in source by its name, or of a location by its files' format."""
    if source in BUILTIN_SOURCES:
        return SOURCES[source]
    return SOURCES[FORMAT_KINDS[file_format]] if file_format else SOURCES["tables"]


def parse_options(kind: SourceKind, options: dict) -> Options:
    """`data.options` as the kind's typed options. Raises ValueError naming each bad key."""
    from pydantic import ValidationError

    try:
        return kind.options(**options)
    except ValidationError as error:
        valid = ", ".join(kind.options.model_fields) or "none"
        lines = []
        for problem in error.errors():
            key = ".".join(str(p) for p in problem["loc"])
            if problem["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, list(kind.options.model_fields), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                lines.append(f"data.options.{key}: unknown option for {kind.name} data{hint}; valid: {valid}")
            else:
                lines.append(f"data.options.{key}: {problem['msg']} (got {problem.get('input')!r})")
        raise ValueError("\n".join(lines)) from None
