"""LoRA-C: parameter counts, exactness of every forward form, freezing, merge, adapter files, EfficientNet."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petl
from petl.methods.lora_c import LoRAConv2d, LoraCOptions

HEAD_7 = 2048 * 7 + 7  # ResNet-50 linear head for 7 classes


def _lora_layers(model: nn.Module) -> list[LoRAConv2d]:
    return [m for m in model.modules() if isinstance(m, LoRAConv2d)]


def _randomise_b(model: nn.Module, std: float = 0.02) -> None:
    with torch.no_grad():
        for layer in _lora_layers(model):
            layer.lora_B.normal_(0, std)


@pytest.mark.parametrize("rank", [1, 4])
def test_resnet50_parameter_count(base50, rank):
    model = petl.apply(copy.deepcopy(base50), "lora_c", rank=rank, alpha=2.0 * rank)
    assert len(_lora_layers(model)) == 52
    assert petl.trainable_parameters(model) == 109_440 * rank + HEAD_7
    assert not isinstance(model.conv1, LoRAConv2d)   # stem excluded
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("fc.") or n.endswith(("lora_A", "lora_B")) for n in trainable)


def _reference(x: torch.Tensor, layer: LoRAConv2d) -> torch.Tensor:
    """The definition: conv(x, W + (B @ A).view(W.shape) * alpha / r), written out independently."""
    b = layer.base
    dw = (layer.lora_B @ layer.lora_A).view(b.weight.shape) * (layer.alpha / layer.rank)
    return F.conv2d(x, b.weight + dw, b.bias, b.stride, b.padding, b.dilation, b.groups)


CONVS = {  # name: (Cin, Cout, k, stride, groups, forms that must apply)
    "1x1_s1": (16, 24, 1, 1, 1, ("materialize", "branch")),
    "1x1_s2": (16, 24, 1, 2, 1, ("materialize", "branch")),
    "3x3_s1": (12, 10, 3, 1, 1, ("materialize", "grouped")),
    "3x3_s2": (12, 10, 3, 2, 1, ("materialize", "grouped")),
    "3x3_dw": (12, 12, 3, 1, 12, ("materialize",)),
    "5x5_dw_s2": (8, 8, 5, 2, 8, ("materialize",)),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_every_form_matches_the_definition_float64(case):
    cin, cout, k, stride, groups, forms = CONVS[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True).double()
    x = torch.randn(3, cin, 11, 11, dtype=torch.float64)
    for form in forms + ("auto",):
        layer = LoRAConv2d(conv, rank=3, alpha=5.0, form=form)
        with torch.no_grad():
            layer.lora_B.normal_()
        expected = _reference(x, layer)
        for grad in (False, True):   # auto may pick a different form with and without a gradient
            with torch.set_grad_enabled(grad):
                out = layer(x)
            err = (out - expected).abs().max() / expected.abs().max()
            assert err < 1e-12, (form, grad, float(err))
        assert layer.delta_weight().abs().sum() > 0


def test_grouped_form_matches_explicit_grouped_conv():
    """The batch-folded implementation equals methods.md's conv(x, A2 repeated, groups=k) -> conv1x1(., B2)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(9, 5, 3, 2, 1, bias=False).double()
    layer = LoRAConv2d(conv, rank=2, alpha=4.0, form="grouped")
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 9, 7, 7, dtype=torch.float64)
    r, k = 2, 3
    a2 = layer.lora_A.view(r * k, 9 // k, k, k).repeat(k, 1, 1, 1)
    z = F.conv2d(x, a2, None, 2, 1, groups=k)
    b2 = torch.empty(5, k * r * k, dtype=torch.float64)
    for o in range(5):
        for q in range(k):
            b2[o, q * r * k:(q + 1) * r * k] = layer.lora_B[o * k + q]
    expected = conv(x) + F.conv2d(z, b2.view(5, -1, 1, 1)) * (4.0 / 2)
    assert torch.allclose(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_auto_takes_the_branch_only_on_small_maps_with_grad():
    conv = nn.Conv2d(8, 8, 1, bias=False)
    layer = LoRAConv2d(conv, rank=2, form="auto")
    assert layer.form_for(torch.zeros(1, 8, 4, 4)) == "branch"
    assert layer.form_for(torch.zeros(1, 8, 16, 16)) == "materialize"
    with torch.no_grad():
        assert layer.form_for(torch.zeros(1, 8, 4, 4)) == "materialize"
    assert LoRAConv2d(nn.Conv2d(8, 8, 3), form="auto").form_for(torch.zeros(1, 8, 2, 2)) == "materialize"


@pytest.mark.parametrize("form", ["branch", "grouped"])
def test_explicit_form_that_does_not_apply_is_an_error(form):
    conv = nn.Conv2d(64, 64, 3)   # a 3x3 (no branch) with Cin 64, not divisible by 3 (no grouped)
    with pytest.raises(petl.PetlConfigError, match="materialize"):
        LoRAConv2d(conv, form=form)
    with pytest.raises(petl.PetlConfigError, match="square"):
        LoRAConv2d(nn.Conv2d(4, 4, (1, 3)))


def test_model_level_form_error_leaves_model_untouched(base50):
    model = copy.deepcopy(base50)
    with pytest.raises(petl.PetlConfigError, match="does not apply"):
        petl.apply(model, "lora_c", form="branch")   # ResNet-50 has 3x3 convs
    assert not _lora_layers(model)


def test_dropout_path_matches_definition_in_eval_and_drops_in_train():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1).double()
    layer = LoRAConv2d(conv, rank=2, dropout=0.5, form="materialize")
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    layer.eval()
    assert torch.allclose(layer(x), _reference(x, layer), atol=1e-12)
    layer.train()
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    dropped = F.dropout(x, 0.5, True)
    expected = conv(x) + F.conv2d(dropped, layer.delta_weight(), None, 1, 1)
    assert torch.allclose(out, expected, atol=1e-12)
    assert not torch.allclose(out, _reference(x, layer))


def test_identity_at_init_and_one_step_changes_only_lora_and_head(base50, x):
    # auto at 32 px takes the branch on layer3/4's 1x1 convs and materialises the rest: both paths train
    plain = base50
    model = petl.apply(copy.deepcopy(base50), "lora_c", rank=2).eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the step changed nothing"
    assert all(k.startswith("fc.") or k.endswith(("lora_A", "lora_B")) for k in changed), sorted(changed)[:5]
    assert any(k.endswith("lora_B") for k in changed) and "fc.weight" in changed
    # every frozen tensor, parameters and buffers (BN running stats) alike, is bitwise unchanged
    for k in before:
        if not (k.startswith("fc.") or k.endswith(("lora_A", "lora_B"))):
            assert torch.equal(before[k], after[k]), k


def test_merge_is_exact_and_reversible(base50, x):
    model = petl.apply(copy.deepcopy(base50), "lora_c", rank=4).eval()
    _randomise_b(model)
    layers = _lora_layers(model)
    w0 = [l.base.weight.clone() for l in layers]
    n_params = petl.total_parameters(model)
    with torch.no_grad():
        unmerged = model(x)
        assert petl.merge(model) == 52
        assert all(l.merged for l in layers)
        assert all(not torch.equal(w, l.base.weight) for w, l in zip(w0, layers))
        merged = model(x)
        assert petl.total_parameters(model) == n_params
        rel = (merged - unmerged).norm() / unmerged.norm()
        assert rel <= 1e-5, float(rel)

        def boom() -> torch.Tensor:
            raise AssertionError("merged forward must not compute the delta")
        for l in layers:       # merged forward runs the base conv only
            l.delta_weight = boom
        assert torch.equal(model(x), merged)
        for l in layers:
            del l.delta_weight
    model.train()
    with pytest.raises(RuntimeError, match="unmerge"):   # training a merged model would silently train nothing
        model(x)
    model.eval()
    petl.unmerge(model)
    for w, l in zip(w0, layers):
        assert not l.merged
        assert torch.allclose(l.base.weight, w, atol=1e-6, rtol=0)


def test_adapter_round_trip(x, tmp_path):
    torch.manual_seed(5)
    model = petl.build_backbone("resnet50", weights=None, num_classes=7)
    weights = tmp_path / "backbone.pth"               # the random frozen base, saved before petl.apply
    torch.save(model.state_dict(), weights)
    petl.apply(model, "lora_c", rank=4, alpha=8.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(petl.trained_state(model))
    with torch.no_grad():                             # move every trained tensor: a dropped one changes the output
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    path = petl.save_adapter(model, tmp_path / "lora_c.safetensors")
    assert path.stat().st_size < 2 * 1024 * 1024
    with pytest.raises(petl.AdapterFileError, match="weights=None"):
        petl.load_adapter(path)
    loaded = petl.load_adapter(path, weights=str(weights))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert len(_lora_layers(loaded)) == 52


def test_efficientnet_lite0_depthwise():
    torch.manual_seed(0)
    model = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y0 = model(x)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    dense = [n for n, m in convs.items() if m.groups == 1 and n != "conv_stem"]
    depthwise = [n for n, m in convs.items() if m.groups > 1]
    # the default skips the stem and the depth-wise convs (their rank-r update would outsize the conv itself)
    default = petl.apply(copy.deepcopy(model), "lora_c", rank=2)
    assert sorted(n for n, m in default.named_modules() if isinstance(m, LoRAConv2d)) == sorted(dense)
    # depth-wise convs named explicitly are adapted and still merge exactly
    petl.apply(model, "lora_c", rank=2, targets=tuple(dense + depthwise))
    layers = _lora_layers(model)
    assert len(layers) == len(convs) - 1 and not isinstance(model.conv_stem, LoRAConv2d)
    assert sum(l.groups > 1 for l in layers) == len(depthwise) > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), y0)
        _randomise_b(model)
        unmerged = model(x)
        petl.merge(model)
        merged = model(x)
    assert not torch.allclose(unmerged, y0)
    assert (merged - unmerged).norm() / unmerged.norm() <= 1e-5


