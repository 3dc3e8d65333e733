"""How many torch threads a CPU-bound loop should use on a machine shared with other work.

torch's OpenMP threads spin at every parallel region until all of them arrive. When another
process holds one of the cores, the thread that shares that core arrives late at every
region and the loop slows many times over (DOSNES on 2 cores: 3.6x) where losing one core
should cost at most 2x. `free_cores` counts the cores the rest of the machine leaves idle,
from /proc/stat minus this process's own CPU time, and `TorchThreads` sets and restores
torch's thread count around a loop and re-checks it as the loop goes.
"""
from __future__ import annotations

import os
import time

# Others' CPU use on a core below this fraction is noise (an editor, a shell), not a taker.
NOISE = 0.25


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_seconds() -> float | None:
    """CPU-seconds all processes have been busy since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def own_seconds() -> float:
    """CPU-seconds this process has used (all its threads)."""
    t = os.times()
    return t.user + t.system


class CpuWindow:
    """A measuring window: `free_cores()` says how many cores other processes left idle
    since the window opened (or since the last call), from the machine's busy time minus
    this process's own. None where /proc/stat is not readable."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self._t, self._busy, self._own = time.perf_counter(), busy_seconds(), own_seconds()

    def free_cores(self) -> int | None:
        t, busy, own = time.perf_counter(), busy_seconds(), own_seconds()
        if busy is None or self._busy is None or t - self._t < 0.05:
            return None
        others = max(0.0, (busy - self._busy) - (own - self._own)) / (t - self._t)  # in cores
        self._t, self._busy, self._own = t, busy, own
        cores = usable_cores()
        return max(1, min(cores, cores - int(max(0.0, others - NOISE) + 0.999)))


class TorchThreads:
    """Context manager: torch.set_num_threads(n) inside, the old count restored after.

    threads: an int (fixed), None (leave torch's setting alone) or "auto": the cores other
    processes leave idle, measured over `probe_s` before the loop and again at each
    `recheck()` over the time since the last one. torch's thread count is process-wide: other
    threads of the process running torch meanwhile get the same count."""

    def __init__(self, threads="auto", probe_s: float = 0.1):
        self.threads, self.probe_s = threads, probe_s
        self.used: list[int] = []  # thread counts set, in order

    def _set(self, n: int) -> None:
        import torch

        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        if not self.used or self.used[-1] != n:
            self.used.append(n)

    def __enter__(self) -> "TorchThreads":
        import torch

        self._before = torch.get_num_threads()
        self._ceiling = max(self._before, 1)
        if self.threads == "auto" and self._ceiling == 1:
            self.threads = 1  # nothing to choose: no probe
            self._set(1)
        elif self.threads == "auto":
            self._window = CpuWindow()
            time.sleep(self.probe_s)
            self.recheck()
        elif self.threads is not None:
            self._set(int(self.threads))
        return self

    def recheck(self) -> None:
        """In "auto" mode, re-measure and set the thread count; otherwise nothing."""
        if self.threads != "auto":
            return
        free = self._window.free_cores()
        if free is not None:
            self._set(min(free, self._ceiling))
        elif not self.used:
            self._set(self._ceiling)

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self._before)
