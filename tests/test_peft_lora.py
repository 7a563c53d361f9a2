"""peft_lora: same targets as LoRA-C, parameter count, composition, merge, adapter round trip, matched rank."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import layer as peft_lora_layer
from torch import nn

import petl
from petl.methods._targets import resolve_conv_targets
from petl.methods.peft_lora import PEFT_PARAMS_PER_RANK_RESNET50, matched_peft_rank

HEAD_7 = 2048 * 7 + 7  # ResNet-50 linear head for 7 classes


def _peft_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, peft_lora_layer.Conv2d)]


def test_parameter_count_and_targets(base50):
    names = resolve_conv_targets(base50, None)
    expected_per_rank = sum(base50.get_submodule(n).in_channels * base50.get_submodule(n).kernel_size[0] ** 2
                            + base50.get_submodule(n).out_channels for n in names)
    assert expected_per_rank == PEFT_PARAMS_PER_RANK_RESNET50
    model = petl.apply(copy.deepcopy(base50), "peft_lora", rank=3)
    assert len(_peft_layers(model)) == 52
    assert sorted(n for n, m in model.named_modules() if isinstance(m, peft_lora_layer.Conv2d)) == sorted(names)
    assert petl.trainable_parameters(model) == 3 * expected_per_rank + HEAD_7
    assert isinstance(model, type(base50))   # the original object, not a PeftModel wrapper


def test_matched_rank(base50):
    assert [matched_peft_rank(base50, r) for r in (1, 2, 4, 8, 16)] == [1, 3, 6, 11, 22]
    convs = [base50.get_submodule(n) for n in resolve_conv_targets(base50, None)]
    assert matched_peft_rank(convs, 4) == 6
    with pytest.raises(petl.PetlConfigError):
        matched_peft_rank(base50, 0)


def test_identity_at_init_one_step_and_composition(base50, x):
    model = petl.apply(copy.deepcopy(base50), "bitfit")
    bn_weight = model.layer1[0].bn1.weight
    assert bn_weight.requires_grad
    petl.apply(model, "peft_lora", rank=2)
    assert bn_weight.requires_grad and model.fc.weight.requires_grad   # peft's freezing was undone
    assert not model.layer1[0].conv1.base_layer.weight.requires_grad
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), base50(x))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trainable and any("lora_B" in k for k in changed)


def test_merge_and_adapter_round_trip(x, tmp_path):
    torch.manual_seed(3)
    model = petl.build_backbone("resnet50", weights=None, num_classes=7)
    weights = tmp_path / "backbone.pth"               # the random frozen base, saved before petl.apply
    torch.save(model.state_dict(), weights)
    petl.apply(model, "peft_lora", rank=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(petl.trained_state(model))
    with torch.no_grad():                             # move every trained tensor: a dropped one changes the output
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    model.eval()
    w0 = [l.base_layer.weight.clone() for l in _peft_layers(model)]
    with torch.no_grad():
        unmerged = model(x)
        assert petl.merge(model) == 52
        merged = model(x)
    assert (merged - unmerged).norm() / unmerged.norm() <= 1e-5
    petl.unmerge(model)
    assert all(torch.allclose(w, l.base_layer.weight, atol=1e-6, rtol=0) for w, l in zip(w0, _peft_layers(model)))

    path = petl.save_adapter(model, tmp_path / "peft.safetensors")
    loaded = petl.load_adapter(path, weights=str(weights))
    loaded.eval()
    with torch.no_grad():   # the file's base is W before merge+unmerge (which moved W by float rounding)
        assert torch.equal(loaded(x), unmerged)


def test_bad_options(base50):
    for options, match in [({"rank": 0}, "rank"), ({"targets": ("nope*",)}, "matches no Conv2d"),
                           ({"lora": 1}, "valid options")]:
        with pytest.raises(petl.PetlConfigError, match=match):
            petl.apply(copy.deepcopy(base50), "peft_lora", **options)


def test_resnext_both_lora_methods_adapt_the_same_ungrouped_convs():
    """ResNeXt's conv2 is grouped (32 groups): peft cannot adapt it, so neither method's default does."""
    model = petl.build_backbone("resnext50_32x4d", weights=None, num_classes=2)
    names = resolve_conv_targets(model, None)
    assert len(names) == 52 - 16 and all(model.get_submodule(n).groups == 1 for n in names)
    adapted = {}
    for method in ("lora_c", "peft_lora"):
        m = petl.apply(copy.deepcopy(model), method, rank=2)
        adapted[method] = sorted(n for n, mod in m.named_modules() if hasattr(mod, "lora_A"))
    assert adapted["lora_c"] == adapted["peft_lora"] == sorted(names)