def test_targets_globs(base50):
    model = petl.apply(copy.deepcopy(base50), "lora_c", targets=("layer4.*.conv2", "layer1.0.downsample.0"))
    names = [n for n, m in model.named_modules() if isinstance(m, LoRAConv2d)]
    assert names == ["layer1.0.downsample.0", "layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]


@pytest.mark.parametrize("options, match", [
    ({"rank": 0}, "rank"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
    ({"form": "fused"}, "auto, materialize, branch, grouped"), ({"bogus": 1}, "valid options"),
    ({"targets": ("layer9.*",)}, "layer1.0.conv1"),
])
def test_bad_options(base50, options, match):
    with pytest.raises(petl.PetlConfigError, match=match):
        petl.apply(copy.deepcopy(base50), "lora_c", **options)


def test_options_dataclass_validates_directly():
    with pytest.raises(petl.PetlConfigError):
        LoraCOptions(rank=-1)
    assert LoraCOptions().form == "auto"


def test_never_wraps_the_convs_another_method_inserted():
    """After Conv-Adapter (generic mode on Lite0), LoRA-C's default and glob targets skip the adapters' own convs."""
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2), "conv_adapter",
                       adapt_size=16)
    adapter_convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "conv_adapter" in n]
    assert adapter_convs
    petl.apply(model, "lora_c", rank=2, targets=("*",))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRAConv2d)]
    assert wrapped and not any("conv_adapter" in n for n in wrapped)
