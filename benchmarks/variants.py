"""A method's variants, and the reference each one is compared with.

A method's configurations differ in settings of two kinds. Its learning rates (``lr``, ``head_lr`` and method options
of those names, e.g. ``two_stage.lr``) are tuned: ``report --select-on val`` keeps one of them per variant, chosen on
validation. Anything else that differs (the loss, a rank, the epochs) makes a *variant*, a row of its own: the
ISIC 2018 rows trained with inverse-frequency cross-entropy must stand beside the plain ones, not compete with them
for one row on validation AUC.

A variant of a method is compared with the reference method's variant that was trained the same way in the settings
that tell the reference's own variants apart (``lora_c loss=weighted_ce`` with ``full_ft loss=weighted_ce``; a
method with only plain runs with the plain ``full_ft``). The reference's other variants are compared with its main
one: the variant most rows match (then the one with most seeds), e.g. ``full_ft loss=weighted_ce`` minus the plain
``full_ft``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Sequence

import pandas as pd

from benchmarks.labels import describe, differing_settings, flatten

TUNED_NAMES = ("lr", "head_lr")


def is_tuned(key: str) -> bool:
    """Whether a flattened setting (``lr``, ``two_stage.lr``) is tuned on validation rather than a variant."""
    return key.rsplit(".", 1)[-1] in TUNED_NAMES


def variant_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The settings, other than tuned ones, whose values differ among ``configs`` (one method's)."""
    return [k for k in differing_settings(configs) if not is_tuned(k)]


def variant_names(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{configuration id: ``loss=weighted_ce``-style variant name ("" when the method has one variant)}, the keys
    compared over each method's configurations on every dataset (one variant has one name everywhere)."""
    by_method: dict[str, list[str]] = defaultdict(list)
    for cid, config in configs.items():
        by_method[str(config["method"])].append(cid)
    names = {}
    for ids in by_method.values():
        keys = variant_keys([configs[i] for i in ids])
        names.update({i: describe(configs[i], keys) if keys else "" for i in ids})
    return names


def settings_json(config: dict[str, Any]) -> str:
    """The flattened configuration as a JSON string: a table cell that reference matching can read back."""
    return json.dumps(flatten(config), sort_keys=True, default=str)


def reference_pairs(d: pd.DataFrame, reference: str) -> list[tuple[str, pd.DataFrame, str]]:
    """(label, its rows, the reference label it is compared with) for every label of ``d`` (one dataset and
    device / precision; columns ``label``, ``method``, ``seed``, ``settings``) except the reference's main
    variant; empty without reference rows."""
    ref = d[d["method"] == reference]
    if ref.empty:
        return []
    ref_settings = {label: json.loads(rows["settings"].iloc[0]) for label, rows in ref.groupby("label")}
    seeds = ref.groupby("label")["seed"].nunique()
    keys = variant_keys(list(ref_settings.values()))

    def matching(settings: dict[str, Any]) -> list[str]:
        return [label for label, s in ref_settings.items() if all(s.get(k) == settings.get(k) for k in keys)]

    rows_of = {label: rows for label, rows in d.groupby("label")}
    matched = {label: matching(json.loads(rows["settings"].iloc[0])) for label, rows in rows_of.items()}
    votes = {label: sum(label in m for m in matched.values()) for label in ref_settings}
    main = sorted(ref_settings, key=lambda label: (-votes[label], -seeds[label], label))[0]
    pairs = []
    for label, rows in rows_of.items():
        if label == main:
            continue
        same_way = [] if label in ref_settings else sorted(matched[label], key=lambda m: (-seeds[m], m))
        pairs.append((label, rows, same_way[0] if same_way else main))
    return pairs
