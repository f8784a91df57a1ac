"""Page faults, step time and resident memory of one training process under three
malloc settings.

- `default`: glibc's own;
- `mmap_above_32mib`: the CPU workers' settings (orchestrator/training/allocator.py)
  without `M_MMAP_MAX=0`, so blocks above glibc's 32 MiB ceiling for the mmap threshold
  are mapped and unmapped each step;
- `workers`: the CPU workers' settings.

A transformers GPT-2 built from a config (random weights: 4 layers, 256 wide, vocab
8000, 256 tokens a sample) trains on a thread, as a worker's loop does, with AdamW, one
torch thread. Each variant runs in a fresh process (malloc's settings are per process);
the variants alternate, and every number is the median over the repeats of each
process's median step (steps 4-11 of 12). Peak RSS is the process's. Then a one-off
spike passes, as a resume's loaded state does: 1.2 GB of host tensors held over a step
and freed, `give_back_freed_memory` (what a worker calls after a resume), two more steps;
"RSS after the spike" is resident memory then, against before it.

    python benchmarks/allocator_faults.py                 # batch 8, 3 repeats
    python benchmarks/allocator_faults.py --batch 4 --repeats 5
    python benchmarks/allocator_faults.py --vocab 50257    # logits above a thread's 64 MiB heaps
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from alternation import alternate
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "allocator_faults.md"
VARIANTS = ("default", "mmap_above_32mib", "workers")
STEPS, TIMED_FROM = 12, 4


def one_process(variant: str, batch: int, vocab: int) -> None:
    import ctypes
    import resource
    import threading
    import time

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.training.allocator import M_MMAP_MAX, give_back_freed_memory, keep_freed_memory

    torch.set_num_threads(1)
    if variant != "default" and not keep_freed_memory():
        raise SystemExit("glibc's malloc settings could not be applied here")
    if variant == "mmap_above_32mib" and ctypes.CDLL(None).mallopt(M_MMAP_MAX, 1 << 16) != 1:
        raise SystemExit("mallopt(M_MMAP_MAX) failed")  # glibc's default count
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=vocab, n_positions=256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, 256), generator=torch.Generator().manual_seed(0))
    faults, seconds = [], []
    rss: dict[str, float] = {}

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def train() -> None:
        for _ in range(STEPS):
            before, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            step()
            seconds.append(time.perf_counter() - started)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        rss["before"] = resident_mb()
        spike = [torch.ones(15_000_000) for _ in range(20)]
        step()
        del spike
        give_back_freed_memory()
        step()
        step()
        rss["after"] = resident_mb()

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    print(json.dumps({
        "faults": statistics.median(faults[TIMED_FROM:]),
        "step_ms": 1000 * statistics.median(seconds[TIMED_FROM:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "spike_kept_mb": rss["after"] - rss["before"],
    }))


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def measure(variant: str, batch: int, vocab: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--one", variant, "--batch", str(batch), "--vocab", str(vocab)],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def render(args, runs: dict[str, list[dict]]) -> str:
    lines = [
        "# Page faults, step time and resident memory under three malloc settings",
        "",
        f"transformers GPT-2 from a config (4 layers, 256 wide, vocab {args.vocab}), batch {args.batch} x 256 "
        f"tokens, AdamW, one torch thread, trained on a thread; median of {args.repeats} alternating "
        "repeats (each repeat's value in brackets).",
        "",
        "    " + shlex.join(["python", "benchmarks/allocator_faults.py", *sys.argv[1:]]),
        "",
        "| malloc | faults / step | step (ms) | vs default | peak RSS (MB) | RSS after the spike, vs before (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = statistics.median(r["step_ms"] for r in runs["default"])
    for variant in VARIANTS:
        step = statistics.median(r["step_ms"] for r in runs[variant])
        each = ", ".join(f"{r['step_ms']:.0f}" for r in runs[variant])
        lines.append(f"| {variant} | {statistics.median(r['faults'] for r in runs[variant]):,.0f} | "
                     f"{step:.0f} ({each}) | {step / base:.3f} | "
                     f"{statistics.median(r['peak_rss_mb'] for r in runs[variant]):,.0f} | "
                     f"{statistics.median(r['spike_kept_mb'] for r in runs[variant]):+,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        one_process(args.one, args.batch, args.vocab)
        return
    runs = alternate(VARIANTS, args.repeats, lambda variant: measure(variant, args.batch, args.vocab))
    report = render(args, runs)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
