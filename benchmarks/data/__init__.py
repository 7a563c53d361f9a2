"""Datasets and batch transforms for the benchmark suite.

``load_dataset`` turns a registered name (MedMNIST 2D flags, ``isic2018``, ``brain_mri``) or ``folder:PATH``
into a ``DatasetBundle`` of uint8 tensors with official splits; ``make_batch_transform`` turns uint8 batches
into normalised float batches on the device. Importing the dataset modules registers them.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.data import folders, isic2018, medmnist  # noqa: F401  (registration side effect)
from benchmarks.data.base import DatasetBundle, ImageSplit, cache_dir, resolve_data_root
from benchmarks.data.errors import DataError
from benchmarks.data.registry import available_datasets, get_dataset, register_dataset
from benchmarks.data.transforms import AUGMENTS, IMAGENET_MEAN, IMAGENET_STD, make_batch_transform

__all__ = ["load_dataset", "check_dataset", "available_datasets", "resolve_data_root", "DatasetBundle",
           "ImageSplit", "DataError", "make_batch_transform", "IMAGENET_MEAN", "IMAGENET_STD", "AUGMENTS",
           "register_dataset", "cache_dir"]


def check_dataset(name: str, data_root: str | Path | None, *, data_size: int | None = None) -> None:
    """Cheap pre-flight check: ``DataError`` for an unknown name or missing / malformed files."""
    get_dataset(name).check(resolve_data_root(data_root), data_size=data_size)


def load_dataset(name: str, data_root: str | Path | None = None, *, img_size: int, seed: int = 0,
                 data_size: int | None = None, skip_unreadable: bool = False) -> DatasetBundle:
    """The named dataset's train / val / test splits. ``seed`` only affects carved splits (never official
    ones); ``data_size`` picks the MedMNIST file size; ``img_size`` is the stored size of decoded datasets."""
    if int(img_size) <= 0:
        raise DataError(f"img_size must be positive, got {img_size}")
    return get_dataset(name).load(resolve_data_root(data_root), img_size=int(img_size), seed=int(seed),
                                  data_size=data_size, skip_unreadable=skip_unreadable)
