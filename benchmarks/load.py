"""How much of the machine a run had: load average at start and end, and the CPU-time share the run got.

A throughput measured while other work shared the cores is not the method's speed. Every record's
``efficiency.machine_load`` says how loaded the machine was, so a shared-core run is visible as such:

* ``load_avg_start`` / ``load_avg_end``: ``os.getloadavg()`` (1, 5, 15 min) when the run started / ended;
* ``cpu_share``: process CPU seconds (user + system, all threads) / (wall seconds x torch threads). Alone on the
  cores a compute-bound CPU run gets close to 1; a run that shared its cores with others gets about
  cores / (runnable threads), e.g. ~0.5 with one equal neighbour. On CUDA the share measures the host side only
  and is expected to be low (the process waits for the GPU).

It covers this process (a resumed run: its last segment), not data-loader worker processes.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:          # not available on this platform
        return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """Started at construction; :meth:`summary` reads the numbers so far (call it at the end of the run)."""

    def __init__(self) -> None:
        self.load_start = _load_average()
        self.cpu_start = _cpu_seconds()
        self.wall_start = time.perf_counter()

    def summary(self, threads: int | None = None) -> dict[str, Any]:
        """The ``machine_load`` block of a record (``threads`` defaults to torch's intra-op thread count)."""
        if threads is None:
            import torch
            threads = torch.get_num_threads()
        wall = time.perf_counter() - self.wall_start
        cpu = _cpu_seconds() - self.cpu_start
        return {"load_avg_start": self.load_start, "load_avg_end": _load_average(), "cpu_seconds": round(cpu, 3),
                "wall_seconds": round(wall, 3), "threads": threads, "cpus": os.cpu_count(),
                "cpu_share": round(cpu / (wall * threads), 3) if wall > 0 and threads > 0 else None}


def describe(machine_load: dict[str, Any] | None) -> str:
    """One line for reports: "cpu share 0.48, load 3.1 -> 3.9" ("not recorded" for older records)."""
    if not machine_load:
        return "not recorded"
    start, end = machine_load.get("load_avg_start"), machine_load.get("load_avg_end")
    load = f", load {start[0]:.1f} -> {end[0]:.1f}" if start and end else ""
    share = machine_load.get("cpu_share")
    return f"cpu share {share:.2f}{load}" if share is not None else f"cpu share unknown{load}"
