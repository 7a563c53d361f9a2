"""BatchNorm running-statistics policy for a frozen backbone.

Policy ``"frozen"`` (the default once a method is applied): the backbone's BatchNorm layers normalise with
their pretrained running statistics even in ``model.train()``; only affine parameters a method marks trainable
(BitFit) still learn. This is the usual choice for parameter-efficient tuning on small medical datasets, where
batch statistics of a few hundred images would overwrite ImageNet's. Policy ``"train"`` restores ordinary
behaviour (running statistics update), used by full fine-tuning.

Implemented with a forward pre-hook that sets ``training = False`` on the layer just before it runs, so the
policy survives ``model.train()``, ``deepcopy`` and ``torch.func.functional_call``. BatchNorm layers that a
method adds later (Conv-Adapter's extra BN) are new and train normally.
"""

from __future__ import annotations

from torch import nn

from .errors import PetlConfigError
from .state import get_state

POLICIES = ("frozen", "train")


def _keep_eval(module: nn.Module, args: tuple) -> None:
    module.training = False


def set_bn_policy(model: nn.Module, policy: str, modules: list[nn.Module] | None = None) -> None:
    """Apply ``policy`` to the given BatchNorm layers (default: every BatchNorm layer in ``model``)."""
    if policy not in POLICIES:
        raise PetlConfigError(f"unknown BatchNorm policy {policy!r}; choose one of {', '.join(POLICIES)}")
    targets = modules if modules is not None else [m for m in model.modules()
                                                   if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in targets:
        hook_ids = [k for k, fn in bn._forward_pre_hooks.items() if fn is _keep_eval]
        if policy == "frozen" and not hook_ids:
            bn.register_forward_pre_hook(_keep_eval)
        elif policy == "train":
            for k in hook_ids:
                del bn._forward_pre_hooks[k]
            bn.training = model.training
    get_state(model).bn_policy = policy


def has_frozen_stats(module: nn.Module) -> bool:
    """True when ``module`` is a BatchNorm layer held at its running statistics."""
    return any(fn is _keep_eval for fn in module._forward_pre_hooks.values())
