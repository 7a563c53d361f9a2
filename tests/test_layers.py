"""The adapter-layer contract (petl.layers): every wrapper declares its base and its own parameters, and
targets, composition, merge and saving read that declaration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import petl
from petl.activations import available_activations, get_activation
from petl.layers import (AdapterLayer, adapter_layers, adapter_parameters, get_base_layer, is_adapter_layer,
                         mark_adapter_trainable, owned_prefixes, wrapped_base_names)
from petl.methods._targets import candidate_convs


def _resnet18() -> nn.Module:
    return petl.build_backbone("resnet18", weights=None, num_classes=3)


@pytest.mark.parametrize("method, options", [("lora_c", {"rank": 2}), ("peft_lora", {"rank": 2}),
                                             ("conv_adapter", {}), ("gpaf", {"kind": "prelu"}), ("ssf", {})])
def test_every_wrapper_declares_exactly_the_parameters_it_adds(method: str, options: dict) -> None:
    model = _resnet18()
    before = {id(p) for p in model.parameters()}
    petl.apply(model, method, **options)
    added = {id(p) for p in model.parameters()} - before
    declared = {id(p) for _, layer in adapter_layers(model) for p in adapter_parameters(layer).values()}
    assert added and declared == added
    for _, layer in adapter_layers(model):
        base = get_base_layer(layer)
        assert base is layer or not is_adapter_layer(base)      # unwrapped all the way down
        assert all(id(p) in before for p in base.parameters()) or base is layer


class _Outer(AdapterLayer, nn.Module):
    """A wrapper under a new attribute name: composition must follow its declaration, not a naming convention."""

    base_attr = "wrapped"
    adapter_parameter_names = ("gain",)

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.wrapped = inner
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped(x) * self.gain


def test_get_base_layer_unwraps_nested_wrappers_and_targets_skip_their_bases() -> None:
    model = _resnet18()
    petl.apply(model, "lora_c", rank=2, targets=("layer1.0.conv1",))
    conv = model.layer1[0].conv1.base
    model.layer1[0].conv1 = _Outer(model.layer1[0].conv1)
    assert get_base_layer(model.layer1[0].conv1) is conv
    assert wrapped_base_names(model) >= {"layer1.0.conv1.wrapped", "layer1.0.conv1.wrapped.base"}
    names = candidate_convs(model)
    assert not any(n.startswith("layer1.0.conv1") for n in names)    # neither the base nor a method's own conv
    assert "layer1.0.conv2" in names


def test_a_method_never_targets_another_methods_convs_in_generic_models() -> None:
    """peft's lora_A / lora_B convs live under the wrapper; LoRA-C's default targets on a non-ResNet are every conv
    but the stem, so without the declaration it would adapt peft's own factors."""
    model = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2)
    petl.apply(model, "peft_lora", rank=2)
    prefixes = owned_prefixes(model)
    assert prefixes and all(not n.startswith(prefixes) for n in candidate_convs(model))
    peft_params = {id(p) for _, layer in adapter_layers(model) for p in adapter_parameters(layer).values()}
    petl.apply(model, "lora_c", rank=1, targets=("*",))
    assert all(not n.startswith(prefixes) for n, m in model.named_modules() if type(m).__name__ == "LoRAConv2d")
    assert peft_params <= {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", available_activations())
def test_activation_units_declare_all_their_parameters(kind: str) -> None:
    unit = get_activation(kind)(num_channels=4)
    assert set(adapter_parameters(unit)) == {n for n, _ in unit.named_parameters()}
    unit.requires_grad_(False)
    mark_adapter_trainable(unit)
    assert all(p.requires_grad for p in unit.parameters())


def test_trained_state_keeps_the_recorded_set_while_part_of_it_is_frozen() -> None:
    """What replaced the engine's snapshot workaround: a head-only phase does not drop the adapters."""
    model = _resnet18()
    petl.apply(model, "lora_c", rank=2)
    full = set(petl.trained_state(model))
    for name, p in model.named_parameters():
        if not name.startswith("fc."):
            p.requires_grad_(False)
    assert set(petl.trained_state(model)) == full and any("lora_A" in k for k in full)
    assert petl.trainable_parameters(model) == 512 * 3 + 3       # counting still follows requires_grad


def test_failed_apply_restores_the_recorded_trained_set() -> None:
    model = _resnet18()
    petl.apply(model, "lora_c", rank=2)
    before = list(petl.get_state(model).trained)
    with pytest.raises(petl.PetlConfigError):
        petl.apply(model, "peft_lora", rank=2, targets=("no_such_conv",))
    after = petl.get_state(model).trained
    assert len(after) == len(before) and all(a is b for a, b in zip(after, before))
