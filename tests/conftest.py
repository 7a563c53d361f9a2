"""Shared fixtures: the real data folder (``../shared/data`` from the repo root, or ``$PETL_DATA_ROOT``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

import petl

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


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored after: on the 2-core machine, shared with a background training
    sweep, two spinning OpenMP threads made tiny training runs ~10-18x slower (measured: a MetaLR step 3.1 s vs
    0.34 s; the Lite0 acceptance run 538 s vs 30 s). Results depend on the thread count (float summation order),
    so tests that compare trained numbers fix it. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base50() -> nn.Module:
    """A random-init torchvision ResNet-50 with a 7-class head (one per test module; tests deepcopy it)."""
    torch.manual_seed(0)
    return petl.build_backbone("resnet50", weights=None, num_classes=7).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    """A fixed 2 x 3 x 32 x 32 input batch."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
