"""Dataset name -> loader. Each dataset module registers itself with ``@register_dataset``; nothing here names
a dataset, so adding one is one new module and no edits elsewhere.

A loader is called as ``load(root, *, img_size, seed, data_size, skip_unreadable)`` and returns a
``DatasetBundle``; a checker is called as ``check(root, *, data_size)`` and must be cheap (the runner calls it
for every dataset of a sweep before any training starts). ``folder:PATH`` names resolve to the ``folder``
loader with the path bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from benchmarks.data.base import DatasetBundle
from benchmarks.data.errors import DataError

FOLDER_PREFIX = "folder:"


class Loader(Protocol):
    def __call__(self, root: Path, *, img_size: int, seed: int, data_size: int | None,
                 skip_unreadable: bool) -> DatasetBundle: ...


class Checker(Protocol):
    def __call__(self, root: Path, *, data_size: int | None) -> None: ...


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Loader
    check: Checker
    description: str = ""


_DATASETS: dict[str, DatasetSpec] = {}
_FOLDER: dict[str, Callable[[str], DatasetSpec]] = {}


def register_dataset(name: str, *, check: Checker, description: str = "") -> Callable[[Loader], Loader]:
    """Decorator: register ``loader`` under ``name`` with its cheap ``check``. Duplicate names are a bug."""
    def decorator(loader: Loader) -> Loader:
        if name in _DATASETS:
            raise RuntimeError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = DatasetSpec(name, loader, check, description)
        return loader
    return decorator


def register_folder_factory(factory: Callable[[str], DatasetSpec]) -> None:
    """The ``folder:PATH`` family: ``factory(PATH)`` builds the spec for one folder."""
    _FOLDER["factory"] = factory


def available_datasets() -> list[str]:
    """Registered dataset names, sorted (``folder:PATH`` is accepted as well but is not a fixed name)."""
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The spec for ``name``; unknown names raise ``DataError`` listing the valid ones."""
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX):]
        if not path:
            raise DataError("dataset 'folder:' needs a path: use folder:PATH with a class-per-subfolder tree")
        return _FOLDER["factory"](path)
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}, folder:PATH")
    return _DATASETS[name]
