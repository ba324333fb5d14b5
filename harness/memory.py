"""Peak memory of one run. On CUDA: the allocator's peak since the run began. On the CPU: the process's resident
set size sampled every few milliseconds while the run is going (the kernel's ru_maxrss never resets, so it would
charge a later run in the same process - an A/B, a sweep - with an earlier run's peak)."""

from __future__ import annotations

import os
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the process peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """with PeakMemory(device) as peak: ...; peak.megabytes -> the peak during the block."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s, self.peak = device, interval_s, 0
        self.start = 0  # what was in use when the block began (CUDA: allocated; CPU: the RSS)
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.peak = self.start = current_rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss_bytes())
        return False

    @property
    def megabytes(self) -> float:
        return self.peak / 2**20

    @property
    def start_megabytes(self) -> float:
        return self.start / 2**20
