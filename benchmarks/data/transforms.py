"""Batched tensor transforms run on the training device: uint8 (B, C, H, W) -> float32 (B, 3, S, S), normalised.

Working on whole batches on the GPU (no per-sample PIL) keeps the data path from bottlenecking small models.
Every random draw comes from the generator passed in (drawn on its own device, then moved), so a seeded run
sees the same augmentations after a resume. Order: resize to ``img_size`` (antialiased bilinear, or nearest to
reproduce MedMNIST v2's "(224)" upsampling), grey -> 3 channels, augment (train only), normalise.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from benchmarks.data.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("none", "light", "medical", "randaugment")
RESIZE_MODES = ("bilinear", "nearest")

# "medical" preset ranges
MAX_ROTATION_DEG = 15.0
CROP_SCALE = (0.8, 1.0)          # area fraction of the random resized crop
CROP_RATIO = (3 / 4, 4 / 3)      # aspect ratio of the crop
BRIGHTNESS = (0.8, 1.2)          # multiplicative
CONTRAST = (0.8, 1.2)            # around each image's mean
GAMMA = (0.8, 1.25)

BatchTransform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    device = gen.device if gen is not None else torch.device("cpu")
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def resize(x: torch.Tensor, img_size: int, mode: str) -> torch.Tensor:
    """Float batch to (img_size, img_size). "nearest" uses pixel centres like PIL's NEAREST (what MedMNIST v2
    used), so an integer upscale equals ``repeat_interleave``; bilinear is antialiased when shrinking."""
    if x.shape[-2:] == (img_size, img_size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(img_size, img_size), mode="nearest-exact")
    return F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)


def flip(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Independent random horizontal and vertical flips (p = 0.5 each) per sample."""
    h = (_uniform(len(x), 0, 1, gen) < 0.5).to(x.device)[:, None, None, None]
    v = (_uniform(len(x), 0, 1, gen) < 0.5).to(x.device)[:, None, None, None]
    x = torch.where(h, x.flip(-1), x)
    return torch.where(v, x.flip(-2), x)


def medical_params(n: int, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Per-sample parameters of the "medical" preset (on the generator's device)."""
    area = _uniform(n, *CROP_SCALE, gen)
    # log-uniform aspect ratio, limited per sample to [area, 1/area] so both sides fit: the area is exact
    lo = torch.log(area.clamp(min=CROP_RATIO[0]))
    hi = torch.log((1 / area).clamp(max=CROP_RATIO[1]))
    ratio = (lo + (hi - lo) * _uniform(n, 0, 1, gen)).exp()
    w = (area * ratio).sqrt().clamp(max=1.0)          # crop width / height as fractions of the image
    h = (area / ratio).sqrt().clamp(max=1.0)
    return {
        "angle": _uniform(n, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, gen),
        "w": w, "h": h,
        "cx": (1 - w) * _uniform(n, -1, 1, gen),        # crop centre in normalised [-1, 1] coordinates
        "cy": (1 - h) * _uniform(n, -1, 1, gen),
        "hflip": (_uniform(n, 0, 1, gen) < 0.5).float() * -2 + 1,   # -1 flips, +1 keeps
        "vflip": (_uniform(n, 0, 1, gen) < 0.5).float() * -2 + 1,
        "brightness": _uniform(n, *BRIGHTNESS, gen),
        "contrast": _uniform(n, *CONTRAST, gen),
        "gamma": _uniform(n, *GAMMA, gen),
    }


def medical_theta(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 2, 3) affine maps from output to input coordinates: flip, scale to the crop, rotate, shift to its centre.
    Square images, so a rotation in normalised coordinates is a rotation in pixels."""
    a = torch.deg2rad(p["angle"])
    cos, sin = a.cos(), a.sin()
    sx, sy = p["w"] * p["hflip"], p["h"] * p["vflip"]
    return torch.stack([torch.stack([cos * sx, -sin * sy, p["cx"]], -1),
                        torch.stack([sin * sx, cos * sy, p["cy"]], -1)], 1)


def medical(x: torch.Tensor, gen: torch.Generator | None, mode: str) -> torch.Tensor:
    """Rotation (<= 15 deg), flips and random resized crop in one grid_sample; then brightness, contrast, gamma."""
    p = {k: v.to(x.device) for k, v in medical_params(len(x), gen).items()}
    grid = F.affine_grid(medical_theta(p), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest" if mode == "nearest" else "bilinear", padding_mode="zeros",
                      align_corners=False)
    x = (x * p["brightness"][:, None, None, None]).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * p["contrast"][:, None, None, None] + mean).clamp(0, 1)
    return x.pow(p["gamma"][:, None, None, None])


def randaugment(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """torchvision's RandAugment per sample. It draws from torch's global RNG, so that is forked and seeded
    from ``gen`` for the batch: reproducible, and the caller's global RNG is left untouched."""
    from torchvision.transforms import v2
    aug = v2.RandAugment()
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device if gen is not None else "cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([aug(img) for img in x])


def make_batch_transform(img_size: int, mean: Sequence[float], std: Sequence[float], augment: str = "none",
                         train: bool = False, resize_mode: str = "bilinear") -> BatchTransform:
    """The (batch, generator) -> normalised float batch function for one split. ``augment`` applies only when
    ``train`` is True, so one config can build its train and eval transforms alike."""
    if augment not in AUGMENTS:
        raise DataError(f"unknown augment preset {augment!r}; choose one of {', '.join(AUGMENTS)}")
    if resize_mode not in RESIZE_MODES:
        raise DataError(f"unknown resize_mode {resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    if int(img_size) <= 0:
        raise DataError(f"img_size must be positive, got {img_size}")
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if mean_t.numel() not in (1, 3) or std_t.numel() not in (1, 3) or (std_t <= 0).any():
        raise DataError(f"mean/std must have 1 or 3 values with std > 0, got mean={tuple(mean)} std={tuple(std)}")
    mean_t, std_t = mean_t.expand(3).reshape(1, 3, 1, 1), std_t.expand(3).reshape(1, 3, 1, 1)
    active = augment if train else "none"

    def transform(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"batch transform expects uint8 (B, C, H, W) with C in {{1, 3}}, "
                            f"got {x.dtype} {tuple(x.shape)}")
        out = resize(x.float().div_(255.0), img_size, resize_mode)
        if out.shape[1] == 1:
            out = out.expand(-1, 3, -1, -1)
        if active == "light":
            out = flip(out, gen)
        elif active == "medical":
            out = medical(out, gen, resize_mode)
        elif active == "randaugment":
            out = randaugment(out.contiguous(), gen)
        return (out - mean_t.to(out.device)) / std_t.to(out.device)

    return transform
