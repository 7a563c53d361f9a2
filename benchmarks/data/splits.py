"""Seeded, stratified, grouped hold-out splits, used only where no official split exists.

Grouping keeps every image of one group (an ISIC lesion, a patient) on one side, otherwise near-identical images
of one lesion land in train and val and the validation score leaks. Each carved split is written as a CSV in the
cache (image, group, label, split) so it can be inspected, and re-read on later runs so a run's split never
silently changes when this code does.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from benchmarks.data.errors import DataError


def grouped_stratified_holdout(labels: Sequence[int], groups: Sequence[str], fraction: float, seed: int,
                               salt: int = 0) -> np.ndarray:
    """Boolean mask of the held-out items: about ``fraction`` of each class's images, whole groups only.

    A group counts towards its most frequent class. Per class, groups are visited in a seeded random order and
    taken until the class's quota is reached; a class's last group always stays in training.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray([str(g) for g in groups])
    if len(labels) != len(groups):
        raise ValueError("labels and groups must have the same length")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    uniq, inverse = np.unique(groups, return_inverse=True)          # sorted: order independent of input order
    sizes = np.bincount(inverse, minlength=len(uniq))
    group_label = np.array([np.bincount(labels[inverse == g]).argmax() for g in range(len(uniq))]) if len(uniq) \
        else np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(salt)])
    held_groups = np.zeros(len(uniq), dtype=bool)
    for c in np.unique(group_label):
        members = np.flatnonzero(group_label == c)
        members = members[rng.permutation(len(members))]
        quota = round(fraction * int(sizes[members].sum()))
        taken = 0
        for g in members[:-1]:
            if taken >= quota:
                break
            held_groups[g] = True
            taken += int(sizes[g])
    return held_groups[inverse]


def _fingerprint(names: Sequence[str], groups: Sequence[str], labels: Sequence[int], fraction: float) -> str:
    h = hashlib.sha1(f"{fraction!r}".encode())
    for n, g, y in zip(names, groups, labels):
        h.update(f"{n}\t{g}\t{int(y)}\n".encode())
    return h.hexdigest()[:12]


def persisted_holdout(folder: Path, stem: str, names: Sequence[str], groups: Sequence[str],
                      labels: Sequence[int], fraction: float, seed: int, salt: int = 0,
                      held_name: str = "val", kept_name: str = "train") -> np.ndarray:
    """``grouped_stratified_holdout`` recorded as ``folder/<stem>_seed<seed>_<fingerprint>.csv``.

    The fingerprint covers the items, groups, labels and fraction, so a changed dataset gets a new file; an
    existing file is read back (and must list exactly these items) rather than recomputed.
    """
    path = folder / f"{stem}_seed{seed}_{_fingerprint(names, groups, labels, fraction)}.csv"
    if path.exists():
        table = pd.read_csv(path, dtype={"item": str, "group": str, "split": str})
        if sorted(table["item"]) != sorted(names) or not set(table["split"]) <= {held_name, kept_name}:
            raise DataError(f"split file {path} does not match the dataset's items; delete it to re-create it")
        held = dict(zip(table["item"], table["split"] == held_name))
        return np.array([bool(held[n]) for n in names])
    mask = grouped_stratified_holdout(labels, groups, fraction, seed, salt)
    table = pd.DataFrame({"item": list(names), "group": list(groups), "label": np.asarray(labels, dtype=np.int64),
                          "split": np.where(mask, held_name, kept_name)})
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return mask


def warn_cross_split_duplicates(dataset: str, split_items: dict[str, Sequence[str]],
                                split_digests: dict[str, Sequence[str]]) -> None:
    """``warnings.warn`` naming a few byte-identical files found in more than one split (test-set leakage)."""
    where: dict[str, list[tuple[str, str]]] = {}
    for split, digests in split_digests.items():
        for item, digest in zip(split_items[split], digests):
            where.setdefault(digest, []).append((split, item))
    shared = [v for v in where.values() if len({s for s, _ in v}) > 1]
    if shared:
        shown = "; ".join(" = ".join(f"{s}:{i}" for s, i in v) for v in shared[:3])
        warnings.warn(f"{dataset}: {len(shared)} file(s) are byte-identical across splits (leakage), e.g. {shown}",
                      stacklevel=3)
