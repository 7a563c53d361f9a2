"""Per-image predictions of a run: ``OUT/runs/<run_name>.predictions.npz`` beside its record.

Tables of per-seed metrics cannot say how much a figure would move on other test images; the stored per-image
class scores can (bootstrap over images, paired tests on the same images, calibration, thresholds chosen on
validation). Each file holds, per split (``val``, ``test``): ``<split>_logits`` (float32, N x C: the model's raw
outputs, exactly those the engine computed the record's metrics from, so its figures are reproduced bit for bit;
``scores(task)`` gives the softmax / sigmoid scores), ``<split>_labels`` and ``<split>_index`` (the row of
each image in its split, so two runs can be matched image by image). It is written atomically before the record,
which holds its name and sha256; it is read with ``allow_pickle=False`` and checked against that digest, so a
corrupt, replaced or truncated file is reported as such, never silently used.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petl.errors import RecordError

from benchmarks.files import atomic_write_bytes

SPLITS = ("val", "test")
SUFFIX = ".predictions.npz"
FIELDS = ("logits", "labels", "index")


class PredictionsError(RecordError):
    """A predictions file that cannot be used; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class SplitPredictions:
    """One split's per-image logits (N x C), labels ((N,) class indices or (N, L) 0/1) and split row indices."""

    logits: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.logits)
        if self.logits.ndim != 2 or len(self.labels) != n or self.index.shape != (n,):
            raise ValueError(f"logits {self.logits.shape}, labels {self.labels.shape} and index {self.index.shape} "
                             f"do not describe the same images")

    def scores(self, task: str) -> np.ndarray:
        """Softmax (single-label) or sigmoid (multilabel) scores, float64, as the metrics use them."""
        from benchmarks.metrics import scores_from_logits
        return scores_from_logits(self.logits, task)


def path_for(runs_dir: Path, run_name: str) -> Path:
    return Path(runs_dir) / f"{run_name}{SUFFIX}"


def from_arrays(logits: Any, labels: Any) -> SplitPredictions:
    """Predictions of a whole split in its stored order (index 0..N-1)."""
    s = np.asarray(logits.cpu() if hasattr(logits, "cpu") else logits, dtype=np.float32)
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    y = y.astype(np.float32) if y.ndim == 2 else y.reshape(-1).astype(np.int64)
    return SplitPredictions(s, y, np.arange(len(s), dtype=np.int64))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(splits: dict[str, SplitPredictions]) -> bytes:
    """The compressed npz bytes for ``splits`` (deterministic for equal arrays)."""
    arrays = {f"{split}_{f}": getattr(p, f) for split, p in splits.items() for f in FIELDS}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write(path: Path, splits: dict[str, SplitPredictions]) -> dict[str, Any]:
    """Write ``splits`` atomically (benchmarks.files) and return the record's entry for it."""
    data = encode(splits)
    path = atomic_write_bytes(Path(path), data)   # honours the umask; a failed write leaves no file
    return {"file": path.name, "sha256": sha256_bytes(data), "splits": sorted(splits),
            "n": {split: int(len(p.logits)) for split, p in splits.items()}}


def read(path: Path, sha256: str | None = None) -> dict[str, SplitPredictions]:
    """The splits stored in ``path``; ``PredictionsError`` (one line naming the file) when it is missing, is not
    the file the record names (digest), or does not hold consistent arrays."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PredictionsError(f"predictions file {path} is missing; restore it (or rerun the run) to get its "
                               f"bootstrap intervals and paired tests") from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise PredictionsError(f"predictions file {path} does not match the sha256 in its record (corrupt or "
                               f"replaced); restore it or rerun the run")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        splits = sorted({k.rsplit("_", 1)[0] for k in arrays})
        return {s: SplitPredictions(arrays[f"{s}_logits"], arrays[f"{s}_labels"], arrays[f"{s}_index"])
                for s in splits}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise PredictionsError(f"predictions file {path} cannot be read ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'bad content'}); restore it or rerun "
                               f"the run") from None


def load_for_record(record: dict[str, Any], runs_dir: Path) -> dict[str, SplitPredictions] | None:
    """The record's predictions, None when the record has none (written before predictions were kept).

    Raises ``PredictionsError`` for a file the record names that is missing, corrupt or does not match it.
    """
    entry = record.get("predictions")
    if not isinstance(entry, dict) or not entry.get("file"):
        return None
    splits = read(Path(runs_dir) / str(entry["file"]), entry.get("sha256"))
    for split, n in (entry.get("n") or {}).items():
        if split in splits and len(splits[split].logits) != int(n):
            raise PredictionsError(f"predictions file {Path(runs_dir) / entry['file']} holds "
                                   f"{len(splits[split].logits)} {split} images, its record {n}; restore it or "
                                   f"rerun the run")
    return splits
