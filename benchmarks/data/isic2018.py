"""ISIC 2018 Task 3 (HAM10000) in its official file layout under ``DIR/isic2018/``.

Official splits are used where present. The official validation set is often absent (and is absent in the
shared subset), so ~15 % of training is carved out, stratified by class and grouped by ``lesion_id`` from
``HAM10000_metadata.csv``: several images show the same lesion, and splitting them across train/val leaks.
The carved split is seeded by the run's ``split_seed`` (default 0; never the run seed, so every seed and method is
validated on the same images) and recorded as a CSV in the cache.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.data.base import DatasetBundle, ImageSplit, cache_dir
from benchmarks.data.errors import DataError, MissingDataError
from benchmarks.data.images import IMAGE_SUFFIXES, check_unreadable, decode_images
from benchmarks.data.registry import register_dataset
from benchmarks.data.splits import persisted_holdout, warn_cross_split_duplicates

NAME = "isic2018"
CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
OFFICIAL = {
    "train": ("ISIC2018_Task3_Training_Input", "ISIC2018_Task3_Training_GroundTruth.csv"),
    "val": ("ISIC2018_Task3_Validation_Input", "ISIC2018_Task3_Validation_GroundTruth.csv"),
    "test": ("ISIC2018_Task3_Test_Input", "ISIC2018_Task3_Test_GroundTruth.csv"),
}
METADATA = "HAM10000_metadata.csv"
HOLDOUT_FRACTION = 0.15


def _no_data_size(data_size: int | None) -> None:
    if data_size is not None:
        raise DataError(f"data_size={data_size} applies to MedMNIST only; leave it unset for {NAME} "
                        f"(img_size sets the stored size)")


def _present_splits(folder: Path) -> list[str]:
    """Splits whose input folder and CSV both exist; half-present splits are an error, not a silent skip."""
    if not folder.is_dir():
        raise MissingDataError(f"ISIC 2018 folder not found: expected {folder} with {OFFICIAL['train'][0]}/ and "
                        f"{OFFICIAL['train'][1]}; put the official files there or pass --data-root DIR")
    present = []
    for split, (input_name, csv_name) in OFFICIAL.items():
        has_input, has_csv = (folder / input_name).is_dir(), (folder / csv_name).is_file()
        if has_input != has_csv or (split == "train" and not has_input):
            missing = folder / (csv_name if has_input else input_name)
            raise MissingDataError(f"ISIC 2018 {split} split incomplete: expected {missing}; put the official file "
                                   f"there or pass --data-root DIR")
        if has_input:
            present.append(split)
    return present


def _read_ground_truth(csv_path: Path) -> tuple[list[str], np.ndarray]:
    """(image ids, class indices) from the official one-hot CSV; anything but exactly one 1 per row is an error."""
    table = pd.read_csv(csv_path)
    missing = [c for c in ["image", *CLASSES] if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} lacks the column(s) {', '.join(missing)}; expected the official header "
                        f"image,{','.join(CLASSES)}")
    onehot = table[CLASSES].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(np.isin(onehot, (0.0, 1.0)).all(axis=1) & (onehot.sum(axis=1) == 1)))
    if len(bad):
        rows = ", ".join(str(table["image"].iloc[i]) for i in bad[:5])
        raise DataError(f"{csv_path}: {len(bad)} row(s) are not one-hot over {','.join(CLASSES)} (e.g. {rows}); "
                        f"use the official ground-truth file")
    return [str(s) for s in table["image"]], onehot.argmax(axis=1).astype(np.int64)


def _image_paths(input_dir: Path, names: list[str], csv_path: Path) -> list[Path]:
    """Path of each CSV row's image; rows whose image is missing are an error listing a few."""
    found = {p.stem: p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [n for n in names if n not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{csv_path.name} lists {len(missing)} image(s) missing from {input_dir}: {shown}; "
                        f"restore the official images or pass --data-root DIR")
    return [found[n] for n in names]


def _lesion_groups(folder: Path, names: list[str]) -> list[str]:
    """lesion_id per image from the HAM10000 metadata, when present; images it does not list form their own group.

    Without the metadata the split falls back to one group per image (the split is still made, as the issue
    asks for lesion grouping "from HAM10000_metadata.csv when present"), with a warning saying what that risks.
    """
    path = folder / METADATA
    if not path.is_file():
        warnings.warn(f"{path} not found: the carved validation split is grouped per image, not per lesion. "
                      f"HAM10000 has several images of many lesions, so near-identical images of one lesion can "
                      f"fall in both train and validation and inflate the validation score (leakage); put the "
                      f"official {METADATA} there to group by lesion", stacklevel=3)
        return list(names)
    meta = pd.read_csv(path, usecols=["lesion_id", "image_id"], dtype=str)
    lesion = dict(zip(meta["image_id"], meta["lesion_id"]))
    unlisted = [n for n in names if n not in lesion]
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else "")
        warnings.warn(f"{len(unlisted)} of {len(names)} training images are not listed in {path} ({shown}); each "
                      f"becomes its own group, so if they share a lesion with other images the validation split "
                      f"can leak; use the complete official {METADATA}", stacklevel=3)
    return [lesion.get(n, n) for n in names]


