"""The 12 MedMNIST v2 2D datasets, read from the official npz files with their official splits.

File names, tasks, class names, URLs and MD5s come from the ``medmnist`` package's ``INFO`` so they match what
its own download writes. A missing file is fetched with the package's own download (which verifies the MD5);
offline that fails and we say exactly which file to put where. Images stay uint8; the biggest files (e.g.
PathMNIST-224, ~16 GB of pixels) are extracted once into the cache and memory-mapped instead of held in RAM.

``np.load(..., mmap_mode="r")`` does not memory-map arrays inside an ``.npz`` (a zip): indexing one decompresses
it whole. So the image arrays are never read through ``np.load``: the ``.npy`` header is read from the zip
member to learn shape and size, a cached ``.u8`` copy is used when it exists (no decompression at all), and on a
cache miss the member is streamed into the memmap a chunk at a time (peak RAM: one chunk, not the array).
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import medmnist
import medmnist.dataset
import numpy as np
import torch
from medmnist import INFO

from benchmarks.data.base import DatasetBundle, ImageSplit, cache_dir
from benchmarks.data.errors import DataError, MissingDataError
from benchmarks.data.registry import register_dataset

FLAGS_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
            "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
REQUIRED_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
MMAP_THRESHOLD_BYTES = 2 << 30   # images arrays larger than this are memory-mapped from the cache
STREAM_CHUNK_BYTES = 64 << 20    # decompressed bytes per chunk when filling the cache


def _size(data_size: int | None) -> int:
    size = 28 if data_size is None else int(data_size)
    if size not in SIZES:
        raise DataError(f"MedMNIST data_size {data_size} is not available; choose one of {', '.join(map(str, SIZES))}")
    return size


def npz_name(flag: str, size: int) -> str:
    """The file name the medmnist package uses: ``breastmnist.npz`` for 28 px, ``breastmnist_64.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _download(flag: str, size: int, folder: Path) -> None:
    """medmnist's own download into ``folder`` (it verifies the official MD5)."""
    cls = getattr(medmnist.dataset, INFO[flag]["python_class"])
    folder.mkdir(parents=True, exist_ok=True)
    cls(split="train", root=str(folder), size=None if size == 28 else size, download=True)


