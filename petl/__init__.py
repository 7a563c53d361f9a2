"""petl: parameter-efficient transfer learning for convolutional networks on medical images.

    model = petl.build_backbone("resnet50", weights="imagenet", num_classes=7, head="linear")
    model = petl.apply(model, "lora_c", rank=4, alpha=8)
    petl.summary(model); petl.merge(model); petl.save_adapter(model, "run.safetensors")
"""

import importlib
from typing import Any

from .errors import (AdapterFileError, DuplicateRegistrationError, PetlConfigError, PetlDataError, PetlError,
                     RecordError, WeightsError)
from .registry import (MethodSpec, available_methods, describe, get_method, make_options, option, option_names,
                       register_method)

# The torch-backed API is imported on first use (PEP 562), so ``import petl`` and the method registry cost
# milliseconds: command-line help and sweep planning need names, not tensors.
_LAZY = {
    "Summary": "api", "apply": "api", "merge": "api", "summary": "api", "total_parameters": "api",
    "trainable_parameters": "api", "unmerge": "api", "build_backbone": "backbones", "available_backbones": "backbones",
    "backbone_config": "backbones", "backbone_mean_std": "backbones", "BackboneConfig": "backbone_registry",
    "register_backbone": "backbone_registry", "set_bn_policy": "batchnorm", "export_merged": "export",
    "merged_state_dict": "export", "load_adapter": "io", "read_adapter_config": "io", "save_adapter": "io",
    "trained_state": "io",
    "get_state": "state", "head_module": "state", "set_head": "state",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'petl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AdapterFileError", "BackboneConfig", "DuplicateRegistrationError", "MethodSpec", "PetlConfigError",
    "PetlDataError", "PetlError", "RecordError", "Summary", "WeightsError", "apply", "available_backbones",
    "available_methods", "backbone_config", "backbone_mean_std", "build_backbone", "describe", "export_merged",
    "get_method", "get_state", "head_module", "load_adapter", "make_options", "merge", "merged_state_dict", "option",
    "option_names", "read_adapter_config", "register_backbone", "register_method", "save_adapter",
    "set_bn_policy", "set_head", "summary", "total_parameters", "trainable_parameters", "trained_state", "unmerge",
]
