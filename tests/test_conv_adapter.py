"""Conv-Adapter: parameter counts from methods.md, placement and arithmetic on ResNets (torchvision / timm,
Bottleneck / BasicBlock), generic mode on EfficientNet-Lite0, training isolation, adapter files, composition."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petl
from petl.methods.conv_adapter import ConvAdapter, adapter_weight_count, depthwise_form, slots

# methods.md: ResNet-50 adapter parameters (weights + scales, conv biases excluded)
PUBLISHED = {1: 1_295_232, 2: 666_496, 4: 352_128, 8: 194_944, 64: 57_408}
RESNET50_WIDTHS = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3   # conv2 channels of the 16 bottlenecks


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    torch.manual_seed(0)
    return petl.build_backbone("resnet50", weights=None, num_classes=7)


def adapters(model: nn.Module) -> list[ConvAdapter]:
    return [m for m in model.modules() if isinstance(m, ConvAdapter)]


@pytest.mark.parametrize("adapt_size", sorted(PUBLISHED))
def test_resnet50_parameter_counts_match_methods_md(resnet50, adapt_size):
    model = petl.apply(copy.deepcopy(resnet50), "conv_adapter", adapt_size=adapt_size)
    found = adapters(model)
    assert len(found) == 16
    assert sum(adapter_weight_count(a) for a in found) == PUBLISHED[adapt_size]
    biases = sum(w // adapt_size + w for w in RESNET50_WIDTHS)      # official convs have biases: w + Cout each
    assert sum(a.conv1.bias.numel() + a.conv2.bias.numel() for a in found) == biases
    head = 2048 * 7 + 7
    assert petl.trainable_parameters(model) == PUBLISHED[adapt_size] + biases + 2 * 2048 + head


def test_resnet50_placement_stride_and_structure(resnet50):
    model = petl.apply(copy.deepcopy(resnet50), "conv_adapter")
    from petl.resnet_blocks import resnet_blocks
    blocks = resnet_blocks(model)
    assert len(blocks) == 16 and all(isinstance(b.conv_adapter, ConvAdapter) for _, b in blocks)
    first_of_stage = [n for n, b in blocks if b.downsample is not None]
    assert first_of_stage == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    stride2 = [n for n, b in blocks if b.conv_adapter.conv1.stride == (2, 2)]
    assert stride2 == ["layer2.0", "layer3.0", "layer4.0"]       # the stride of conv2 (ResNet v1.5)
    a = model.layer3[0].conv_adapter
    assert a.conv1.groups == 256 // 8 and a.conv1.weight.shape == (32, 8, 3, 3) and a.conv2.weight.shape == (256, 32, 1, 1)
    assert a.scale.shape == (1, 256, 1, 1) and torch.equal(a.scale, torch.ones_like(a.scale))
    assert isinstance(model.avgpool.norm, nn.BatchNorm2d) and model.avgpool.norm.num_features == 2048
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[0].p == 0.2 and petl.get_state(model).head == "fc"
    assert "layer2.0.conv_adapter.conv1.weight" in model.state_dict()
    assert all(p.requires_grad for p in model.avgpool.norm.parameters())
    assert not model.layer1[0].conv2.weight.requires_grad


def _manual_adapter(a: ConvAdapter, h: torch.Tensor) -> torch.Tensor:
    z = F.conv2d(h, a.conv1.weight, a.conv1.bias, a.conv1.stride, a.conv1.padding, groups=a.conv1.groups)
    return F.conv2d(F.relu(z), a.conv2.weight, a.conv2.bias) * a.scale


def test_bottleneck_forward_equals_formula(resnet50):
    model = petl.apply(copy.deepcopy(resnet50), "conv_adapter").eval()
    block = model.layer2[0]                                        # stride 2, with downsample
    torch.manual_seed(1)
    with torch.no_grad():
        for p in block.conv_adapter.parameters():                  # non-trivial biases and scale
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 256, 8, 8)
        h = F.relu(block.bn1(block.conv1(x)))
        mid = F.relu(block.bn2(block.conv2(h))) + _manual_adapter(block.conv_adapter, h)
        expected = F.relu(block.bn3(block.conv3(mid)) + block.downsample(x))
        got = block(x)
        assert got.shape == (2, 512, 4, 4)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert all(s.pending is None and not s.handles for s in slots(model))   # nothing kept after forward


def test_basic_block_torchvision_resnet18_formula():
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("resnet18", weights=None, num_classes=3), "conv_adapter").eval()
    assert len(adapters(model)) == 8
    block = model.layer3[0]
    with torch.no_grad():
        x = torch.randn(2, 128, 8, 8)
        h = F.relu(block.bn1(block.conv1(x)))
        expected = F.relu(block.bn2(block.conv2(h)) + _manual_adapter(block.conv_adapter, h) + block.downsample(x))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def _zero_scales(model: nn.Module) -> None:
    with torch.no_grad():
        for a in adapters(model):
            a.scale.zero_()


@pytest.mark.parametrize("name", ["resnet26", "efficientnet_lite0"])
def test_timm_resnet_and_lite0_adapters_fire(name):
    """The adapter contributes (output moves) and is exactly additive (zero scale gives the plain model)."""
    torch.manual_seed(0)
    base = petl.build_backbone(name, weights=None, num_classes=2).eval()
    with torch.no_grad():                  # timm zero-inits each block's last BN, which would hide the adapter
        for m in base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
    model = petl.apply(copy.deepcopy(base), "conv_adapter", extra_bn=False).eval()
    expected_count = 8 if name == "resnet26" else 16               # timm bottlenecks / Lite0's conv_dw
    assert len(adapters(model)) == expected_count
    if name == "efficientnet_lite0":
        assert set(model.conv_adapters.keys()) == {n.replace(".", "__") for n, m in base.named_modules()
                                                   if n.endswith("conv_dw")}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = base(x), model(x)
        assert out.shape == (2, 2) and not torch.allclose(out, ref)
        _zero_scales(model)
        assert torch.equal(model(x), ref)


def test_generic_mode_errors_and_targets():
    model = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2)
    with pytest.raises(petl.PetlConfigError, match="blocks.0.0.conv_dw has 32 input channels"):
        petl.apply(copy.deepcopy(model), "conv_adapter", adapt_size=64)
    with pytest.raises(petl.PetlConfigError, match="matches no conv"):
        petl.apply(copy.deepcopy(model), "conv_adapter", targets=("nope.*",))
    with pytest.raises(petl.PetlConfigError, match="needs ResNet blocks"):
        petl.apply(copy.deepcopy(model), "conv_adapter", mode="resnet")
    one = petl.apply(copy.deepcopy(model), "conv_adapter", targets=("blocks.6.*.conv_pwl",))
    assert list(one.conv_adapters.keys()) == ["blocks__6__0__conv_pwl"]
    assert one(torch.randn(2, 3, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize("bad", [dict(adapt_size=0), dict(kernel_size=2), dict(mode="side"),
                                 dict(head_dropout=1.5), dict(mode="resnet", targets=("layer1.*",))])
def test_bad_options(bad):
    with pytest.raises(petl.PetlConfigError):
        petl.make_options("conv_adapter", bad)


def test_training_step_changes_only_adapter_bn_head_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = petl.build_backbone("resnet18", weights=None, num_classes=3)
    weights = tmp_path / "backbone.pth"                  # the random frozen backbone, for load_adapter to rebuild
    torch.save(model.state_dict(), weights)
    petl.apply(model, "conv_adapter")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    trainable = lambda k: k.startswith(("fc.", "avgpool.norm.")) or ".conv_adapter." in k  # noqa: E731
    assert changed and all(trainable(k) for k in changed), sorted(k for k in changed if not trainable(k))[:5]
    assert any(".conv_adapter." in k for k in changed) and "avgpool.norm.running_mean" in changed
    assert all(s.pending is None for s in slots(model))

    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable_names <= set(petl.trained_state(model))
    path = petl.save_adapter(model, tmp_path / "ca.safetensors")
    loaded = petl.load_adapter(path, weights=str(weights))
    model.eval(), loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_deepcopy_keeps_working_hooks():
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("resnet18", weights=None, num_classes=3), "conv_adapter").eval()
    clone = copy.deepcopy(model)
    assert slots(clone)[0].adapter is clone.layer1[0].conv_adapter         # hooks follow the copy
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
        _zero_scales(clone)                                               # the copy's own adapters are used
        assert not torch.equal(model(x), clone(x))


def _count_adapter_calls(model: nn.Module) -> list[int]:
    calls = [0]
    for a in adapters(model):
        a.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("order", [("lora_c", "conv_adapter"), ("conv_adapter", "lora_c"),
                                   ("gpaf", "conv_adapter"), ("conv_adapter", "gpaf")])
def test_composition(order):
    """The adapters keep firing whichever method replaces conv2 / act2 and in which order."""
    torch.manual_seed(0)
    model = petl.build_backbone("resnet18", weights=None, num_classes=3)
    for method in order:
        petl.apply(model, method)
    if "lora_c" in order:
        assert type(model.layer1[0].conv2).__name__ == "LoRAConv2d"
    calls = _count_adapter_calls(model)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 3) and calls[0] == 8
    assert model.layer2[0].conv_adapter.scale.grad is not None


def test_shared_gpaf_unit_at_every_activation_adds_each_adapter_once(resnet50):
    """A unit shared by act1/act2/act3 runs three times per bottleneck; the adapter joins after conv2 only."""
    model = petl.apply(copy.deepcopy(resnet50), "conv_adapter").eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for a in adapters(model):
            for p in a.parameters():
                p.normal_(0, 0.05)
    x = torch.randn(2, 3, 32, 32)
    calls = _count_adapter_calls(model)      # before the reference: a hooked adapter runs unfused both times
    with torch.no_grad():
        reference = model(x)
    petl.apply(model, "gpaf", kind="prelu", sharing="shared", where=("all",))   # PReLU at slope 0 = ReLU exactly
    calls[0] = 0
    with torch.no_grad():
        out = model(x)
    assert calls[0] == 16 and torch.equal(out, reference)


def test_interrupted_forward_leaves_no_hooks_or_tensors():
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("resnet18", weights=None, num_classes=3), "conv_adapter").eval()
    block = model.layer1[0]

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = block.act2.register_forward_hook(boom)                      # after the adapter's sink (bn2)
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert all(s.pending is None and not s.handles for s in slots(model))
    assert len(block.conv2._forward_pre_hooks) == 0 and len(block.bn2._forward_hooks) == 0
    calls = _count_adapter_calls(model)
    model(torch.randn(2, 3, 32, 32))
    assert calls[0] == 8


@pytest.mark.parametrize("channels, adapt_size, stride, layout", [
    (32, 8, 1, torch.channels_last), (96, 8, 2, torch.channels_last), (64, 4, 2, torch.contiguous_format),
    (64, 16, 1, torch.contiguous_format)])
def test_depthwise_form_equals_the_grouped_conv(channels, adapt_size, stride, layout):
    """conv1 as a depth-wise conv + per-group channel sum is the same function as the grouped conv: in float64
    outputs and all gradients (input, weight, bias) agree to rounding."""
    torch.manual_seed(0)
    conv = ConvAdapter(channels, 2 * channels, adapt_size, 3, stride).double().conv1
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(3, channels, 9, 9, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    params = (x, conv.weight, conv.bias)
    fast, grouped = depthwise_form(conv, x), conv(x)
    assert fast.shape == grouped.shape == (3, channels // adapt_size, (9 - 1) // stride + 1, (9 - 1) // stride + 1)
    torch.testing.assert_close(fast, grouped, rtol=0, atol=1e-12)
    upstream = torch.randn_like(grouped)
    for got, want in zip(torch.autograd.grad(fast, params, upstream), torch.autograd.grad(grouped, params, upstream)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size, stride, depthwise", [(2, 1, False), (4, 1, True), (32, 1, True), (33, 1, False),
                                                     (112, 2, True), (3, 2, False)])
def test_grouped_conv_takes_the_depthwise_form_where_it_measured_faster(size, stride, depthwise):
    adapter = ConvAdapter(32, 32, 8, 3, stride)
    x = torch.randn(1, 32, size, size)
    out = adapter.grouped_conv(x)
    assert ("Convolution" not in type(out.grad_fn).__name__) == depthwise
    torch.testing.assert_close(out, adapter.conv1(x), rtol=0, atol=1e-5)


def test_hooked_conv1_is_called_as_a_module():
    """A hook on conv1 (a user's feature probe, say) must fire: the fast form steps aside rather than bypass it."""
    adapter = ConvAdapter(16, 16, 8)
    seen = []
    adapter.conv1.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    adapter(torch.randn(2, 16, 5, 5))
    assert seen == [(2, 2, 5, 5)]


@pytest.mark.parametrize("layout, fused_op", [(torch.channels_last, "Addmm"), (torch.contiguous_format, "Baddbmm")])
@pytest.mark.parametrize("stride", [1, 2])
def test_add_to_is_base_plus_adapter_in_one_matrix_product(layout, fused_op, stride):
    """The hook's ``add_to(base, x)`` equals ``base + adapter(x)`` (outputs and the gradients of base, x and every
    adapter parameter, float64), and really runs as one addmm / baddbmm in both layouts."""
    torch.manual_seed(0)
    adapter = ConvAdapter(32, 48, 8, 3, stride).double()
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 32, 9, 9, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    base = torch.randn(adapter.output_shape(x), dtype=torch.float64).contiguous(memory_format=layout)
    base.requires_grad_()
    fused, plain = adapter.add_to(base, x), base + adapter(x)
    producers, node = [], fused.grad_fn                          # the output's views back to what made it
    while node is not None and len(producers) < 4:
        producers.append(type(node).__name__)
        node = node.next_functions[0][0] if node.next_functions else None
    assert any(name.startswith(fused_op) for name in producers), producers
    assert fused.is_contiguous(memory_format=layout)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    inputs = (base, x, *adapter.parameters())
    upstream = torch.randn_like(plain)
    for got, want in zip(torch.autograd.grad(fused, inputs, upstream), torch.autograd.grad(plain, inputs, upstream)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_add_to_calls_a_hooked_adapter_as_a_module():
    adapter = ConvAdapter(16, 16, 8)
    seen = []
    adapter.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(2, 16, 5, 5)
    base = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(adapter.add_to(base, x), base + adapter(x))
    assert seen == [(2, 16, 5, 5)] * 2