def ensure_file(flag: str, root: Path, size: int) -> Path:
    """The npz path, downloading it when absent; ``DataError`` naming the expected path when that fails."""
    path = root / "medmnist" / npz_name(flag, size)
    if path.is_file():
        return path
    try:
        _download(flag, size, path.parent)
    except (RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingDataError(f"{INFO[flag]['python_class']} file not found: expected {path} (download failed: "
                        f"{reason}); put the official file there or pass --data-root DIR") from exc
    if not path.is_file():
        raise MissingDataError(f"{INFO[flag]['python_class']} file not found: expected {path} after download; "
                        f"put the official file there or pass --data-root DIR")
    return path


def _npz_keys(path: Path) -> list[str]:
    """Array names in the npz, reading only the zip directory (cheap even for multi-GB files)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable npz file ({exc}); replace it with the official MedMNIST file") from exc


def validate_keys(path: Path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in _npz_keys(path)]
    if missing:
        raise DataError(f"{path} lacks the MedMNIST keys {', '.join(missing)}; "
                        f"replace it with the official file (keys {', '.join(REQUIRED_KEYS)})")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(flag: str, path: Path, size: int) -> None:
    """The file must be the official one (comparable numbers need the official splits). The verified
    (path, size, mtime) is remembered in the cache so multi-GB files are hashed once, not every run."""
    expected = INFO[flag].get("MD5" if size == 28 else f"MD5_{size}")
    if not expected:
        return
    st = path.stat()
    stamp = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{expected}".encode()).hexdigest()[:16]
    marker = cache_dir("medmnist", "md5ok") / stamp
    if marker.exists():
        return
    actual = _md5(path)
    if actual != expected:
        raise DataError(f"{path} has MD5 {actual}, not the official {expected}; "
                        f"replace it with the official file from {INFO[flag]['url' + ('' if size == 28 else f'_{size}')]}")
    marker.touch()


def _member_header(zf: zipfile.ZipFile, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) from the ``.npy`` header of ``key`` inside the npz: a few hundred bytes are
    decompressed, not the array."""
    with zf.open(_member(zf, key)) as f:
        return _read_header(f, path, key)


def _member(zf: zipfile.ZipFile, key: str) -> str:
    """The zip member holding array ``key`` (``np.savez`` writes ``key.npy``; a bare ``key`` is accepted too)."""
    return f"{key}.npy" if f"{key}.npy" in zf.NameToInfo else key


def _read_header(f: Any, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(f)
        if version not in readers:
            raise ValueError(f".npy format version {version[0]}.{version[1]} (expected 1.0 or 2.0)")
        shape, fortran, dtype = readers[version](f)
    except ValueError as exc:
        raise DataError(f"{path}: {key} is not a readable .npy array ({exc}); replace it with the official file") \
            from exc
    return tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)


def _read_exact(f: Any, n: int, path: Path, key: str) -> bytes:
    """Exactly ``n`` bytes from a zip member stream (a short read means a truncated file)."""
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            raise DataError(f"{path}: {key} ends after {got} of {n} expected bytes (truncated file); "
                            f"replace it with the official file")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _stream_to_cache(zf: zipfile.ZipFile, path: Path, key: str, raw: Path, shape: tuple[int, ...]) -> None:
    """Decompress ``key`` from the zip into the (N, C, H, W) uint8 file ``raw``, ``STREAM_CHUNK_BYTES`` at a time;
    written to a temporary name and renamed, so a killed run leaves no half-written cache."""
    n, rest = shape[0], shape[1:]
    row = int(np.prod(rest))
    tmp = raw.with_suffix(f".tmp{os.getpid()}")
    if n == 0 or row == 0:
        tmp.touch()
        os.replace(tmp, raw)
        return
    out = np.memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 1 if len(shape) == 3 else shape[3], shape[1], shape[2]))
    try:
        with zf.open(_member(zf, key)) as f:
            _read_header(f, path, key)
            step = max(1, STREAM_CHUNK_BYTES // row)
            for i in range(0, n, step):
                rows = min(step, n - i)
                block = np.frombuffer(_read_exact(f, rows * row, path, key), dtype=np.uint8).reshape(rows, *rest)
                out[i:i + rows] = block[:, None] if len(shape) == 3 else block.transpose(0, 3, 1, 2)
        out.flush()
    except BaseException:
        del out
        tmp.unlink(missing_ok=True)
        raise
    del out
    os.replace(tmp, raw)


def _images_tensor(zf: zipfile.ZipFile, npz: Any, path: Path, key: str) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 array -> contiguous (N, C, H, W) uint8 tensor. Arrays above
    ``MMAP_THRESHOLD_BYTES`` come from a memory-mapped cache file, filled by streaming on the first load."""
    shape, dtype, fortran = _member_header(zf, path, key)
    if dtype != np.uint8 or len(shape) not in (3, 4):
        raise DataError(f"{path}: {key} must be uint8 (N, H, W[, C]), got {dtype} {shape}; "
                        f"replace it with the official file")
    nchw_shape = (shape[0], 1 if len(shape) == 3 else shape[3], shape[1], shape[2])
    if int(np.prod(shape)) <= MMAP_THRESHOLD_BYTES:
        arr = npz[key]
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return (t.unsqueeze(1) if arr.ndim == 3 else t.permute(0, 3, 1, 2)).contiguous()
    if fortran:
        raise DataError(f"{path}: {key} is stored in Fortran order, which cannot be streamed into the cache; "
                        f"replace it with the official (C-order) file")
    st = path.stat()
    stamp = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{key}".encode()).hexdigest()[:16]
    raw = cache_dir("medmnist", "mmap") / f"{path.stem}_{key}_{stamp}.u8"
    if not raw.exists():
        _stream_to_cache(zf, path, key, raw, shape)
    if int(np.prod(nchw_shape)) == 0:
        return torch.empty(nchw_shape, dtype=torch.uint8)
    flat = torch.from_file(str(raw), shared=False, size=int(np.prod(nchw_shape)), dtype=torch.uint8)
    return flat.view(nchw_shape)


def _labels_tensor(arr: np.ndarray, path: Path, key: str, multilabel: bool, n_classes: int) -> torch.Tensor:
    y = np.asarray(arr)
    if multilabel:
        if y.ndim != 2 or y.shape[1] != n_classes or not np.isin(y, (0, 1)).all():
            raise DataError(f"{path}: {key} must be 0/1 of shape (N, {n_classes}), got {y.shape}; "
                            f"replace it with the official file")
        return torch.from_numpy(y.astype(np.float32))
    y = y.reshape(len(y), -1)
    if y.shape[1] != 1 or (y.size > 0 and (y.min() < 0 or y.max() >= n_classes)):
        raise DataError(f"{path}: {key} must be class indices in [0, {n_classes}) of shape (N, 1), "
                        f"got shape {arr.shape}; replace it with the official file")
    return torch.from_numpy(y[:, 0].astype(np.int64))


def task_of(flag: str) -> str:
    """MedMNIST task strings -> ours. Ordinal regression (RetinaMNIST) is evaluated as multi-class by the
    official Evaluator, so it is multi-class here too."""
    return "multilabel" if INFO[flag]["task"].startswith("multi-label") else "multiclass"


def check_medmnist(flag: str, root: Path, *, data_size: int | None = None) -> None:
    """File present (downloaded if possible) with the official keys. The MD5 is checked at load time."""
    path = ensure_file(flag, root, _size(data_size))
    validate_keys(path)


def load_medmnist(flag: str, root: Path, *, img_size: int, seed: int = 0, data_size: int | None = None,
                  skip_unreadable: bool = False) -> DatasetBundle:
    """Official train / val / test splits at storage size ``data_size`` (``img_size`` is the transform's job;
    ``seed`` is unused: nothing is re-split)."""
    del img_size, seed, skip_unreadable
    size = _size(data_size)
    path = ensure_file(flag, root, size)
    validate_keys(path)
    verify_md5(flag, path, size)
    info = INFO[flag]
    class_names = [info["label"][k] for k in sorted(info["label"], key=int)]
    multilabel = task_of(flag) == "multilabel"
    with np.load(path) as npz, zipfile.ZipFile(path) as zf:   # np.load: labels and small image arrays only
        splits = {s: ImageSplit(_images_tensor(zf, npz, path, f"{s}_images"),
                                _labels_tensor(npz[f"{s}_labels"], path, f"{s}_labels", multilabel, len(class_names)))
                  for s in SPLITS}
    return DatasetBundle(flag, task_of(flag), class_names, splits["train"], splits["val"], splits["test"])


for _flag in FLAGS_2D:
    register_dataset(_flag, check=functools.partial(check_medmnist, _flag),
                     description=f"MedMNIST v2 {INFO[_flag]['python_class']} (official splits)")(
        functools.partial(load_medmnist, _flag))
