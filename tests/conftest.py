"""Shared fixtures: the real data folder (``../shared/data`` from the repo root, or ``$PETL_DATA_ROOT``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("PETL_DATA_ROOT", REPO / ".." / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root; tests that need it are skipped (with the reason) only where it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} not found; set PETL_DATA_ROOT to it")
    return root
