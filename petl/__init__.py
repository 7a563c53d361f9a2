"""petl: parameter-efficient transfer learning for convolutional networks on medical images.

    model = petl.build_backbone("resnet50", weights="imagenet", num_classes=7, head="linear")
    model = petl.apply(model, "lora_c", rank=4, alpha=8)
    petl.summary(model); petl.merge(model); petl.save_adapter(model, "run.safetensors")
"""

from .api import Summary, apply, merge, summary, total_parameters, trainable_parameters, unmerge
from .backbone_registry import BackboneConfig, register_backbone
from .backbones import available_backbones, backbone_config, backbone_mean_std, build_backbone
from .batchnorm import set_bn_policy
from .errors import (AdapterFileError, DuplicateRegistrationError, PetlConfigError, PetlDataError, PetlError,
                     RecordError, WeightsError)
from .io import load_adapter, read_adapter_config, save_adapter, trained_state
from .registry import (MethodSpec, available_methods, describe, get_method, make_options, option_names,
                       register_method)
from .state import get_state, head_module, set_head

__version__ = "0.1.0"

__all__ = [
    "AdapterFileError", "BackboneConfig", "DuplicateRegistrationError", "MethodSpec", "PetlDataError", "RecordError",
    "available_backbones", "backbone_config", "backbone_mean_std", "describe", "register_backbone", "PetlConfigError", "PetlError", "Summary", "WeightsError", "apply",
    "available_methods", "build_backbone", "get_method", "get_state", "head_module", "load_adapter",
    "make_options", "merge", "option_names", "read_adapter_config", "register_method", "save_adapter",
    "set_bn_policy", "set_head", "summary", "total_parameters", "trainable_parameters", "trained_state", "unmerge",
]
