"""The CPU runtime of a training run: how many intra-op threads, and the glibc allocator's thresholds."""
from __future__ import annotations

import ctypes
import os
import time

import torch

DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at import: one per physical core
SMALL_STEP_FLOPS = 2e8  # below this many FLOPs per step, ops are too small to split over threads


def cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, total) CPU jiffies of the machine, and this process's own busy jiffies; None off Linux."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()                          # fields after the command name
        return sum(values) - values[3] - values[4], sum(values), int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return None


class CpuThreads:
    """Intra-op threads of a CPU run: OMP_NUM_THREADS when set; one for small models; otherwise one
    per core that other processes leave free, re-decided at each update() (every 10 steps of a run).

    Why: an op split over two threads waits for the slower one, so a thread that shares its core with
    another busy process makes every op wait out a time slice (measured up to 30x slower than one
    thread on a loaded 2-core machine), while on idle cores two threads ran the nanogpt-cpu step
    ~1.45x faster than one. Others' load = the machine's busy time minus this process's own.
    The price: one and two threads round sums differently, so without OMP_NUM_THREADS a rerun under
    another load matches to float rounding (1e-8 to 1e-5 on a final loss), not bit for bit.
    """

    def __init__(self, flops_per_step: float):
        self.reason, self.last = "", None
        if os.environ.get("OMP_NUM_THREADS"):
            self.reason = "OMP_NUM_THREADS"
        elif flops_per_step < SMALL_STEP_FLOPS:
            torch.set_num_threads(1)
            self.reason = "small model"
        else:
            first = cpu_jiffies()
            time.sleep(0.1)  # a first look at the others' load before the first step
            self.last = first
            self.update()

    def update(self) -> None:
        now = cpu_jiffies()
        if self.last is None or now is None:
            return
        (busy0, total0, own0), (busy1, total1, own1) = self.last, now
        self.last = now
        cpus = os.cpu_count() or 1
        if total1 <= total0:
            return
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0) * cpus
        threads = max(1, min(DEFAULT_THREADS, int(cpus - others + 0.5)))
        self.reason = f"{threads} of {DEFAULT_THREADS} cores free"
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc): without it every activation-sized tensor is a fresh
    mmap whose pages fault in again each step (~1,200 page faults per nanogpt-cpu step, ~35 with it)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune
