"""Efficiency measurements: parameter counts, adapter size, peak memory, throughput.

Peak memory means different things per device and the record says which: on CUDA it is
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only, no allocator cache); on
CPU it is the peak resident set size of the process sampled from ``/proc/self/statm`` by a background thread
every ~20 ms during the measured region (includes Python, libraries and data, so it is an upper bound).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

import petl

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parameter_counts(model: nn.Module) -> dict[str, float | int]:
    """``{"total", "trainable", "percent_trainable"}`` via ``petl.summary`` (shared tensors counted once)."""
    s = petl.summary(model)
    return {"total": s.total, "trainable": s.trainable, "percent_trainable": s.percent_trainable}


def current_rss_bytes() -> int:
    """Resident set size of this process from /proc/self/statm (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


@dataclass
class PeakMemory:
    """Result holder filled by :func:`peak_memory` when its region ends."""

    kind: str = ""
    peak_bytes: int = 0


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = current_rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, current_rss_bytes())
        return self.peak


@contextmanager
def peak_memory(device: torch.device, interval_s: float = 0.02) -> Iterator[PeakMemory]:
    """Measure peak memory of the enclosed region (see module docstring for what each kind means)."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.kind, result.peak_bytes = "cuda_max_memory_allocated", int(torch.cuda.max_memory_allocated(device))
        return
    sampler = _RssSampler(interval_s)
    sampler.start()
    try:
        yield result
    finally:
        result.kind, result.peak_bytes = "cpu_peak_rss", int(sampler.stop())


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Throughput:
    """Images/s over batches after ``warmup`` batches (cudnn autotuning, allocator growth and lazy init excluded).

    Call :meth:`start_batch` / :meth:`end_batch` around each batch; with fewer than ``warmup + 1`` batches the
    warm-up batches are counted rather than reporting nothing.
    """

    device: torch.device
    warmup: int = 3
    _times: list[float] = field(default_factory=list)
    _sizes: list[int] = field(default_factory=list)
    _t0: float = 0.0

    def start_batch(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def end_batch(self, n_images: int) -> None:
        synchronize(self.device)
        self._times.append(time.perf_counter() - self._t0)
        self._sizes.append(n_images)

    def _skip(self) -> int:
        """Batches left out as warm-up (none when there are too few to spare them)."""
        return self.warmup if len(self._times) > self.warmup else 0

    def measured(self) -> tuple[int, float]:
        """(images, seconds) over the batches after warm-up: what :meth:`images_per_s` divides, so a resumed
        run can add up the throughput of several processes."""
        skip = self._skip()
        return int(sum(self._sizes[skip:])), float(sum(self._times[skip:]))

    def images_per_s(self) -> float | None:
        if not self._times:
            return None
        n, t = self.measured()
        return n / t if t > 0 else None

    def mean_batch_s(self) -> float | None:
        rest = self._times[self._skip():]
        return sum(rest) / len(rest) if rest else None
