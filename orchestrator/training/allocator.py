"""glibc's malloc told to keep the memory a training step frees, for the next step.

A step allocates and frees the same blocks every time (activations, gradients, DDP's
buckets). With glibc's defaults the freed blocks go back to the kernel (an mmap'd block is
unmapped, a heap's free top is trimmed, a thread arena's spare heap is deleted), and the
next step takes them again, zeroed, one page fault per 4 KiB. A DDP worker at global batch
2048 faulted 1,700 times a step this way: 5.7 % of its step time
(benchmarks/results/step_tax_page_faults.md). Told to keep what it frees, it faults
almost never after the first steps.

One setting cannot be made by the process itself once it runs: how many arenas malloc
keeps. A Ray actor trains on a thread of its pool, and a thread's own arena grows in heaps
of at most 64 MiB, so a larger block (GPT-2's logits at vocabulary 50,257: 411 MB) is
mapped and unmapped every step whatever mmap's settings say: 100,000 faults a step for
each such block. With one arena every thread allocates from the main heap, which has no
such limit (benchmarks/results/allocator_faults_large_vocab.md: 402,000 faults a step
to 1, the step 0.75 of before). Threads take their arena at their first allocation,
before any of our code runs in a Ray worker, so the run's Ray processes are started with
`MALLOC_ARENA_MAX=1` (`process_start_environment`): an embedded Ray's inherit it from the
driver, Ray's own processes included; a joined cluster's workers take it from the run's
runtime environment.

The cost is resident memory: a worker holds on to its peak use instead of giving it back
between steps. Where a one-off spike passes (a resume's loaded state), `give_back_freed_memory`
returns it. Only workers that train on the host take these settings: a GPU worker's step
allocates on the device, and the host memory it frees (a model built on the host, then
moved) should go back. A user who sets glibc's malloc settings themselves (any `MALLOC_*_`
variable, `MALLOC_ARENA_MAX` other than 1, or `glibc.malloc` tunables) keeps theirs.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

# The environment variables glibc reads for the same settings when a process starts.
ENVIRONMENT_NAMES = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_TOP_PAD: "MALLOC_TOP_PAD_",
                     M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", M_MMAP_MAX: "MALLOC_MMAP_MAX_"}

SETTINGS = {
    # Free memory at the top of a heap is never given back as it is freed (-1: mallopt(3)),
    # only by give_back_freed_memory. A language model's step frees its logits and their
    # gradient together: at vocabulary 50,257 more than any fixed threshold would keep.
    M_TRIM_THRESHOLD: -1,
    # A heap grows (and, shrinking, stays) 256 MiB beyond what it needs; untouched pages cost
    # no memory, and a thread arena's spare heaps are not deleted between steps.
    M_TOP_PAD: 256 << 20,
    # Blocks under 32 MiB (glibc's own ceiling for its sliding threshold) come from a heap,
    # where they can be reused, rather than from an mmap of their own that free unmaps.
    M_MMAP_THRESHOLD: 32 << 20,
    # Larger ones too (a language model's logits: 65 MB for GPT-2 at batch 8 x 256 tokens,
    # vocab 8000): glibc refuses a threshold above 32 MiB, and would otherwise map and
    # unmap them every step (benchmarks/results/allocator_faults.md: 48,000 faults a step
    # left, 7 % of it). A thread's own arena still maps a block larger than its 64 MiB
    # heaps: hence AT_PROCESS_START.
    M_MMAP_MAX: 0,
}
# What a process must be started with: one arena for all its threads (the module's doc).
AT_PROCESS_START = {"MALLOC_ARENA_MAX": "1"}
_applied = False  # whether this process runs under SETTINGS


def as_environment() -> dict[str, str]:
    """SETTINGS and AT_PROCESS_START as environment variables, for a process that does not
    call keep_freed_memory itself (a peer loop in benchmarks/step_tax.py)."""
    # The environment's parser takes no sign: "never" is the largest size instead.
    never = {-1: str(2**64 - 1)}
    return {**{ENVIRONMENT_NAMES[parameter]: never.get(value, str(value)) for parameter, value in SETTINGS.items()},
            **AT_PROCESS_START}


def user_chose_malloc_settings(environ=os.environ) -> bool:
    """Whether `environ` configures glibc's malloc other than as a run does itself."""
    ours = AT_PROCESS_START["MALLOC_ARENA_MAX"]
    return (any(name.startswith("MALLOC_") and name.endswith("_") for name in environ)
            or environ.get("MALLOC_ARENA_MAX", ours) != ours
            or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""))


def process_start_environment(scaling, environ=os.environ) -> dict[str, str]:
    """The variables a run's Ray processes start with for malloc (`scaling`: the job's):
    AT_PROCESS_START where it trains on the host, unless the user configures malloc in
    the driver's environment or the job's `scaling.env`."""
    if (scaling.use_gpu or platform.system() != "Linux"
            or user_chose_malloc_settings({**environ, **scaling.env})):
        return {}
    return dict(AT_PROCESS_START)


def keep_freed_memory() -> bool:
    """Apply SETTINGS to this process's malloc; True if they were applied. Best effort:
    other C libraries (macOS, musl) and user-chosen settings are left as they are."""
    global _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_chose_malloc_settings():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
    return _applied


def give_back_freed_memory() -> bool:
    """Return the free memory of malloc's heaps to the kernel, after a one-off spike (a
    resume's loaded state); True if it was returned. Under SETTINGS nothing else would:
    with no mmap, a large block freed below a live one stays resident for the rest of the
    run. malloc_trim(0) also releases free pages inside a heap, not only its top. The next
    step faults in again what it then takes, once."""
    if not _applied:
        return False
    ctypes.CDLL(None).malloc_trim(0)
    return True
