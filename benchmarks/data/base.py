"""Plain values the data package hands to the engine, and the folders it reads from and caches into.

The engine only ever sees a ``DatasetBundle`` of uint8 tensors: decoding, resizing to the storage size and
splitting happen once here (and are cached), so training epochs are pure tensor indexing on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.data.errors import DataError

TASKS = ("multiclass", "multilabel")


def resolve_data_root(arg: str | Path | None) -> Path:
    """The data root: ``arg`` if given, else ``$PETL_DATA_ROOT``, else ``~/.cache/petl/data``.

    Existence is not checked here: ``check_dataset`` reports the exact missing file, which is more useful.
    """
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    env = os.environ.get("PETL_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "petl" / "data"


def cache_dir(*parts: str) -> Path:
    """A (created) folder under ``$PETL_CACHE_DIR``, else ``~/.cache/petl``.

    Caches never go next to the data: the shared data folder is read-only and must stay byte-for-byte official.
    """
    env = os.environ.get("PETL_CACHE_DIR")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "petl"
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {path} ({exc.strerror}); "
                        f"set PETL_CACHE_DIR to a writable folder") from exc
    return path


@dataclass
class ImageSplit:
    """One split: uint8 images (N, C, H, W) with C in {1, 3}, labels, and (for decoded datasets) the source
    id of each row (ISIC image id, path relative to the tree), so splits can be inspected and leakage tested.

    Labels are int64 (N,) for single-label tasks and float32 (N, L) 0/1 for multi-label ones, the dtypes the
    cross-entropy and BCE losses take directly. The stored size may differ from the training size: the batch
    transform resizes on the device, so one cached copy serves every ``img_size``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str] | None = field(default=None, repr=False)   # source file per row where there is one

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if self.ids is not None and len(self.ids) != len(y):
            raise DataError(f"ImageSplit ids must match the {len(y)} labels, got {len(self.ids)}")
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"ImageSplit images must be uint8 (N, C, H, W) with C in {{1, 3}}, "
                            f"got {x.dtype} {tuple(x.shape)}; convert the images before building the split")
        if y.dtype not in (torch.int64, torch.float32) or y.dim() not in (1, 2) or len(y) != len(x):
            raise DataError(f"ImageSplit labels must be int64 (N,) or float32 (N, L) with N = {len(x)}, "
                            f"got {y.dtype} {tuple(y.shape)}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DatasetBundle:
    """A dataset ready to train on: official (or documented, seeded) train / val / test splits."""

    name: str
    task: str                 # "multiclass" (binary included) or "multilabel"
    class_names: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"dataset {self.name}: task {self.task!r} is not one of {', '.join(TASKS)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
