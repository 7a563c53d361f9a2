"""petl.export_merged: a plain state dict of the base architecture, loaded by torchvision / timm's own constructor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import petl

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _perturb_trained(model: nn.Module, std: float = 0.05) -> None:
    """Move every trainable tensor off its initial value, so a zero (identity) update cannot pass the test."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return petl.build_backbone("resnet18", weights=None, num_classes=3).eval()


def _torchvision_resnet18(sd: dict[str, torch.Tensor]) -> nn.Module:
    from torchvision.models import resnet18
    model = resnet18(num_classes=3)
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.mark.parametrize("method,options", [("lora_c", {"rank": 2}), ("ssf", {}), ("peft_lora", {"rank": 2}),
                                            ("peft_dora", {"rank": 2}), ("peft_loha", {"rank": 2}),
                                            ("bitfit", {}), ("norm_tuning", {})])
def test_resnet18_export_loads_into_torchvision(resnet18, tmp_path, method, options):
    model = petl.apply(copy.deepcopy(resnet18), method, **options).eval()
    _perturb_trained(model)
    with torch.no_grad():
        want = model(X)
    path = petl.export_merged(model, tmp_path / "merged.pt")
    sd = torch.load(path, weights_only=True)
    plain = _torchvision_resnet18(sd)
    with torch.no_grad():
        got = plain(X)
    assert set(sd) == set(resnet18.state_dict())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the update is really in the file: the untouched base computes something else
    assert (resnet18(X) - got).abs().max() > 1e-3
    assert not any(getattr(m, "merged", False) for m in model.modules())   # the caller's model is left unmerged


def test_export_of_merged_model_and_safetensors(resnet18, tmp_path):
    from safetensors.torch import load_file
    model = petl.apply(copy.deepcopy(resnet18), "lora_c", rank=2).eval()
    _perturb_trained(model)
    petl.merge(model)
    with torch.no_grad():
        want = model(X)
    sd = load_file(str(petl.export_merged(model, tmp_path / "merged.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(_torchvision_resnet18(sd)(X), want, rtol=1e-5, atol=1e-5)
    assert all(getattr(m, "merged", True) for m in model.modules() if hasattr(m, "merged"))   # still merged


def test_efficientnet_lite0_ssf_loads_into_timm(tmp_path):
    import timm
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2), "ssf").eval()
    _perturb_trained(model)
    with torch.no_grad():
        want = model(X)
    sd = torch.load(petl.export_merged(model, tmp_path / "lite0.pt"), weights_only=True)
    plain = timm.create_model("tf_efficientnet_lite0", num_classes=2)
    plain.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(X), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,options", [("conv_adapter", {}), ("gpaf", {})])
def test_methods_that_cannot_merge_refuse(resnet18, tmp_path, method, options):
    model = petl.apply(copy.deepcopy(resnet18), method, **options)
    with pytest.raises(petl.PetlError, match="cannot export .* save it with petl.save_adapter"):
        petl.export_merged(model, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_own_model_refused(tmp_path):
    with pytest.raises(petl.PetlError, match="petl.build_backbone"):
        petl.export_merged(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "x.pt")


def test_composed_mergeable_methods_export(resnet18, tmp_path):
    model = petl.apply(petl.apply(copy.deepcopy(resnet18), "lora_c", rank=2), "ssf").eval()
    _perturb_trained(model)
    with torch.no_grad():
        want = model(X)
        got = _torchvision_resnet18(torch.load(petl.export_merged(model, tmp_path / "m.pt"), weights_only=True))(X)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_change_outside_the_tensors_is_caught_by_the_output_check(resnet18, tmp_path):
    """A forward hook (no tensors of its own) changes the computation: the key check passes, the output check not."""
    model = petl.apply(copy.deepcopy(resnet18), "bitfit").eval()
    model.layer1.register_forward_hook(lambda m, i, out: out * 1.5)
    with pytest.raises(petl.PetlError, match="computes something else"):
        petl.export_merged(model, tmp_path / "x.pt")