def check_isic(root: Path, *, data_size: int | None = None) -> None:
    """Folders and CSVs present, every listed image present (a directory listing per split: cheap)."""
    _no_data_size(data_size)
    folder = root / NAME
    for split in _present_splits(folder):
        input_name, csv_name = OFFICIAL[split]
        names, _ = _read_ground_truth(folder / csv_name)
        _image_paths(folder / input_name, names, folder / csv_name)


@register_dataset(NAME, check=check_isic, description="ISIC 2018 Task 3 dermoscopy, 7 classes")
def load_isic(root: Path, *, img_size: int, seed: int = 0, data_size: int | None = None,
              skip_unreadable: bool = False) -> DatasetBundle:
    """Official splits; missing val (and test) carved from training, grouped by lesion. Stored at ``img_size``."""
    _no_data_size(data_size)
    folder = root / NAME
    present = _present_splits(folder)
    parts: dict[str, tuple[list[str], np.ndarray, torch.Tensor, list[str]]] = {}
    for split in present:
        input_name, csv_name = OFFICIAL[split]
        names, labels = _read_ground_truth(folder / csv_name)
        paths = _image_paths(folder / input_name, names, folder / csv_name)
        decoded = decode_images(paths, img_size, cache_name=NAME, desc=f"{NAME} {split}")
        check_unreadable(decoded, f"{NAME} {split}", skip_unreadable)
        if decoded.images.shape[1] == 1:          # a colour dataset: keep every split 3-channel
            decoded.images = decoded.images.expand(-1, 3, -1, -1).contiguous()
        parts[split] = ([names[i] for i in decoded.kept], labels[decoded.kept], decoded.images, decoded.digests)

    split_dir = cache_dir(NAME, "splits")
    for held, stem, salt in (("test", "test_split", 1), ("val", "val_split", 2)):
        if held in parts:
            continue
        names, labels, images, digests = parts["train"]
        fraction = HOLDOUT_FRACTION if held == "test" or "test" in present else HOLDOUT_FRACTION / (1 - HOLDOUT_FRACTION)
        if held == "test":
            warnings.warn(f"{folder / OFFICIAL['test'][0]} not found: the test split is carved from training "
                          f"(grouped by lesion), so results are not comparable with the official test set", stacklevel=2)
        mask = persisted_holdout(split_dir, stem, names, _lesion_groups(folder, names), labels,
                                 fraction, seed, salt, held_name=held)
        idx_held, idx_kept = np.flatnonzero(mask), np.flatnonzero(~mask)
        pick = lambda idx: ([names[i] for i in idx], labels[idx], images[torch.from_numpy(idx)],
                            [digests[i] for i in idx])
        parts[held], parts["train"] = pick(idx_held), pick(idx_kept)

    warn_cross_split_duplicates(NAME, {s: p[0] for s, p in parts.items()}, {s: p[3] for s, p in parts.items()})
    splits = {s: ImageSplit(p[2], torch.from_numpy(np.asarray(p[1], dtype=np.int64)), list(p[0])) for s, p in parts.items()}
    return DatasetBundle(NAME, "multiclass", list(CLASSES), splits["train"], splits["val"], splits["test"])
