"""How much of the machine a run had: load average at start and end, and the CPU-time share the run got.

A throughput measured while other work shared the cores is not the method's speed. Every record's
``efficiency.machine_load`` says how loaded the machine was, so a shared-core run is visible as such:

* ``load_avg_start`` / ``load_avg_end``: ``os.getloadavg()`` (1, 5, 15 min) when the run started / ended;
* ``cpu_share``: process CPU seconds (user + system, all threads) / (wall seconds x torch threads). Alone on the
  cores a compute-bound CPU run gets close to 1; a run that shared its cores with others gets about
  cores / (runnable threads), e.g. ~0.5 with one equal neighbour. On CUDA the share measures the host side only
  and is expected to be low (the process waits for the GPU).
* ``host_probe_ms_start`` / ``host_probe_ms_end``: :func:`host_probe_ms`, a fixed reference workload timed when
  the run started / ended. The CPU share cannot see a slow host: a VM can give this process all its CPU time,
  report no steal time, and still compute several times slower than the same VM on another host (other
  tenants on its physical cores are one likely cause). The probe's milliseconds compare records made on the
  same kind of machine: a run whose probe is well above the others' ran on a slower host, and its throughput
  and wall time say so.

It covers this process (a resumed run: its last segment; each earlier process's CPU share is in
``efficiency.processes``), not data-loader worker processes.
"""

from __future__ import annotations

import math
import os
import resource
import time
from typing import Any

PROBE_REPEATS = 5


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:          # not available on this platform
        return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_probe_ms(repeats: int = PROBE_REPEATS) -> float:
    """Milliseconds (best of ``repeats``) of a fixed reference workload on torch's current threads: forward and
    backward of a depthwise 5 x 5 + pointwise convolution block (16 x 64 x 16 x 16, float32, CPU), the kind of
    layer the benchmark's backbones are made of. Small enough to run at every run's start and end.

    Its own generator and grad mode: it leaves the global RNG, grad mode and every model untouched. It calls
    ``torch.autograd.backward`` rather than ``Tensor.backward`` so that ``benchmarks.profiling``'s backward label
    (which wraps ``Tensor.backward``) does not count the probe as the run's backward phase."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 16, 16, generator=g).requires_grad_()
    w_dw = torch.randn(64, 1, 5, 5, generator=g).requires_grad_()
    w_pw = torch.randn(64, 64, 1, 1, generator=g).requires_grad_()
    best = math.inf
    with torch.enable_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.autograd.backward(F.conv2d(F.conv2d(x, w_dw, padding=2, groups=64), w_pw).square().mean())
            best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 3)


class LoadMeter:
    """Started at construction; :meth:`summary` reads the numbers so far (call it at the end of the run)."""

    def __init__(self) -> None:
        self.probe_start = host_probe_ms()
        self.load_start = _load_average()
        self.cpu_start = _cpu_seconds()
        self.wall_start = time.perf_counter()

    def summary(self, threads: int | None = None) -> dict[str, Any]:
        """The ``machine_load`` block of a record (``threads`` defaults to torch's intra-op thread count)."""
        threads = _torch_threads() if threads is None else threads
        wall = time.perf_counter() - self.wall_start
        cpu = _cpu_seconds() - self.cpu_start
        return {"load_avg_start": self.load_start, "load_avg_end": _load_average(), "cpu_seconds": round(cpu, 3),
                "wall_seconds": round(wall, 3), "threads": threads, "cpus": os.cpu_count(),
                "cpu_share": _share(cpu, wall, threads), "host_probe_ms_start": self.probe_start,
                "host_probe_ms_end": host_probe_ms()}

    def cpu_share(self, threads: int | None = None) -> float | None:
        """The CPU share so far, without the end probe: cheap enough for every epoch checkpoint."""
        threads = _torch_threads() if threads is None else threads
        return _share(_cpu_seconds() - self.cpu_start, time.perf_counter() - self.wall_start, threads)


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def _share(cpu_seconds: float, wall_seconds: float, threads: int) -> float | None:
    return round(cpu_seconds / (wall_seconds * threads), 3) if wall_seconds > 0 and threads > 0 else None


def probe_ms(machine_load: dict[str, Any] | None) -> float | None:
    """The faster of a record's start and end probe (None for records made before the probe existed).

    The faster, as the probe itself keeps its best repeat: a cold process (the start probe runs right after the
    imports) reads slower for its first seconds, which is the process's state, not the host's."""
    values = [v for v in ((machine_load or {}).get(k) for k in ("host_probe_ms_start", "host_probe_ms_end"))
              if v is not None]
    return min(values) if values else None


def describe(machine_load: dict[str, Any] | None) -> str:
    """One line for reports: "cpu share 0.48, load 3.1 -> 3.9, host probe 5.2 -> 5.4 ms" ("not recorded" for
    older records)."""
    if not machine_load:
        return "not recorded"
    start, end = machine_load.get("load_avg_start"), machine_load.get("load_avg_end")
    load = f", load {start[0]:.1f} -> {end[0]:.1f}" if start and end else ""
    p_start, p_end = machine_load.get("host_probe_ms_start"), machine_load.get("host_probe_ms_end")
    probe = f", host probe {p_start:.1f} -> {p_end:.1f} ms" if p_start is not None and p_end is not None else ""
    share = machine_load.get("cpu_share")
    return (f"cpu share {share:.2f}" if share is not None else "cpu share unknown") + load + probe
