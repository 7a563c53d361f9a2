"""SSF, norm_tuning and partial_ft: counts against formulas on ResNet-50 and Lite0, identity at init, SSF's exact
merge into the BatchNorm, BatchNorm policies, adapter round trips, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petl
from petl.methods.partial_ft import backbone_stages
from petl.methods.ssf import SSFNorm

HEAD_R50, HEAD_LITE0 = 2048 * 7 + 7, 1280 * 7 + 7
R50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))     # (bottleneck width, blocks)


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    torch.manual_seed(0)
    return petl.build_backbone("efficientnet_lite0", weights=None, num_classes=7).eval()


def _r50_bn_channels() -> int:
    """Stem BN 64; per bottleneck bn1 + bn2 (width each) + bn3 (4 width); one downsample BN (4 width) per stage."""
    return 64 + sum(n * 6 * w + 4 * w for w, n in R50_STAGES)


def _bottleneck_params(cin: int, w: int, downsample: bool) -> int:
    convs = cin * w + 9 * w * w + w * 4 * w + (cin * 4 * w if downsample else 0)
    bns = 2 * (w + w + 4 * w + (4 * w if downsample else 0))
    return convs + bns


def _r50_stage_params(i: int) -> int:
    w, n = R50_STAGES[i]
    cin = 64 if i == 0 else 2 * w          # previous stage's 4 * width
    return _bottleneck_params(cin, w, True) + (n - 1) * _bottleneck_params(4 * w, w, False)


def _randomise(model: nn.Module, std: float = 0.05) -> None:
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, SSFNorm):
                layer.ssf_scale.add_(torch.randn_like(layer.ssf_scale) * std)
                layer.ssf_shift.add_(torch.randn_like(layer.ssf_shift) * std)


# ------------------------------------------------------------------------------------------------------ SSF


def test_ssf_resnet50_count_and_exact_identity(base50, x):
    model = petl.apply(copy.deepcopy(base50), "ssf").eval()
    assert _r50_bn_channels() == 26_560
    assert petl.trainable_parameters(model) == 2 * 26_560 + HEAD_R50 == 53_120 + HEAD_R50
    assert sum(isinstance(m, SSFNorm) for m in model.modules()) == 53
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("fc.") or n.endswith(("ssf_scale", "ssf_shift")) for n in trainable)
    with torch.no_grad():
        assert torch.equal(model(x), base50(x))


def test_ssf_lite0_count_identity_and_position_before_the_fused_activation(lite0, x):
    bns = [m for m in lite0.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 1 + 2 + 15 * 3 + 1      # stem, the depth-wise-separable block, 15 inverted residuals, bn2
    channels = sum(m.num_features for m in bns)
    model = petl.apply(copy.deepcopy(lite0), "ssf").eval()
    assert petl.trainable_parameters(model) == 2 * channels + HEAD_LITE0
    with torch.no_grad():
        assert torch.equal(model(x), lite0(x))
    # timm's BatchNormAct2d: SSF sits between the normalisation and the ReLU6
    layer = model.bn1
    assert isinstance(layer, SSFNorm)
    with torch.no_grad():
        layer.ssf_scale.normal_(1, 0.3)
        layer.ssf_shift.normal_(0, 0.3)
        h = torch.randn(2, 32, 5, 5) * 3
        bn = layer.base
        norm = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        expected = (norm * layer.ssf_scale.view(1, -1, 1, 1) + layer.ssf_shift.view(1, -1, 1, 1)).clamp(0, 6)
        torch.testing.assert_close(layer(h), expected)


@pytest.mark.parametrize("train", [False, True])
def test_ssf_is_scale_and_shift_after_the_bn_in_both_modes(train):
    """y = gamma * BN(x) + beta, with BN on running (eval) or batch (train) statistics."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6).double()
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    layer = SSFNorm(copy.deepcopy(bn)).double()
    with torch.no_grad():
        layer.ssf_scale.normal_()
        layer.ssf_shift.normal_()
    h = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    bn.train(train)
    layer.train(train)
    expected = layer.ssf_scale.view(1, -1, 1, 1) * bn(h) + layer.ssf_shift.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(h), expected, rtol=1e-12, atol=1e-12)


