"""Class-per-subfolder image trees: the Kaggle "Brain Tumor MRI" dataset (``brain_mri``) and ``folder:PATH``.

A tree either has split folders (Training/Testing as Kaggle ships it, or train/val/test) holding class folders,
or holds the class folders directly. Existing split folders are always used as they are (never pooled and
re-split); only missing ones are carved, stratified and seeded by the run's ``split_seed`` (the engine never passes
the run seed, so every seed and method is tested on the same images): val (15 %) from train, and for a tree without
split folders test then val (70/15/15). Images of any mode and size are decoded to L or RGB uint8 at ``img_size``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.data.base import DatasetBundle, ImageSplit, cache_dir
from benchmarks.data.errors import DataError, MissingDataError
from benchmarks.data.images import check_unreadable, decode_images, list_images
from benchmarks.data.registry import DatasetSpec, register_dataset, register_folder_factory
from benchmarks.data.splits import persisted_holdout, warn_cross_split_duplicates

SPLIT_ALIASES = {"train": ("training", "train"), "val": ("validation", "valid", "val"), "test": ("testing", "test")}
HOLDOUT_FRACTION = 0.15
BRAIN_MRI = "brain_mri"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_split_dirs(root: Path) -> dict[str, Path]:
    """Split folders of ``root`` by role (case-insensitive names); empty when it holds class folders directly."""
    by_name = {p.name.lower(): p for p in _subdirs(root)}
    found = {}
    for role, aliases in SPLIT_ALIASES.items():
        hits = [by_name[a] for a in aliases if a in by_name]
        if len(hits) > 1:
            raise DataError(f"{root} has several {role} folders ({', '.join(h.name for h in hits)}); keep one")
        if hits:
            found[role] = hits[0]
    if found and "train" not in found:
        raise DataError(f"{root} has {', '.join(p.name for p in found.values())} but no Training/train folder; "
                        f"add it, or point at a class-per-subfolder tree")
    return found


def _items(split_dir: Path) -> list[tuple[Path, str]]:
    """(image path, class name) for every image in the class folders of ``split_dir``; class folders without
    images are named in a warning (a class that silently vanished would shift every label index)."""
    images = {cls: list_images(cls) for cls in _subdirs(split_dir)}
    empty = [cls.name for cls, found in images.items() if not found]
    if empty:
        warnings.warn(f"{split_dir}: class folder(s) {', '.join(empty)} hold no images and are left out; add "
                      f"images or remove the folder(s)", stacklevel=2)
    items = [(p, cls.name) for cls, found in images.items() for p in found]
    if not items:
        raise DataError(f"{split_dir} has no class subfolders with images; expected {split_dir}/<class>/<image> "
                        f"(png, jpg, bmp, tif, ...)")
    return items


def _layout(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """Items per present split ("pool" when the tree has no split folders)."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}; pass an existing class-per-subfolder tree "
                        f"(folder:PATH) or --data-root DIR")
    split_dirs = find_split_dirs(root)
    layout = {"pool": _items(root)} if not split_dirs else {role: _items(d) for role, d in split_dirs.items()}
    classes = sorted({c for items in layout.values() for _, c in items})
    if len(classes) < 2:
        where = ", ".join(str(d) for d in (split_dirs.values() if split_dirs else [root]))
        raise DataError(f"{root} has images in only {len(classes)} class folder ({', '.join(classes)}) under "
                        f"{where}; a classifier needs at least 2 classes: put each class's images in its own "
                        f"folder ({root}/<class>/<image>)")
    return layout


