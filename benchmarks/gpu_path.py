"""The GPU path on one GPU: fp32, bf16, torch.compile and activation checkpointing on a
GPT of about 85M parameters, through the training loop every worker runs (DDP over an
NCCL process group of one), with model FLOPs utilisation from the metrics.

Each configuration trains the same job from the same seed. Reported per configuration:
the median step time after the first steps (compilation included in those), tokens per
second, model TFLOP/s and MFU (orchestrator/training/flops.py), the peak of CUDA memory
allocated, and the largest per-step loss deviation from the configuration it changes one
option of (recomputation must keep the losses; compilation and bf16 round differently).
A few steps of the same job on the machine's CPU cores (the sequential strategy, every
core) give the sequential-on-CPU time beside one GPU.

    python benchmarks/gpu_path.py --prepare-only        # where Ray runs: writes the data file
    python benchmarks/gpu_path.py                       # on a GPU machine: writes the results
    python benchmarks/gpu_path.py --steps 3 --depth 2 --device cpu   # a quick dry run, no GPU

The data file (benchmarks/data/gpu_path.npz, not committed) is the job's prepared data,
so a GPU machine without Ray can run the loop; with Ray present it is made on first use.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "benchmarks" / "data" / "gpu_path.npz"
RESULTS = ROOT / "benchmarks" / "results" / "gpu_path.md"
WARMUP_STEPS = 5

# (name, precision, compile, activation checkpointing, the configuration it is compared with)
CONFIGS = [
    ("fp32", "fp32", False, "none", None),
    ("fp32 + full recompute", "fp32", False, "full", "fp32"),
    ("bf16", "bf16", False, "none", "fp32"),
    ("bf16 + compile", "bf16", True, "none", "bf16"),
    ("bf16 + compile + selective", "bf16", True, "selective", "bf16 + compile"),
    ("bf16 + compile + full", "bf16", True, "full", "bf16 + compile"),
]


def job(args) -> dict:
    return {
        "name": "gpt-gpu-path",
        "model": {"name": "gpt", "options": {"depth": args.depth, "width": args.width, "heads": args.heads}},
        "data": {"source": "chars", "prepare": ["tokenize_chars"],
                 "options": {"context": args.context, "max_chars": args.max_chars}},
        "optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.1},
        "train": {"steps": args.steps, "seed": 0, "global_batch_size": args.batch,
                  "micro_batch_size": args.batch, "deterministic": False},
        "strategy": {"name": "ddp"},
        "scaling": {"workers": 1, "spares": 0},
        "checkpoint": {"every_steps": 0},
    }


# ---- the prepared data, as a file ----------------------------------------------------------
def save_data(data, path: Path) -> None:
    import numpy as np

    meta = {k: getattr(data, k) for k in ("task", "input_dim", "output_dim", "vocab_size", "context")}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train_inputs=data.train.inputs, train_targets=data.train.targets,
             val_inputs=data.validation.inputs, val_targets=data.validation.targets,
             meta=np.array(json.dumps(meta)))


def load_data(path: Path):
    import numpy as np

    from orchestrator.data.pipeline import PreparedData, Split

    arrays = np.load(path)
    meta = json.loads(str(arrays["meta"]))
    return PreparedData(Split(arrays["train_inputs"], arrays["train_targets"]),
                        Split(arrays["val_inputs"], arrays["val_targets"]), **meta)


def prepared_data(spec, path: Path):
    if path.exists():
        return load_data(path)
    import ray

    from orchestrator.data.pipeline import prepare_data

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        data = prepare_data(spec)
    finally:
        ray.shutdown()
    save_data(data, path)
    return data


# ---- one configuration ----------------------------------------------------------------------
def train_one(spec, data, run_dir: Path, device) -> dict:
    """Train `spec` in this process over a process group of one; returns its numbers."""
    import torch
    import torch.distributed as dist

    from orchestrator.training.context import WorkerContext, configure_runtime
    from orchestrator.training.loop import train

    configure_runtime(spec, os.cpu_count() if device.type == "cpu" else 1)
    if device.type == "cuda":
        torch._dynamo.reset()  # every compiled configuration pays its own compilation
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    if spec.strategy.name != "sequential":
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        train(WorkerContext(spec=spec, run_dir=run_dir, data=data, rank=0, world_size=1, device=device))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir)  # its checkpoint and weights: a gigabyte each configuration
    steady = records[WARMUP_STEPS:] or records
    return {
        "losses": [r["loss"] for r in records],
        "wall_s": time.perf_counter() - started,
        "first_steps_s": sum(r["step_time_s"] for r in records[:WARMUP_STEPS]),
        "step_ms": 1000 * statistics.median(r["step_time_s"] for r in steady),
        "model_tflops": statistics.median(r.get("model_tflops", 0.0) for r in steady),
        "mfu": statistics.median(r.get("mfu", 0.0) for r in steady),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "val_loss": records[-1].get("val_loss"),
    }


def summarise(runs: list[dict]) -> dict:
    """Medians over the repeats; the first repeat's losses and start (its compilation cold)."""
    summary = dict(runs[0])
    for key in ("step_ms", "model_tflops", "mfu"):
        summary[key] = statistics.median(run[key] for run in runs)
    summary["step_ms_each"] = [run["step_ms"] for run in runs]
    return summary


