"""The backbone registry: one decorated function adds a backbone; every built-in config tells the truth."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import petl
from petl.backbone_registry import _BACKBONES
from petl.methods.lora_c import lora_c_parameters


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.block = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.block(self.act(self.stem(x)))).mean((2, 3)))


@pytest.fixture
def toy_registered() -> Iterator[str]:
    @petl.register_backbone("toy_cnn", classifier="fc", stem="stem", feature_dim=16, mean=(0.1, 0.2, 0.3),
                            std=(0.4, 0.5, 0.6), blocks=r"block", activations=r"act")
    def toy_cnn() -> nn.Module:
        """A two-conv toy CNN."""
        return _Toy()
    try:
        yield "toy_cnn"
    finally:
        _BACKBONES.pop("toy_cnn", None)


def test_a_toy_backbone_is_one_decorated_function_and_a_method_runs_on_it(toy_registered: str) -> None:
    assert toy_registered in petl.available_backbones()
    model = petl.build_backbone(toy_registered, weights=None, num_classes=3)
    assert model.fc.out_features == 3 and petl.backbone_mean_std(model) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    base_block = model.block
    petl.apply(model, "lora_c", rank=2)
    # default LoRA-C targets on a non-ResNet: every conv but the stem
    assert petl.trainable_parameters(model) == lora_c_parameters(base_block, 2) + 16 * 3 + 3
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    loss.backward()
    assert model.block.lora_A.grad is not None and model.stem.weight.grad is None


def test_a_registered_backbone_without_imagenet_weights_names_the_fix(toy_registered: str) -> None:
    with pytest.raises(petl.PetlConfigError, match="weights=None"):
        petl.build_backbone(toy_registered, weights="imagenet", num_classes=3)


def test_registering_a_name_twice_raises_the_shared_duplicate_error(toy_registered: str) -> None:
    with pytest.raises(petl.DuplicateRegistrationError, match="toy_cnn"):
        petl.register_backbone("toy_cnn", classifier="fc", stem="stem", feature_dim=16, mean=(0.5,) * 3,
                               std=(0.5,) * 3)(_Toy)
    with pytest.raises(petl.DuplicateRegistrationError, match="lora_c"):
        petl.register_method("lora_c", petl.get_method("lora_c").options)(lambda model, options: None)
    with pytest.raises(petl.DuplicateRegistrationError, match="prelu"):
        from petl.activations import register_activation
        register_activation("prelu")(nn.Module)


EXPECTED_BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33, "resnet152": 50,
                   "wide_resnet50_2": 16, "resnext50_32x4d": 16, "cifar_resnet18": 8, "cifar_resnet50": 16,
                   "efficientnet_lite0": 16}


def test_builtin_list_is_the_one_list_of_names() -> None:
    assert set(petl.available_backbones()) == set(EXPECTED_BLOCKS)


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_builtin_config_matches_the_built_model(name: str) -> None:
    model = petl.build_backbone(name, weights=None, num_classes=3)
    config = petl.backbone_config(name)
    assert config is not None
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert config.stem == first_conv
    assert model.get_submodule(config.classifier).in_features == config.feature_dim
    assert len(config.block_names(model)) == EXPECTED_BLOCKS[name]
    acts = config.activation_names(model)
    assert acts and all(isinstance(model.get_submodule(n), (nn.ReLU, nn.ReLU6)) for n in acts)
    n_relus = sum(isinstance(m, (nn.ReLU, nn.ReLU6)) for n, m in model.named_modules()
                  if not n.startswith(config.classifier))
    assert len(acts) == n_relus     # every backbone activation is found, and only those
    # the Grad-CAM layer is the last module (in completion order) whose output is still a spatial map (> 1 x 1)
    spatial: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: spatial.append(n) if out.dim() == 4 and out.shape[-1] > 1 else None)
             for n, m in model.named_modules() if n]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64))    # 64 px: every last map is >= 2 x 2, pooled ones 1 x 1
    for h in hooks:
        h.remove()
    assert config.cam_layer == spatial[-1] == petl.backbones.cam_target_layer(model, name)


def test_norm_backbone_works_for_torchvision_resnets() -> None:
    """The bug: ``--norm backbone`` with resnet50 passed validation, then failed (no pretrained_cfg)."""
    from benchmarks.config import RunConfig
    from benchmarks.engine import make_transforms
    model = petl.build_backbone("resnet50", weights=None, num_classes=2)
    assert petl.backbone_mean_std(model) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cfg = RunConfig(method="linear_probe", dataset="breastmnist", backbone="resnet50", weights=None, norm="backbone",
                    img_size=32)
    _, evaluate = make_transforms(cfg, model)
    out = evaluate(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))     # black: (0 - mean) / std per channel
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_norm_backbone_of_a_timm_name_reads_its_pretrained_cfg() -> None:
    model = petl.build_backbone("resnet10t", weights=None, num_classes=2)
    assert petl.backbone_mean_std(model) == (tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"]))


def test_a_model_without_statistics_names_the_fix() -> None:
    with pytest.raises(petl.PetlConfigError, match="--norm imagenet"):
        petl.backbone_mean_std(nn.Linear(2, 2))
