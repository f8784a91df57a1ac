"""The job spec: job.yaml as typed, documented models.

Each section checks its own keys; `JobSpec` checks what needs several sections at
once but nothing that needs the process layout or the model (config/checks.py runs
those after this validation, and config/loading.py reads files and overrides).
Unknown keys are rejected. Every error names its key path, shows the bad value
and says what to change.

Exercised by: pytest tests/test_spec.py
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

import strategies
from orchestrator.config.messages import did_you_mean
from orchestrator.data.formats import BUILTIN_SOURCES, SUFFIX_FORMATS, SourceKind, kind_of, parse_options


# Validation context key: the spec is a run's recorded job.yaml, read to steer the run.
RECORDED_RUN = "recorded_run"

class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ModelSection(Section):
    """Which model to train."""

    name: str = Field(
        description="A registered model (mlp, cnn, lstm, gpt) or `package.module:function` "
        "returning an nn.Module."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the model's factory, or the "
        "config keys of a Hugging Face model class."
    )
    pretrained: str | None = Field(
        None, description="A local directory written by `save_pretrained` (relative to job.yaml) "
        "to start a Hugging Face model from; nothing is downloaded."
    )
    input_shape: list[int] | None = Field(
        None, description="See each flat input row as this shape, e.g. [3, 32, 32] for an image "
        "model on tabular pixels."
    )

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError(f"input_shape must list positive sizes, got {value}")
        return value


PrepareStep = Literal["dropna", "normalize", "encode_labels", "tokenize_chars", "tokenize"]


class DataSection(Section):
    """Where samples come from and how they are prepared (through Ray Data)."""

    source: str = Field(
        description="`synthetic`, `digits` (scikit-learn's bundled 8x8 digits), `chars` "
        "(character corpus from the Python standard library's sources), or where files are: a "
        "file, a folder, a glob (relative to job.yaml) or a URI (s3://bucket/prefix, gs://...)."
    )
    format: Literal["auto", "parquet", "csv", "json", "images", "text"] = Field(
        "auto", description="The files' format; `auto` takes it from their suffix (.parquet, .csv, "
        ".jsonl/.json, .png/.jpg/.jpeg/.bmp, .txt). Images are labelled by their sub-folder's name; "
        "a text file is one row with a `text` column."
    )
    task: Literal["auto", "classification", "regression", "lm"] = Field(
        "auto", description="Loss and metrics; `auto` takes the source's natural task."
    )
    label_column: str = Field("label", description="Target column of a file source.")
    feature_columns: list[str] | None = Field(
        None, description="Input columns of a file source; default all but the label."
    )
    prepare: list[PrepareStep] = Field(
        default_factory=list,
        description="Preparation steps in order: dropna (drop rows with missing values), "
        "normalize (standardise features with training-split statistics), encode_labels "
        "(map label values to 0..k-1), tokenize_chars (a `text` column to UTF-8 byte ids: windows "
        "of context+1 for task lm, each row's first `context` bytes, zero-padded, to classify texts), "
        "tokenize (the same with the tokenizer file in data.options.tokenizer).",
    )
    validation_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation."
    )
    shard_mb: float = Field(
        32.0, gt=0, description="A file source is prepared into Parquet shards of about this many "
        "MiB on the run's storage, which workers read as they train."
    )
    shuffle_window: int = Field(
        1, ge=1, description="Shards of a stream whose rows are shuffled together each epoch; a batch "
        "mixes streams x shuffle_window shards, and a worker holds two windows of each of its streams."
    )
    streams: int = Field(
        8, ge=1, description="A file source's shards are dealt to this many streams each epoch, and a "
        "global batch takes an equal share of each. A data-parallel rank reads only its streams' "
        "shards when the rank count divides this; it does not depend on the worker count, so resizes "
        "keep the order."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The source's parameters, checked when the job loads: synthetic {samples, "
        "features, classes, noise}; chars {context, max_chars}; tables and text {context, "
        "tokenizer}; images {size: [height, width], mode: L or RGB}.",
    )

    @property
    def is_file(self) -> bool:
        return self.source not in BUILTIN_SOURCES


class OptimizerSection(Section):
    """The optimizer applied to every parameter."""

    name: Literal["sgd", "adam", "adamw"] = Field("adamw", description="Optimizer.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adamw).")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD, needs momentum > 0).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")


class ScheduleSection(Section):
    """Learning-rate schedule over `train.steps`, with optional linear warm-up."""

    name: Literal["constant", "step", "cosine"] = Field("constant", description="Shape after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to `optimizer.lr`.")
    step_size: int = Field(100, gt=0, description="`step`: multiply by gamma every this many steps.")
    gamma: float = Field(0.1, gt=0, description="`step`: decay factor.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="`cosine`: final lr as a share of lr.")


class TrainSection(Section):
    """The loop: length, batch arithmetic, precision, validation."""

    steps: int = Field(100, gt=0, description="Optimizer steps to run.")
    seed: int = Field(0, description="Seeds weights, data order and every RNG stream.")
    global_batch_size: int = Field(
        64, gt=0, description="Samples per optimizer step, the same at every worker count."
    )
    micro_batch_size: int = Field(
        32, gt=0, description="Samples per forward pass on one data-parallel rank."
    )
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm to this.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 runs forward under autocast.")
    deterministic: bool = Field(True, description="Deterministic kernels (slower on GPU).")
    flush_denormal: bool = Field(
        False, description="Treat subnormal floats as zero on the CPU (torch.set_flush_denormal). "
        "A model whose values pass through them (gradients that shrink towards zero, some "
        "initialisations) otherwise computes those steps 10-30x slower on a CPU. Changes "
        "results in their smallest digits; verify's sequential reference does the same."
    )
    compile: bool = Field(
        False, description="torch.compile each block of the model (the whole model when it has "
        "none), after the strategy wraps or shards it; the first steps pay the compilation."
    )
    activation_checkpointing: Literal["none", "selective", "full"] = Field(
        "none", description="Recompute activations in backward instead of keeping them: full "
        "keeps only each block's input; selective keeps matrix products' and attention's outputs "
        "and recomputes the element-wise ops."
    )
    validate_every: int = Field(0, ge=0, description="Validate every N steps (0: only at the end).")
    log_every: int = Field(10, gt=0, description="Progress line every N steps when not on a terminal.")
    step_breakdown: bool = Field(
        False, description="On a GPU, wait for the device at each phase of a step so that metrics.jsonl "
        "times data, compute and optimizer apart (step_data_s, step_compute_s, step_optimizer_s); "
        "it slows the step a little. On CPU they are always recorded."
    )
    profile_step: int = Field(
        0, ge=0, description="Profile this step on every rank (0: none): what its collectives moved, "
        "per operation (calls, bytes, seconds), and how long the step waited for them, into "
        "usage.jsonl's `comm`; the most memory its activations held, as `activation_bytes`. "
        "`orchestrator bench` sets it to a step after the warm-up."
    )
    audit_samples: bool = Field(
        False, description="Write the sample ids each rank trains on to RUN_DIR/samples/ "
        "(to check that every sample of an epoch is used exactly once)."
    )


# Bounds what a job file can ask the planner to consider (every count of a range is checked).
MAX_WORKERS = 4096


class ScalingSection(Section):
    """How many workers and what each holds."""

    workers: int | tuple[int, int] = Field(
        2, description="Worker count, or `[min, max]` for an elastic range."
    )
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL between them.")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="Logical CPUs per worker; default sized to leave room for Ray Data."
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="Torch threads each worker computes with; default: the node's cores "
        "divided by the workers. Fewer leave cores free, for a background checkpoint's writer or for "
        "data loading."
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="Extra Ray resources each worker needs, e.g. a custom "
        "node label {trainer: 1} to keep workers on certain nodes."
    )
    spares: int = Field(
        1, ge=0, le=MAX_WORKERS, description="Warm standby workers (elastic backend): a failed worker is "
        "replaced by one at once instead of waiting for a new process."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for every worker (and the driver, "
        "on the embedded Ray or submitted), e.g. {NCCL_SOCKET_IFNAME: eth0, HF_TOKEN: ...}. A run on "
        "object storage also passes on the driver's AWS_*, GOOGLE_* and AZURE_* variables."
    )
    backend: Literal["elastic", "ray_train"] = Field(
        "elastic", description="elastic: our controller holds the worker actors (fast "
        "recovery, resizes); ray_train: Ray Train's TorchTrainer restarts the group."
    )
    placement: Literal["pack", "spread"] = Field(
        "pack", description="Where new workers go (elastic backend): pack fills the nodes that hold "
        "the job's workers first, so tensor and pipeline groups share a node; spread puts each on "
        "the node with the fewest. Either way ranks on one node are adjacent."
    )

    @field_validator("workers")
    @classmethod
    def _positive(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        low, high = (value, value) if isinstance(value, int) else value
        if low < 1:
            raise ValueError(f"worker counts must be at least 1, got {value}")
        if low > high:
            raise ValueError(f"min workers {low} is above max workers {high}; write [min, max]")
        if high > MAX_WORKERS:
            raise ValueError(f"at most {MAX_WORKERS} workers, got {high}")
        return value

    @property
    def min_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[0]

    @property
    def max_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[1]


class CheckpointSection(Section):
    """When checkpoints are written and how many are kept."""

    every_steps: int = Field(50, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep: int = Field(3, gt=0, description="Keep the newest K checkpoints.")
    async_save: bool = Field(
        True, description="Take the state at the checkpoint's step and write it in the background "
        "while training goes on (one save in flight at a time). False writes it before the next "
        "step. ZeRO's state is written by DeepSpeed in line either way."
    )
    writer: Literal["thread", "process"] = Field(
        "thread", description="Who writes a background save: a thread of the training process "
        "or a process of each rank's own. The thread, where it writes in turns (pace), is handed "
        "the parameters and optimizer state in host memory uncopied (the next optimizer step "
        "writes into spare buffers) and a copy of the rest; where it writes freely, it writes "
        "from a copy made on another thread while the next step computes, as the process does, "
        "from shared memory, never contending with training for the interpreter lock: the one "
        "that hides a save best where cores are free. The process starts with each attempt (a "
        "second or so of CPU taken from the first steps, then idle priority; a few hundred MB "
        "of memory)."
    )
    pace: Literal["auto", "steps", "free"] = Field(
        "auto", description="How the thread writes a background save. steps: only in turns "
        "each step lends it at its end (a slice of bytes, sized to end the write within three "
        "quarters of the steps between checkpoints), so every step pays a little and none "
        "stalls; free: as fast as it goes at idle priority, which costs nothing where a core is "
        "free and stalls the steps beside it where none is; auto: steps where the workers' "
        "threads take every core of the node (CPU training), else free."
    )


class FailureSection(Section):
    """How many worker failures a run survives, and how long a collective may wait."""

    max_failures: int = Field(
        3, ge=0, description="Restarts allowed before the run fails. With the elastic backend, "
        "an attempt that fails with the same error at the same step as the attempt before it "
        "ends the run at once: a deterministic failure is reported, not retried."
    )
    replace_timeout_s: float = Field(
        20.0, gt=0, description="How long to wait for a replacement worker before continuing "
        "with fewer workers (when scaling.workers allows fewer)."
    )
    collective_timeout_s: float = Field(
        30.0, gt=0, description="How long a collective (all-reduce, barrier, ...) waits for "
        "every rank before the attempt fails; the elastic backend names the ranks that never "
        "arrived. Keep it above the longest time one rank may run ahead of another (a slow "
        "first step, a checkpoint written by one rank)."
    )


class ChaosSection(Section):
    """Fault injection, for testing a setup's resilience. Each fault fires once."""

    kill_worker_at_steps: list[int] = Field(
        default_factory=list, description="SIGKILL one worker process right after these steps."
    )
    kill_probability: float = Field(
        0.0, ge=0, le=1, description="Chance, per step, of killing a worker (seeded by chaos.seed)."
    )
    seed: int = Field(0, description="Seeds which steps and which workers the random kills hit.")
    remove_node_at_steps: list[int] = Field(
        default_factory=list,
        description="Remove the node of the last worker (its raylet is killed) after these "
        "steps; never the head node.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.kill_worker_at_steps or self.kill_probability or self.remove_node_at_steps)


class TrackingSection(Section):
    """Experiment tracking beside the run's own files, written by the driver from them."""

    tensorboard: bool = Field(
        False, description="TensorBoard event files in RUN_DIR/tensorboard: every step's metrics "
        "(needs the `tensorboard` package: pip install 'orchestrator[tracking]')."
    )
    mlflow: str | None = Field(
        None, min_length=1, description="MLflow tracking URI: a local database (sqlite:///mlflow.db) or "
        "a tracking server (http://HOST:5000). Logs the job's settings as params, every step's "
        "metrics, the summary and the exported weights (needs `mlflow`)."
    )
    experiment: str | None = Field(
        None, min_length=1, description="MLflow experiment name (default: the job's name)."
    )

    @model_validator(mode="after")
    def _installed(self) -> "TrackingSection":
        from importlib.util import find_spec

        missing = [f"tracking.{key}: needs the {package!r} package (pip install 'orchestrator[tracking]')"
                   for key, package, on in (("tensorboard", "tensorboard", self.tensorboard),
                                            ("mlflow", "mlflow", self.mlflow is not None))
                   if on and find_spec(package) is None]
        if missing:
            raise ValueError("; ".join(missing))
        return self


def _strategy_union() -> Any:
    option_models = tuple(spec.options for spec in strategies.STRATEGY_REGISTRY.values())
    if len(option_models) == 1:
        return option_models[0]
    return Annotated[Union[option_models], Field(discriminator="name")]


class JobSpec(Section):
    """A whole training job."""

    name: str = Field(
        "job", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Run name, used for the default run directory: letters, digits, '.', '_', '-'.",
    )
    model: ModelSection
    data: DataSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: TrainSection = Field(default_factory=TrainSection)
    strategy: _strategy_union() = Field(  # type: ignore[valid-type]
        default_factory=lambda: strategies.get_strategy("ddp").options(),
        description="Parallelism strategy; `name` picks it, the other keys are its options.",
    )
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    failure: FailureSection = Field(default_factory=FailureSection)
    chaos: ChaosSection = Field(default_factory=ChaosSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)

    # Where job.yaml lives; relative data paths resolve against it. Not a job.yaml key.
    base_dir: Path = Field(default=Path("."), exclude=True)
    _format: str | None = PrivateAttr(default=None)  # a file source's, found when the job loads

    @model_validator(mode="before")
    @classmethod
    def _known_strategy(cls, raw: Any) -> Any:
        # Checked before the union so the error lists the registered names.
        strategy = raw.get("strategy") if isinstance(raw, dict) else None
        if isinstance(strategy, dict) and "name" not in strategy:  # only other keys set: the default's
            raw = {**raw, "strategy": {"name": "ddp", **strategy}}
            strategy = raw["strategy"]
        name = strategy.get("name") if isinstance(strategy, dict) else None
        if name is not None and (not isinstance(name, str) or name not in strategies.STRATEGY_REGISTRY):
            valid = ", ".join(sorted(strategies.STRATEGY_REGISTRY))
            hint = did_you_mean(name, strategies.STRATEGY_REGISTRY)
            raise ValueError(f"strategy.name: unknown strategy {name!r}{hint}; registered strategies: {valid}")
        return raw

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> "JobSpec":
        problems: list[str] = []
        # A run's recorded job, read to steer the run from another machine: what this
        # machine has (the model's module, data files) was checked where it launched.
        here = not (info.context or {}).get(RECORDED_RUN)
        if self.optimizer.nesterov and (self.optimizer.name != "sgd" or self.optimizer.momentum == 0):
            problems.append(
                "optimizer.nesterov: true needs optimizer.name: sgd with optimizer.momentum > 0 "
                f"(got name {self.optimizer.name!r}, momentum {self.optimizer.momentum})"
            )
        problems += self._source_problems(here)
        # model.options are checked against the model's code after this (config/checks.py):
        # importing the code means importing torch, which the schema itself does not need.
        if here and self.model.pretrained is not None and not self.pretrained_path.is_dir():
            problems.append(f"model.pretrained: {str(self.pretrained_path)!r} is not a directory")
        strategy_check = strategies.get_strategy(self.strategy.name).check_job
        if strategy_check is not None:
            problems += strategy_check(self.strategy, self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _source_problems(self, here: bool) -> list[str]:
        """Where the data is, what format, and its options; the format is kept for later."""
        from orchestrator.data.locations import format_of, is_glob
        from orchestrator.run.storage import is_uri

        data, problems = self.data, []
        suffix = Path(data.source.rstrip("/")).suffix.lower()
        unknown = (f"data.source: {data.source!r} is neither a built-in source ({', '.join(BUILTIN_SOURCES)}) "
                   f"nor files of a known format ({', '.join(SUFFIX_FORMATS)}); set data.format")
        if data.is_file and (here or data.format != "auto" or suffix in SUFFIX_FORMATS):
            local = not is_uri(data.source) and not is_glob(data.source)
            if local and suffix and suffix not in SUFFIX_FORMATS and data.format == "auto":
                problems.append(unknown)
            elif here and local and not self.data_path.exists():
                problems.append(f"data.source: file or folder {str(self.data_path)!r} does not exist")
            else:
                self._format = format_of(data.source, data.format, self.base_dir)
                if self._format is None:
                    problems.append(unknown)
        try:
            parse_options(self.source_kind, data.options)
        except ValueError as error:
            problems.append(str(error))
        return problems

    @property
    def source_kind(self) -> SourceKind:
        return kind_of(self.data.source, self._format)

    @property
    def source_options(self):
        """`data.options` as the source's typed options (data/formats.py)."""
        return parse_options(self.source_kind, self.data.options)

    @property
    def pretrained_path(self) -> Path | None:
        return None if self.model.pretrained is None else (self.base_dir / self.model.pretrained).resolve()

    @property
    def data_path(self):
        """A file source's location: a local path, or an ObjectPath for a URI."""
        from orchestrator.data.locations import location

        return location(self.data.source, self.base_dir)

    @property
    def source_files(self):
        """A file source's files and format (data/locations.py). Raises DataError."""
        from orchestrator.data.locations import SourceFiles

        return SourceFiles.find(self.data.source, self.data.format, self.base_dir)

    @property
    def source_format(self) -> str | None:
        """A file source's format (parquet, csv, json, images, text), as found when the job loaded."""
        return self._format

    @property
    def resolved_task(self) -> str:
        if self.data.task != "auto":
            return self.data.task
        return self.source_kind.task