def deviation(losses: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference))


# ---- the report -----------------------------------------------------------------------------
def render(args, results: dict, cpu: dict | None, device_name: str, tokens_per_step: int) -> str:
    lines = [
        "# The GPU path on one GPU",
        "",
        f"Device: {device_name}. Job: GPT depth {args.depth}, width {args.width}, heads {args.heads}, "
        f"context {args.context}, batch {args.batch} ({tokens_per_step:,} tokens per step), AdamW, "
        f"{args.steps} steps, DDP over an NCCL process group of one, `deterministic: false`. "
        f"Step time is the median after the first {WARMUP_STEPS} steps (which include compilation), "
        f"then the median over {args.repeats} alternating repeats (each repeat's in brackets); first "
        "steps and loss deviations are the first repeat's.",
        "",
        "    " + shlex.join(["python", "benchmarks/gpu_path.py", *sys.argv[1:]]),
        "",
        "| configuration | step (ms) | tokens/s | model TFLOP/s | MFU | peak CUDA memory (GiB) "
        "| first steps (s) | max loss deviation | from |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, *_rest, base in CONFIGS:
        if name not in results:
            continue
        r = results[name]
        dev = f"{deviation(r['losses'], results[base]['losses']):.1e}" if base in results else ""
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        lines.append(
            f"| {name} | {r['step_ms']:.1f} ({', '.join(f'{v:.1f}' for v in r['step_ms_each'])}) | {tokens_per_step / r['step_ms'] * 1000:,.0f} | "
            f"{r['model_tflops']:.1f} | {100 * r['mfu']:.1f}% | {peak} | {r['first_steps_s']:.1f} | "
            f"{dev} | {base or ''} |"
        )
    if cpu is not None:
        fp32 = results.get("fp32")
        ratio = f", {cpu['step_ms'] / fp32['step_ms']:.0f}x the GPU's fp32 step" if fp32 else ""
        lines += ["", f"The same job sequentially on the machine's {os.cpu_count()} CPU cores (fp32, "
                  f"{args.cpu_steps} steps): {cpu['step_ms'] / 1000:.2f} s per step{ratio}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="alternating repeats; medians reported")
    parser.add_argument("--cpu-steps", type=int, default=3, help="steps on the CPU cores; 0 skips")
    parser.add_argument("--configs", default=",".join(c[0] for c in CONFIGS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args()

    import tempfile

    import torch

    from tests.distributed import make_spec

    base = job(args)
    data = prepared_data(make_spec(base), args.data)
    if args.prepare_only:
        print(f"wrote {args.data}: {len(data.train)} training samples")
        return
    device = torch.device(args.device)
    wanted = args.configs.split(",")
    runs: dict[str, list[dict]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="gpu-path-"))
    for repeat in range(args.repeats):  # alternating: each repeat runs every configuration once
        for name, precision, compiled, recompute, _base in CONFIGS:
            if name not in wanted:
                continue
            spec = make_spec(base, train__precision=precision, train__compile=compiled,
                             train__activation_checkpointing=recompute, scaling__use_gpu=device.type == "cuda")
            run = train_one(spec, data, scratch / f"run-{repeat}", device)
            runs.setdefault(name, []).append(run)
            print(json.dumps({"config": name, "repeat": repeat, **{k: v for k, v in run.items() if k != "losses"}}),
                  flush=True)
    results = {name: summarise(each) for name, each in runs.items()}
    cpu = None
    if args.cpu_steps:
        spec = make_spec(base, strategy={"name": "sequential"}, train__steps=args.cpu_steps)
        cpu = train_one(spec, data, scratch / "cpu", torch.device("cpu"))
        print(json.dumps({"config": "cpu", "step_ms": cpu["step_ms"]}), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = render(args, results, cpu, name, args.batch * args.context)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    print(report)


if __name__ == "__main__":
    main()
