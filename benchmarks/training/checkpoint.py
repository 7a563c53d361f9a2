"""Epoch checkpoints: written atomically (tmp file + os.replace) and read with ``weights_only=True``, so only
tensors and plain Python containers may go in (no pickled objects)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

NAME = "last.pt"


def save_checkpoint(state: dict[str, Any], workdir: Path) -> Path:
    path = Path(workdir) / NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(workdir: Path) -> dict[str, Any] | None:
    """The last epoch checkpoint in ``workdir``, or None when there is none (a fresh run)."""
    path = Path(workdir) / NAME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
