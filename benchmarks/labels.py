"""Labels a person can read: a configuration is named by its method plus what sets it apart from the others.

Two runs of one method that differ in an option or a run setting must not share a row, and a hash (``lora_c
#dbf25d``) does not tell the reader which is which. Here every configuration is flattened into ``setting ->
value`` (run settings by name, method options as ``method.option``), the settings whose values differ between
the configurations of one method are found, and each configuration gets ``method setting=value ...`` for those
settings only: ``lora_c rank=8``, ``full_ft epochs=12``. The dry run, the report's tables and its plots all name
configurations this way.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Sequence

# Never part of a label: the seed and dataset have their own columns, the hash stands for the weights file.
NOT_A_DIFFERENCE = ("method", "dataset", "seed", "weights_sha256")


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``RunConfig.to_dict()`` -> {setting: value}; options as ``method.option``; a weights file by its hash."""
    flat = {k: v for k, v in config.items() if k not in NOT_A_DIFFERENCE and k != "options"}
    if config.get("weights_sha256"):
        flat["weights"] = f"{os.path.basename(str(config.get('weights')))} (sha256 {config['weights_sha256'][:8]})"
    for method, options in (config.get("options") or {}).items():
        for key, value in (options or {}).items():
            flat[f"{method}.{key}"] = value
    return flat


def differing_settings(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Settings whose value is not the same in every configuration (a setting missing from one counts)."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys
            if len({json.dumps(f[k], sort_keys=True, default=str) if k in f else "<unset>" for f in flats}) > 1]


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "/".join(map(format_value, value)) or "()"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(key: str, method: str, keys: Sequence[str]) -> str:
    """``lora_c.rank`` -> ``rank`` on a single (not composed) method unless a run setting has that name."""
    prefix, _, option = key.rpartition(".")
    if prefix and "+" not in method and prefix == method and option not in keys:
        return option
    return key


def describe(config: dict[str, Any], keys: Sequence[str]) -> str:
    """``rank=8 epochs=12``: the values of ``keys`` in ``config`` (``keys`` as from ``differing_settings``)."""
    flat = flatten(config)
    method = str(config.get("method", ""))
    return " ".join(f"{_short(k, method, keys)}={format_value(flat.get(k))}" for k in keys)


def labels_for(configs: Sequence[dict[str, Any]]) -> list[str]:
    """One label per configuration: the method, plus the settings that differ among that method's configurations
    (over every dataset, so one variant has the same label on each dataset)."""
    by_method: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(configs):
        by_method[str(c["method"])].append(i)
    out = [""] * len(configs)
    for method, idx in by_method.items():
        keys = differing_settings([configs[i] for i in idx])
        for i in idx:
            extra = describe(configs[i], keys)
            out[i] = f"{method} {extra}" if extra else method
    return out