def load_tree(root: Path, name: str, *, img_size: int, seed: int = 0, skip_unreadable: bool = False) -> DatasetBundle:
    """Decode a class-folder tree (cached) and return its splits; see the module docstring for the rules."""
    layout = _layout(root)
    class_names = sorted({c for items in layout.values() for _, c in items})
    index = {c: i for i, c in enumerate(class_names)}
    parts: dict[str, tuple[list[str], np.ndarray, torch.Tensor, list[str]]] = {}
    for split, items in layout.items():
        decoded = decode_images([p for p, _ in items], img_size, cache_name="folders", desc=f"{name} {split}")
        check_unreadable(decoded, f"{name} {split}", skip_unreadable)
        kept = [items[i] for i in decoded.kept]
        parts[split] = ([p.relative_to(root).as_posix() for p, _ in kept],
                        np.array([index[c] for _, c in kept], dtype=np.int64), decoded.images, decoded.digests)
    if len({p[2].shape[1] for p in parts.values()}) > 1:     # some split has colour: make every split RGB
        parts = {s: (a, b, x.expand(-1, 3, -1, -1).contiguous(), d) for s, (a, b, x, d) in parts.items()}

    source = "pool" if "pool" in parts else "train"
    split_dir = cache_dir("folders", "splits")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    for held, salt in (("test", 1), ("val", 2)):
        if held in parts:
            continue
        items, labels, images, digests = parts[source]
        fraction = HOLDOUT_FRACTION / (1 - HOLDOUT_FRACTION) if (held == "val" and source == "pool") \
            else HOLDOUT_FRACTION
        if held == "test" and source == "train":
            warnings.warn(f"{name}: no test folder; carving the test split from training", stacklevel=2)
        mask = persisted_holdout(split_dir, f"{stem}_{held}", items, items, labels, fraction, seed, salt,
                                 held_name=held, kept_name=source)
        pick = lambda idx: ([items[i] for i in idx], labels[idx], images[torch.from_numpy(idx)],
                            [digests[i] for i in idx])
        parts[held], parts[source] = pick(np.flatnonzero(mask)), pick(np.flatnonzero(~mask))
    parts["train"] = parts.pop(source)

    warn_cross_split_duplicates(name, {s: p[0] for s, p in parts.items()}, {s: p[3] for s, p in parts.items()})
    splits = {s: ImageSplit(p[2], torch.from_numpy(p[1]), list(p[0])) for s, p in parts.items()}
    return DatasetBundle(name, "multiclass", class_names, splits["train"], splits["val"], splits["test"])


def _no_data_size(name: str, data_size: int | None) -> None:
    if data_size is not None:
        raise DataError(f"data_size={data_size} applies to MedMNIST only; leave it unset for {name} "
                        f"(img_size sets the stored size)")


# --- brain_mri ----------------------------------------------------------------------------------------------

def _brain_root(root: Path) -> Path:
    folder = root / BRAIN_MRI
    for sub in ("Training", "Testing"):
        if not (folder / sub).is_dir():
            raise MissingDataError(f"Brain MRI folder not found: expected {folder / sub}/<class>/ "
                                   f"(Kaggle 'Brain Tumor MRI' layout: glioma, meningioma, notumor, pituitary); "
                                   f"put it there or pass --data-root DIR")
    return folder


def check_brain_mri(root: Path, *, data_size: int | None = None) -> None:
    _no_data_size(BRAIN_MRI, data_size)
    _layout(_brain_root(root))


@register_dataset(BRAIN_MRI, check=check_brain_mri, description="Kaggle Brain Tumor MRI, 4 classes")
def load_brain_mri(root: Path, *, img_size: int, seed: int = 0, data_size: int | None = None,
                   skip_unreadable: bool = False) -> DatasetBundle:
    """Official Training/Testing; val carved (15 %, seeded, stratified) from Training."""
    _no_data_size(BRAIN_MRI, data_size)
    return load_tree(_brain_root(root), BRAIN_MRI, img_size=img_size, seed=seed, skip_unreadable=skip_unreadable)


# --- folder:PATH --------------------------------------------------------------------------------------------

def _resolve(path: str, root: Path) -> Path:
    """PATH as given (absolute, or relative to the working directory), else relative to the data root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() or not (root / p).exists() else root / p


def _folder_spec(path: str) -> DatasetSpec:
    name = f"folder:{path}"

    def check(root: Path, *, data_size: int | None = None) -> None:
        _no_data_size(name, data_size)
        _layout(_resolve(path, root))

    def load(root: Path, *, img_size: int, seed: int = 0, data_size: int | None = None,
             skip_unreadable: bool = False) -> DatasetBundle:
        _no_data_size(name, data_size)
        return load_tree(_resolve(path, root), name, img_size=img_size, seed=seed, skip_unreadable=skip_unreadable)

    return DatasetSpec(name, load, check, f"class-per-subfolder tree at {path}")


register_folder_factory(_folder_spec)
