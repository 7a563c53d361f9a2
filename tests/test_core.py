"""The petl core: backbones, weight sources, registry errors, freezing, BatchNorm policy, summary, adapter I/O."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

import petl
from petl.backbones import lite0_key

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
    assert fc[0].p == 0.3 and fc[1].out_features == 512 and fc[4].out_features == 3
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


def test_bad_weights_give_clear_errors(tmp_path):
    with pytest.raises(petl.WeightsError, match="does not exist"):
        petl.build_backbone("resnet18", weights=str(tmp_path / "missing.pth"), num_classes=2)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(petl.WeightsError, match="cannot read"):
        petl.build_backbone("resnet18", weights=str(corrupt), num_classes=2)
    other = tmp_path / "r34.pth"
    torch.save(petl.build_backbone("resnet34", weights=None).state_dict(), other)
    with pytest.raises(petl.WeightsError, match="does not fit"):
        petl.build_backbone("resnet18", weights=str(other), num_classes=2)


def test_offline_imagenet_download_names_the_fix(monkeypatch):
    from torchvision.models import ResNet50_Weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V2), "get_state_dict", offline)
    with pytest.raises(petl.WeightsError, match="--weights FILE"):
        petl.build_backbone("resnet50", weights="imagenet", num_classes=2)


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


def test_adapter_roundtrip_for_bitfit(tmp_path):
    torch.manual_seed(0)
    model = petl.build_backbone("resnet18", weights=None, num_classes=3)
    petl.apply(model, "bitfit")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    path = petl.save_adapter(model, tmp_path / "bitfit.safetensors")
    # the frozen conv weights are random here, so rebuild from the same random weights via a file
    weights = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in model.state_dict().items()}, weights)
    loaded = petl.load_adapter(path, weights=str(weights))
    model.eval(), loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_load_adapter_rejects_non_adapter_files(tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"garbage")
    with pytest.raises(petl.AdapterFileError):
        petl.load_adapter(bogus)
    with pytest.raises(petl.AdapterFileError, match="does not exist"):
        petl.load_adapter(tmp_path / "nope.safetensors")