def test_ssf_merge_is_exact_and_costs_nothing(base50, x):
    model = petl.apply(copy.deepcopy(base50), "ssf").eval()
    _randomise(model)
    bn_before = {n: (m.base.weight.clone(), m.base.bias.clone()) for n, m in model.named_modules()
                 if isinstance(m, SSFNorm)}
    with torch.no_grad():
        unmerged = model(x)
        assert (unmerged - base50(x)).norm() / base50(x).norm() > 1e-3
        assert petl.merge(model) == 53
        merged = model(x)
    assert (merged - unmerged).norm() / unmerged.norm() <= 1e-5
    # zero extra cost: the merged network IS the plain ResNet-50 with other BN affine values
    plain = copy.deepcopy(base50)
    plain.load_state_dict({k.replace(".base.", "."): v for k, v in model.state_dict().items()
                           if "ssf_" not in k}, strict=True)
    with torch.no_grad():
        assert torch.equal(plain(x), merged)
    petl.unmerge(model)
    for n, m in model.named_modules():
        if isinstance(m, SSFNorm):
            assert torch.equal(m.base.weight, bn_before[n][0]) and torch.equal(m.base.bias, bn_before[n][1])
    with torch.no_grad():
        assert torch.equal(model(x), unmerged)
    model.train()
    petl.merge(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        model(x)


def test_ssf_one_step_and_adapter_round_trip(x, tmp_path):
    torch.manual_seed(3)
    model = petl.build_backbone("resnet50", weights=None, num_classes=7)
    weights = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), weights)
    petl.apply(model, "ssf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed <= trainable and any(k.endswith("ssf_scale") for k in changed)   # BN statistics stayed frozen
    model.eval()
    with torch.no_grad():
        out = model(x)
    loaded = petl.load_adapter(petl.save_adapter(model, tmp_path / "ssf.safetensors"), weights=str(weights)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


def test_ssf_bad_input(base50):
    class NoNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean((2, 3)))

    with pytest.raises(petl.PetlConfigError, match="has none"):
        petl.apply(NoNorm(), "ssf")
    with pytest.raises(petl.PetlConfigError, match="matches no BatchNorm"):
        petl.apply(copy.deepcopy(base50), "ssf", targets=("layer9.*",))
    with pytest.raises(petl.PetlConfigError, match="valid options: targets"):
        petl.apply(copy.deepcopy(base50), "ssf", scale=1)


# ------------------------------------------------------------------------------------------------ norm_tuning


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_lite0"])
def test_norm_tuning_equals_bitfit_on_these_backbones(backbone, base50, lite0, x):
    base = base50 if backbone == "resnet50" else lite0
    sets = {}
    for method in ("norm_tuning", "bitfit"):
        m = petl.apply(copy.deepcopy(base), method)
        sets[method] = {n for n, p in m.named_parameters() if p.requires_grad}
    assert sets["norm_tuning"] == sets["bitfit"]
    bn_affine = sum(2 * m.num_features for m in base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    model = petl.apply(copy.deepcopy(base), "norm_tuning").eval()
    assert petl.trainable_parameters(model) == bn_affine + (HEAD_R50 if backbone == "resnet50" else HEAD_LITE0)
    if backbone == "resnet50":
        assert bn_affine == 53_120
    with torch.no_grad():
        assert torch.equal(model(x), base(x))


def test_norm_tuning_differs_from_bitfit_with_biased_convs_and_layernorm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.GroupNorm(2, 8), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    petl.set_head(model, "3")
    sets = {}
    for method in ("norm_tuning", "bitfit"):
        m = petl.apply(copy.deepcopy(model), method)
        sets[method] = {n for n, p in m.named_parameters() if p.requires_grad}
    assert sets["norm_tuning"] - sets["bitfit"] == {"1.weight"}          # the GroupNorm scale
    assert sets["bitfit"] - sets["norm_tuning"] == {"0.bias"}            # the conv bias


def test_norm_tuning_refuses_a_model_without_norm_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    petl.set_head(model, "2")
    with pytest.raises(petl.PetlConfigError, match="no norm layer"):
        petl.apply(model, "norm_tuning")
    with pytest.raises(petl.PetlConfigError, match="this method takes no options"):
        petl.apply(model, "norm_tuning", bn=True)


# ------------------------------------------------------------------------------------------------- partial_ft


def test_partial_ft_resnet50_counts_by_formula(base50, x):
    assert _r50_stage_params(3) == 14_964_736
    for stages in (1, 2, 3, 4):
        model = petl.apply(copy.deepcopy(base50), "partial_ft", stages=stages).eval()
        expected = sum(_r50_stage_params(i) for i in range(4 - stages, 4)) + HEAD_R50
        assert petl.trainable_parameters(model) == expected, stages
    with torch.no_grad():
        assert torch.equal(model(x), base50(x))
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad    # the stem stays frozen


def test_partial_ft_lite0_stages(lite0):
    assert backbone_stages(lite0) == [["blocks.1"], ["blocks.2"], ["blocks.3", "blocks.4"],
                                      ["blocks.5", "blocks.6", "conv_head", "bn2"]]
    model = petl.apply(copy.deepcopy(lite0), "partial_ft", stages=1)
    expected = sum(p.numel() for n in ("blocks.5", "blocks.6", "conv_head", "bn2")
                   for p in lite0.get_submodule(n).parameters())
    assert petl.trainable_parameters(model) == expected + HEAD_LITE0


@pytest.mark.parametrize("bn_stats", ["train", "frozen"])
def test_partial_ft_bn_policy(base50, bn_stats, tmp_path):
    model = petl.apply(copy.deepcopy(base50), "partial_ft", stages=1, bn_stats=bn_stats).train()
    top, low = model.layer4[0].bn1, model.layer3[0].bn1
    top0, low0 = top.running_mean.clone(), low.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    assert torch.equal(low.running_mean, low0)                        # frozen stages keep their statistics
    assert torch.equal(top.running_mean, top0) == (bn_stats == "frozen")
    stored = petl.trained_state(model)
    assert torch.equal(stored["layer4.0.bn1.running_mean"], top.running_mean)
    assert "layer3.0.bn1.weight" not in stored and "layer4.0.conv2.weight" in stored


def test_partial_ft_bad_input(base50):
    with pytest.raises(petl.PetlConfigError, match="1..4"):
        petl.apply(copy.deepcopy(base50), "partial_ft", stages=5)
    with pytest.raises(petl.PetlConfigError, match="bn_stats"):
        petl.apply(copy.deepcopy(base50), "partial_ft", bn_stats="yes")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    petl.set_head(model, "2")
    with pytest.raises(petl.PetlConfigError, match="knows the stages"):
        petl.apply(model, "partial_ft")
