"""benchmarks.data.transforms: batched resize / normalise / augment on uint8 tensors."""

from __future__ import annotations

import pytest
import torch

from benchmarks.data import AUGMENTS, IMAGENET_MEAN, IMAGENET_STD, DataError, make_batch_transform
from benchmarks.data.transforms import MAX_ROTATION_DEG, medical_params, medical_theta

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _batch(b: int = 6, c: int = 1, h: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, h), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("augment", AUGMENTS)
def test_shape_and_dtype(channels: int, augment: str) -> None:
    tf = make_batch_transform(64, IMAGENET_MEAN, IMAGENET_STD, augment=augment, train=True)
    out = tf(_batch(c=channels), _gen(0))
    assert out.shape == (6, 3, 64, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_normalisation_values() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 4, 4).contiguous()
    out = make_batch_transform(4, IMAGENET_MEAN, IMAGENET_STD)(x, None)
    for i, v in enumerate((0, 51, 255)):
        expected = (v / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        assert torch.allclose(out[i, :, 0, 0], expected, atol=1e-6)
    half = make_batch_transform(4, (0.5,) * 3, (0.5,) * 3)(x, None)
    assert half.min() == -1.0 and half.max() == 1.0


def test_grayscale_becomes_three_equal_channels() -> None:
    out = make_batch_transform(28, *IDENTITY)(_batch(c=1), None)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_nearest_upsample_is_repeat_interleave() -> None:
    x = _batch(c=1, h=28)
    out = make_batch_transform(224, *IDENTITY, resize_mode="nearest")(x, None)
    expected = (x.float() / 255).repeat_interleave(8, dim=2).repeat_interleave(8, dim=3).expand(-1, 3, -1, -1)
    assert torch.equal(out, expected)


def test_bilinear_downsample_is_antialiased() -> None:
    """Stripes (255, 0, 0) shrunk 3x: plain bilinear samples only the 0 columns; antialiasing gives the mean 1/3."""
    stripes = ((torch.arange(63) % 3 == 0).to(torch.uint8) * 255).expand(1, 1, 63, 63).contiguous()
    out = make_batch_transform(21, *IDENTITY)(stripes, None)[..., 1:-1, 1:-1]
    assert torch.allclose(out, torch.full_like(out, 1 / 3), atol=0.02)


@pytest.mark.parametrize("augment", ["light", "medical", "randaugment"])
def test_same_seed_same_batch(augment: str) -> None:
    tf = make_batch_transform(32, IMAGENET_MEAN, IMAGENET_STD, augment=augment, train=True)
    x = _batch(b=8, c=3, h=32)
    a, b, c = tf(x, _gen(7)), tf(x, _gen(7)), tf(x, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_randaugment_leaves_global_rng_alone() -> None:
    tf = make_batch_transform(32, *IDENTITY, augment="randaugment", train=True)
    state = torch.get_rng_state()
    tf(_batch(b=4, c=3, h=32), _gen(1))
    assert torch.equal(state, torch.get_rng_state())


def test_augment_only_when_training() -> None:
    x = _batch(c=3, h=32)
    plain = make_batch_transform(32, *IDENTITY)(x, None)
    for augment in AUGMENTS:
        assert torch.equal(make_batch_transform(32, *IDENTITY, augment=augment, train=False)(x, _gen(0)), plain)


def test_light_gives_one_of_four_flips() -> None:
    x = _batch(b=1, c=1, h=8).expand(32, -1, -1, -1).contiguous()
    out = make_batch_transform(8, *IDENTITY, augment="light", train=True)(x, _gen(0))
    base = (x[:1].float() / 255).expand(-1, 3, -1, -1)
    variants = [base, base.flip(-1), base.flip(-2), base.flip(-1).flip(-2)]
    hits = [max(range(4), key=lambda k: torch.equal(o[None], variants[k])) for o in out]
    assert all(torch.equal(o[None], variants[k]) for o, k in zip(out, hits)) and len(set(hits)) == 4


def test_rotation_bounded_and_used() -> None:
    p = medical_params(20000, _gen(0))
    assert p["angle"].abs().max() <= MAX_ROTATION_DEG and p["angle"].abs().max() > 0.95 * MAX_ROTATION_DEG
    assert ((0.8 <= p["w"] * p["h"] + 1e-6) & (p["w"] <= 1) & (p["h"] <= 1)).all()
    assert ((p["cx"].abs() <= 1 - p["w"] + 1e-6) & (p["cy"].abs() <= 1 - p["h"] + 1e-6)).all()  # crop inside


def test_theta_identity_and_rotation_angle() -> None:
    one, zero = torch.ones(1), torch.zeros(1)
    ident = {"angle": zero, "w": one, "h": one, "cx": zero, "cy": zero, "hflip": one, "vflip": one}
    assert torch.allclose(medical_theta(ident), torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    rot = medical_theta({**ident, "angle": torch.full((1,), 15.0)})
    angle = torch.rad2deg(torch.atan2(rot[0, 1, 0], rot[0, 0, 0]))
    assert torch.isclose(angle, torch.tensor(15.0))


def test_medical_output_in_range() -> None:
    out = make_batch_transform(32, *IDENTITY, augment="medical", train=True)(_batch(b=16, c=3, h=40), _gen(3))
    assert out.min() >= 0 and out.max() <= 1 and out.shape == (16, 3, 32, 32)


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown augment preset 'strong'; choose one of none, light, medical, randaugment"):
        make_batch_transform(32, IMAGENET_MEAN, IMAGENET_STD, augment="strong")
    with pytest.raises(DataError, match="unknown resize_mode 'cubic'"):
        make_batch_transform(32, IMAGENET_MEAN, IMAGENET_STD, resize_mode="cubic")
    with pytest.raises(DataError, match="expects uint8"):
        make_batch_transform(32, IMAGENET_MEAN, IMAGENET_STD)(torch.zeros(2, 3, 8, 8), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_cpu_generator_matches_cpu() -> None:
    x = _batch(b=8, c=3, h=32)
    for augment in AUGMENTS:
        tf = make_batch_transform(64, IMAGENET_MEAN, IMAGENET_STD, augment=augment, train=True)
        gpu = tf(x.cuda(), _gen(5))
        assert gpu.is_cuda and gpu.shape == (8, 3, 64, 64)
        if augment in ("none", "light"):
            assert torch.allclose(gpu.cpu(), tf(x, _gen(5)), atol=1e-5)
