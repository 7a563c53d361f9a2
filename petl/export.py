"""``export_merged``: the trained model as a plain state dict of its base architecture (no petl needed to use it).

Deployment wants the network the backbone's own constructor builds (torchvision's ``resnet50(num_classes=C)``,
``timm.create_model("tf_efficientnet_lite0", num_classes=C)``), not a model that imports petl. Methods whose
update folds into the base weights (LoRA-C, SSF, peft's LoRA / DoRA / LoHa / LoKr / OFT, and every method that
only trains base tensors: BitFit, norm tuning, partial / full fine-tuning, linear probe) export exactly that. A
method that adds computation the base architecture does not have (Conv-Adapter's parallel modules, GPAF's
learnable activations) cannot be expressed in the base's tensors, so ``export_merged`` refuses it rather than
writing a file that would silently be a different model.

How, without naming a method: a copy of the model is merged, its state dict is mapped to the base's keys by
dropping the adapter wrappers' ``base.`` / ``base_layer.`` segment, the tensors of merged adapter layers are
dropped, and the result must be exactly the key set and shapes of ``build_backbone(..., weights=None)``. Then the
base architecture is built, the exported tensors are loaded strictly, and its output on a fixed random input is
compared with the merged model's: any leftover module, hook or activation the base lacks shows up there.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from .api import merge
from .backbones import build_backbone
from .errors import PetlError
from .state import get_state

WRAPPER_SEGMENTS = ("base", "base_layer")   # LoRA-C / SSF keep the wrapped layer as .base, peft as .base_layer
CHECK_SIZE = 64                              # side of the random image the output check uses
CHECK_RTOL = 1e-4


def _base_key(key: str) -> str:
    return ".".join(part for part in key.split(".") if part not in WRAPPER_SEGMENTS)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base architecture's state dict with every mergeable update folded in (``model`` is not changed).

    Raises ``PetlError`` naming the method when an applied method cannot be merged into the base weights.
    """
    state = get_state(model)
    if state.backbone is None:
        raise PetlError("export_merged needs a model made by petl.build_backbone (its config names the base "
                        "architecture to export to)")
    work = copy.deepcopy(model).eval()
    merge(work)
    base = build_backbone(**{**state.backbone, "weights": None}).eval()
    own = base.state_dict()
    merged_prefixes = tuple(f"{n}." for n, m in work.named_modules() if n and getattr(m, "merged", False))
    out: dict[str, torch.Tensor] = {}
    extra: list[str] = []
    for key, tensor in work.state_dict().items():
        mapped = _base_key(key)
        if mapped in own and mapped not in out:
            out[mapped] = tensor.detach().clone().cpu()
        elif not key.startswith(merged_prefixes):
            extra.append(key)
    methods = ", ".join(m["method"] for m in state.methods) or "(none)"
    missing = [k for k in own if k not in out]
    bad_shape = [k for k in out if out[k].shape != own[k].shape]
    if extra or missing or bad_shape:
        example = (extra or missing or bad_shape)[0]
        raise PetlError(f"cannot export {methods} as the plain {state.backbone['name']}: the method adds tensors the "
                        f"base architecture has no place for ({len(extra)} extra, e.g. {example!r}; {len(missing)} "
                        f"missing); only methods that merge into the base weights export (LoRA-C, SSF, peft LoRA, "
                        f"BitFit, ...): save it with petl.save_adapter instead")
    _check_outputs(work, base, out, state.backbone, methods)
    return out


@torch.no_grad()
def _check_outputs(merged: nn.Module, base: nn.Module, tensors: dict[str, torch.Tensor], backbone: dict,
                   methods: str) -> None:
    """The plain base with the exported tensors must compute what the merged model computes."""
    base.load_state_dict(tensors, strict=True)
    device = next(merged.parameters()).device
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, int(backbone.get("in_chans", 3)), CHECK_SIZE, CHECK_SIZE, generator=gen)
    want = merged(x.to(device)).float().cpu()
    got = base(x).float()
    scale = float(want.abs().max()) or 1.0
    err = float((got - want).abs().max())
    if err > CHECK_RTOL * scale:
        raise PetlError(f"cannot export {methods} as the plain {backbone['name']}: with the merged tensors the base "
                        f"architecture computes something else (max |difference| {err:.3g} on a test input), so "
                        f"the method changes the computation in a way that does not merge; save it with "
                        f"petl.save_adapter instead")


def export_merged(model: nn.Module, path: str | Path) -> Path:
    """Write the merged model as a plain state dict of its base architecture to ``path``.

    ``.safetensors`` paths are written with safetensors, anything else with ``torch.save`` (a dict of tensors,
    readable with ``torch.load(weights_only=True)``). The file loads with the backbone's own constructor and no
    petl import, e.g. ``timm.create_model("tf_efficientnet_lite0", num_classes=C).load_state_dict(sd)`` or
    ``torchvision.models.resnet50(num_classes=C).load_state_dict(sd)`` (a ``head="mlp"`` model needs the same
    Sequential head). ``model`` itself is left as it was (merged or not). Written atomically: a failed write
    leaves the old file and no temporary one.
    """
    tensors = {k: v.contiguous() for k, v in merged_state_dict(model).items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(tensors, str(tmp))
            from .io import _umask
            os.chmod(tmp, 0o666 & ~_umask())
        else:
            torch.save(tensors, str(tmp))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
