"""Test helpers for the engine tests: a small real-BreastMNIST bundle read straight from the npz and a minimal
tensor transform, so the engine can be tested independently of benchmarks.data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DATA_ROOT = Path(os.environ.get("PETL_DATA_ROOT", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@dataclass
class Split:
    images: Any
    labels: torch.Tensor


@dataclass
class Bundle:
    name: str
    task: str
    class_names: list[str]
    train: Split
    val: Split
    test: Any
    num_classes: int


def _take(npz: Any, split: str, n: int) -> Split:
    x = torch.from_numpy(npz[f"{split}_images"][:n]).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()
    y = torch.from_numpy(npz[f"{split}_labels"][:n].reshape(-1).astype(np.int64))
    return Split(x, y)


def breast_bundle(n_train: int = 128, n_val: int = 64, n_test: int = 64) -> Bundle:
    npz = np.load(DATA_ROOT / "medmnist" / "breastmnist.npz")
    return Bundle("breastmnist", "multiclass", ["malignant", "normal/benign"], _take(npz, "train", n_train),
                  _take(npz, "val", n_val), _take(npz, "test", n_test), 2)


def simple_transforms(img_size: int):
    """(train, eval) transforms: uint8 -> [0,1] -> bilinear resize -> 0.5/0.5 normalisation; train adds a
    seeded horizontal flip so the per-epoch generator matters."""
    def base(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float() / 255.0, size=(img_size, img_size), mode="bilinear", align_corners=False)
        return (x - 0.5) / 0.5

    def train(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        x = base(x)
        flip = torch.rand(len(x), generator=gen) < 0.5
        return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)

    def evaluate(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return base(x)
    return train, evaluate


def patch_data(monkeypatch: Any, engine: Any, bundle: Any, img_size: int) -> None:
    monkeypatch.setattr(engine, "load_bundle", lambda config, runtime: bundle)
    monkeypatch.setattr(engine, "make_transforms", lambda config, model: simple_transforms(img_size))
