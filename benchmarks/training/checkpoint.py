"""Epoch checkpoints: written atomically (serialised in memory, then benchmarks.files' tmp file + fsync +
os.replace) and read with ``weights_only=True``, so only tensors and plain Python containers may go in (no
pickled objects).

A checkpoint that cannot be read (truncated, edited, not a checkpoint) must not block its run for good: it is
reported, moved aside as ``last.pt.unreadable-TIME`` (kept for inspection) and the run restarts from epoch 0.
Temporary files a killed write left behind are removed when the run is next loaded (only the process holding
the run's lock gets here, so no other writer can be using them).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.files import atomic_write_bytes

NAME = "last.pt"
REQUIRED = ("epoch", "state", "trainer", "val_cycle", "rng", "best_state", "best_metric", "best_epoch", "patience",
            "history")


def save_checkpoint(state: dict[str, Any], workdir: Path) -> Path:
    """Write ``state`` to ``workdir/last.pt``; a failed write (disk full) leaves the previous checkpoint and no
    temporary file, and raises ``benchmarks.files.WriteError`` naming the file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)   # into memory: a file error then comes from one plain write, with its errno
    return atomic_write_bytes(Path(workdir) / NAME, buffer.getbuffer())


def _remove_leftovers(workdir: Path) -> None:
    for tmp in (*workdir.glob(f".{NAME}.*.tmp"), workdir / f"{NAME}.tmp"):   # the second: older versions' name
        tmp.unlink(missing_ok=True)


def load_checkpoint(workdir: Path) -> dict[str, Any] | None:
    """The last epoch checkpoint in ``workdir``, or None for a fresh run (none, or an unreadable one moved aside)."""
    workdir = Path(workdir)
    if workdir.is_dir():
        _remove_leftovers(workdir)
    path = workdir / NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in REQUIRED if k not in state] if isinstance(state, dict) else ["(not a dict)"]
        if missing:
            raise ValueError(f"not an epoch checkpoint (missing {', '.join(missing)})")
    except Exception as exc:   # reported and moved aside below: a bad file must not fail every rerun
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{NAME}.unreadable-{stamp}")
        os.replace(path, aside)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"warning: checkpoint {path} is unreadable ({type(exc).__name__}: {first}); moved it to {aside.name} "
              f"and restarting this run from epoch 0", file=sys.stderr, flush=True)
        return None
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
