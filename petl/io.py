"""Adapter files: the trained tensors in safetensors plus the JSON config needed to rebuild the model.

An adapter file holds only what training changed: parameters with ``requires_grad`` and the buffers of
modules whose statistics trained (BatchNorm layers not held frozen, modules with trainable parameters).
``load_adapter`` rebuilds the backbone from the recorded ``build_backbone`` arguments, replays the methods in
order, and loads the tensors strictly. The frozen base therefore has to come from somewhere reproducible: ImageNet
weights or a weights file recorded in the config, a ``weights=`` file given to ``load_adapter``, or the adapter
file itself when it holds every tensor (``full_ft``). A backbone built with ``weights=None`` had random frozen
weights that no file holds, so loading such an adapter without ``weights=`` is an error, not a different model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import EllipsisType
from typing import Any

import torch
from torch import nn

from .api import apply
from .backbones import build_backbone
from .batchnorm import has_frozen_stats
from .errors import AdapterFileError, PetlError
from .state import get_state

FORMAT = "petl-adapter/1"


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file stores (see module docstring): parameters with ``requires_grad`` or in the set
    the applied methods train (``PetlState.trained``), and the buffers named there."""
    recorded = {id(p) for p in get_state(model).trained}
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        own_params = list(module.named_parameters(recurse=False))
        trained = [(name, p) for name, p in own_params if p.requires_grad or id(p) in recorded]
        trains = bool(trained)
        for name, p in trained:
            out[prefix + name] = p
        stats_trained = isinstance(module, nn.modules.batchnorm._BatchNorm) and not has_frozen_stats(module)
        if trains or stats_trained:
            for name, b in module.named_buffers(recurse=False):
                # non-persistent buffers (peft OFT's index tables) are rebuilt by the module, not state
                if b is not None and name not in module._non_persistent_buffers_set:
                    out[prefix + name] = b
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the trained tensors and the rebuild config of ``model`` to ``path`` (.safetensors)."""
    from safetensors.torch import save_file
    state = get_state(model)
    if state.backbone is None:
        raise PetlError("save_adapter needs a model made by petl.build_backbone (its config is what load_adapter "
                        "rebuilds); for your own model save petl.trained_state(model) yourself")
    if any(getattr(m, "merged", False) for m in model.modules()):
        raise PetlError("model is merged; call petl.unmerge(model) before save_adapter")
    path = Path(path)
    tensors = trained_state(model)
    config = {"format": FORMAT, "backbone": state.backbone, "methods": state.methods, "bn_policy": state.bn_policy}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(_dedupe_shared(tensors), str(tmp), metadata={"petl": json.dumps(config)})
        os.chmod(tmp, 0o666 & ~_umask())      # safetensors creates 0600; a shared results folder needs the umask
        tmp.replace(path)
    except BaseException:   # a failed write (disk full, Ctrl-C) leaves the old file and no temporary one
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone any tensor whose storage another entry already uses: safetensors refuses shared storage (a guard;
    ``named_modules`` already lists a unit shared across positions once)."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    return out


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        config = json.loads(meta["petl"])
    except Exception as exc:
        raise AdapterFileError(f"{str(path)!r} is not a petl adapter file (safetensors with petl metadata): "
                               f"{type(exc).__name__}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise AdapterFileError(f"{str(path)!r} has format {found!r}, expected {FORMAT!r}")
    problem = _config_problem(config)
    if problem:
        raise AdapterFileError(f"{str(path)!r} has a malformed petl config ({problem}); it was edited or written "
                               f"by another tool: save the adapter again with petl.save_adapter")
    return config


def _config_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with the shape of an adapter file's config (None: it is what save_adapter writes)."""
    import inspect
    backbone, methods = config.get("backbone"), config.get("methods")
    accepted = set(inspect.signature(build_backbone).parameters)
    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str):
        return "'backbone' must be an object with a 'name'"
    if set(backbone) - accepted:
        return (f"unknown backbone argument(s) {sorted(set(backbone) - accepted)}; build_backbone takes "
                f"{sorted(accepted)}")
    if not isinstance(methods, list):
        return "'methods' must be a list"
    for i, entry in enumerate(methods):
        if not (isinstance(entry, dict) and isinstance(entry.get("method"), str)
                and isinstance(entry.get("options"), dict)):
            return f"methods[{i}] must be an object with a 'method' name and an 'options' object"
    return None


def load_adapter(path: str | Path, weights: str | None | EllipsisType = ..., map_location: str = "cpu") -> nn.Module:
    """Rebuild the model an adapter file was saved from and load its trained tensors.

    ``weights`` overrides the backbone weight source recorded in the file: a local state-dict file (as
    ``build_backbone`` takes) where the original run used ``weights=None`` or a file that moved, or ``"imagenet"``.
    """
    from safetensors.torch import load_file
    config = read_adapter_config(path)
    kwargs = dict(config["backbone"])
    if weights is not ...:
        kwargs["weights"] = weights
    model = build_backbone(**kwargs)
    for entry in config["methods"]:
        apply(model, entry["method"], **entry["options"])
    tensors = load_file(str(path), device=map_location)
    if kwargs["weights"] is None:
        _require_complete_file(model, tensors, path)
    expected = trained_state(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad_shape = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise AdapterFileError(f"adapter file {str(path)!r} does not match the rebuilt model: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}")
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise AdapterFileError(f"unexpected keys {result.unexpected_keys[:3]} in {str(path)!r}")
    return model


def _require_complete_file(model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """A random-init (weights=None) rebuild is only the saved model when the file overwrites every tensor."""
    frozen = [k for k in model.state_dict() if k not in tensors]
    if frozen:
        raise AdapterFileError(
            f"adapter file {str(path)!r} was saved from a backbone built with weights=None: its {len(frozen)} frozen "
            f"tensors (e.g. {frozen[:2]}) were random and are not in the file, so a rebuild would be a different "
            f"model; pass them: petl.load_adapter(path, weights='backbone.pth'), where backbone.pth is "
            f"torch.save(model.state_dict()) of that backbone taken before petl.apply")
