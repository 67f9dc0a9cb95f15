"""Torch's intra-op threads, beside decoding workers and beside other jobs.

torch runs one intra-op thread per CPU. A parallel region waits for its slowest thread, so when
other busy threads share the cores (another team of intra-op threads, another user's job) the
step slows down by more than its share (`benchmarks/threads.py`: a TopK step with 2 threads on
2 cores beside one busy process takes 1.63x as long; with 1 thread, 1.00x). Hence: CPU model
forwards of `train --model` run in the trainer's thread, not beside the step in a prefetch thread
(`ModelRows.reads_in_caller`); `cache --intra-op-threads N` sets the producer's count, and
OMP_NUM_THREADS=N (read by torch at start) any command's, e.g. to leave a core to other jobs.
Decoding workers mostly wait on small images, so the producer keeps torch's count by default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def limited(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) for the block (None: unchanged), the previous count restored."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
