"""Decode image files of any mode and size into one uint8 tensor at a square storage size, cached.

Decoding thousands of JPEGs/PNGs takes seconds to minutes, so it happens once per (file list, size) and the
result is saved in the cache (torch.save, memory-mapped on load). Unreadable files are collected, never
silently dropped: the caller decides whether that is an error (default) or a counted skip. A SHA-1 of every
file's bytes is kept so byte-identical files across splits (leakage) can be reported.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from benchmarks.data.base import cache_dir
from benchmarks.data.errors import DataError

CACHE_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_GRAY_MODES = ("1", "L", "LA", "La")


@dataclass
class Decoded:
    """Images of the readable files, in input order; ``kept`` indexes the input list."""

    images: torch.Tensor          # uint8 (len(kept), C, size, size), C = 1 if every image is grayscale else 3
    kept: list[int]
    unreadable: list[str]         # "path: reason"
    digests: list[str]            # SHA-1 of each kept file's bytes


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Any PIL mode -> uint8 (1 or 3, H, W). 16/32-bit images are min-max scaled per image: 12-bit scanner data
    in a 16-bit container would otherwise be almost black after a fixed /257. Palette and RGBA images become RGB
    (alpha dropped), 1-bit and LA become L."""
    if img.mode in _HIGH_DEPTH_MODES:
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if hi > lo:
            a = (a - lo) * (255.0 / (hi - lo))
        else:   # a constant image has no range to stretch: map it by its container's full range instead
            a = np.clip(a * (255.0 / 65535.0) if img.mode.startswith("I;16") else a, 0, 255)
        return torch.from_numpy(np.rint(a).astype(np.uint8))[None]
    if img.mode in _GRAY_MODES:
        return torch.from_numpy(np.array(img.convert("L"), dtype=np.uint8))[None]
    if img.mode == "P":
        img = img.convert("RGBA")
    a = np.array(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def decode_bytes(data: bytes) -> torch.Tensor:
    """uint8 (1 or 3, H, W) from encoded bytes. PIL (libjpeg-turbo) for every format: torchvision's decoders
    are deprecated from 0.29 on, and PIL covers the odd modes (CMYK, palette, 16-bit) in one place."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return _pil_to_tensor(img)


def _key(paths: Sequence[Path], size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def decode_images(paths: Sequence[Path], size: int, *, cache_name: str, desc: str = "decoding") -> Decoded:
    """Decode and resize (square, antialiased bilinear) every file, or load the cached result."""
    path = cache_dir("images", cache_name) / f"{size}px_{_key(paths, size)}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True, mmap=True)
        return Decoded(blob["images"], list(blob["kept"]), list(blob["unreadable"]), list(blob["digests"]))
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    kept: list[int] = []
    unreadable: list[str] = []
    digests: list[str] = []
    all_gray = True
    for i, p in enumerate(tqdm(paths, desc=desc, unit="img", disable=None, file=sys.stderr)):
        try:
            data = p.read_bytes()
            img = decode_bytes(data)
        except (OSError, ValueError, RuntimeError, Image.DecompressionBombError) as exc:
            unreadable.append(f"{p}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if img.shape[-2:] != (size, size):
            img = TF.resize(img, [size, size], antialias=True)
        all_gray &= img.shape[0] == 1
        out[len(kept)] = img   # (1, S, S) broadcasts to 3 channels
        kept.append(i)
        digests.append(hashlib.sha1(data).hexdigest())
    if all_gray:
        images = out[:len(kept), :1].clone()
    else:
        images = out if len(kept) == len(paths) else out[:len(kept)].clone()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"images": images, "kept": kept, "unreadable": unreadable, "digests": digests}, tmp)
    os.replace(tmp, path)
    return Decoded(images, kept, unreadable, digests)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by suffix, hidden files excluded), sorted for a stable order."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def check_unreadable(decoded: Decoded, dataset: str, skip_unreadable: bool) -> None:
    """Unreadable files are an error naming them, unless the caller asked to skip them (then a printed count)."""
    bad = decoded.unreadable
    if not bad:
        return
    if not skip_unreadable:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"{dataset}: {len(bad)} unreadable image file(s): {shown}; fix or remove them, "
                        f"or load with skip_unreadable=True")
    print(f"{dataset}: skipped {len(bad)} unreadable image file(s) (skip_unreadable=True)", file=sys.stderr)
