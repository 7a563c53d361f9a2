"""Expand a preset + command-line choices into the list of fully resolved RunConfigs.

Precedence, lowest first: RunConfig defaults < preset ``[config]`` < preset ``[methods.NAME]`` < command-line
flags < ``--set FIELD=...`` ; method options: preset ``[methods.NAME] options`` < ``--set NAME.OPTION=...``.
Each method's published-recipe hook is folded in last (``apply_method_recipes``), so a run's key covers the
recipe it actually trains with. Nothing here names a method: per-method behaviour lives in presets and hooks.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import petl
from petl.registry import coerce_value, options_to_dict

from benchmarks import config as cfg
from benchmarks.config import DERIVED_FIELDS, SELECT_ON, RunConfig, apply_method_recipes, with_weights_hash

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# Fields chosen by dedicated flags (--methods/--datasets/--seeds) or by --set NAME.OPTION, never as plain fields.
STRUCTURAL_FIELDS = ("method", "dataset", "seed", "options")
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
SETTABLE_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig)
                        if f.name not in STRUCTURAL_FIELDS and f.name not in DERIVED_FIELDS)
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": cfg.OPTIMIZERS, "schedule": cfg.SCHEDULES, "loss": cfg.LOSSES, "norm": cfg.NORMS,
    "augment": cfg.AUGMENTS, "select_metric": cfg.SELECT_METRICS, "resize_mode": cfg.RESIZE_MODES,
    "cosine_end": cfg.COSINE_ENDS,
}
MIN_VALUES: dict[str, float] = {  # inclusive lower bounds; values below them cannot be meant
    "epochs": 1, "batch_size": 1, "img_size": 8, "weight_decay": 0, "momentum": 0, "min_lr": 0,
    "step_gamma": 0, "warmup_epochs": 0, "warmup_head_epochs": 0, "focal_gamma": 0,
    "early_stop_patience": 0, "limit_train_batches": 1, "split_seed": 0,
}
POSITIVE = ("lr", "head_lr", "step_gamma")
DATA_SIZES = (28, 64, 128, 224)


class SweepError(petl.PetlError, ValueError):
    """Bad sweep input; the message is one line naming the problem and the fix."""


# ----------------------------------------------------------------------------------------------- presets
def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (for --help)."""
    out = {}
    for path in sorted(PRESETS_DIR.glob("*.toml")):
        try:
            out[path.stem] = str(tomllib.loads(path.read_text()).get("description", "")).strip().splitlines()[0]
        except (tomllib.TOMLDecodeError, IndexError) as exc:
            out[path.stem] = f"(unreadable preset: {exc})"
    return out


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (benchmarks/presets/NAME.toml) or by path to a TOML file."""
    path = Path(name) if name.endswith(".toml") else PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise SweepError(f"unknown preset {name!r}; available presets: {', '.join(list_presets()) or '(none)'}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"preset {path} is not valid TOML ({exc}); fix the file") from None
    unknown = set(data) - {"description", "sweep", "config", "methods", "report"}
    if unknown:
        raise SweepError(f"preset {path.name}: unknown section(s) {', '.join(sorted(unknown))}; "
                         f"use description, [sweep], [config], [methods.NAME], [report]")
    _check_sweep_section(data.get("sweep", {}), path.name)
    report = data.get("report", {})
    bad = set(report) - {"select_on"}
    if bad or report.get("select_on", "none") not in SELECT_ON:
        raise SweepError(f"preset {path.name}: [report] takes only select_on = "
                         f"{' | '.join(repr(v) for v in SELECT_ON)}; got {report}")
    return data


SWEEP_KEYS = ("methods", "datasets", "seeds", "dataset_seeds", "set")


def _check_sweep_section(sweep: dict[str, Any], filename: str) -> None:
    """A misspelt ``[sweep]`` key would silently sweep the defaults; ``dataset_seeds`` must map names to seeds."""
    unknown = set(sweep) - set(SWEEP_KEYS)
    if unknown:
        raise SweepError(f"preset {filename}: unknown [sweep] key(s) {', '.join(sorted(unknown))}; "
                         f"use {', '.join(SWEEP_KEYS)}")
    per_dataset = sweep.get("dataset_seeds", {})
    if not isinstance(per_dataset, dict) or not all(
            isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                      for s in seeds)
            for seeds in per_dataset.values()):
        raise SweepError(f"preset {filename}: [sweep] dataset_seeds must map dataset names to non-empty lists of "
                         f"non-negative seeds, e.g. dataset_seeds = {{ breastmnist = [0, 1, 2, 3, 4] }}; "
                         f"got {per_dataset!r}")


def preset_seeds(sweep: dict[str, Any]) -> tuple[list[int], dict[str, list[int]]]:
    """A preset's seeds: every dataset's (``seeds``, default [0]) and the datasets that run others
    (``dataset_seeds``, e.g. the smallest test set gets more seeds so its intervals narrow)."""
    per_dataset = {name: list(dict.fromkeys(int(s) for s in seeds))
                   for name, seeds in sweep.get("dataset_seeds", {}).items()}
    return [int(s) for s in sweep.get("seeds", [0])], per_dataset


def preset_select_on(preset: dict[str, Any]) -> str:
    """How the runner's end-of-sweep report picks configurations: the preset's ``[report] select_on`` (a grid
    preset says "val", so that finishing a sweep rebuilds the tables the way the preset means them to be read)."""
    return preset.get("report", {}).get("select_on", "none")


# ------------------------------------------------------------------------------------------ field values
def coerce_field(name: str, value: Any, origin: str) -> Any:
    """Coerce a command-line string or TOML value to RunConfig field ``name``'s type and check its range."""
    if name not in SETTABLE_FIELDS:
        raise SweepError(f"{origin}: unknown run setting {name!r}; valid settings: {', '.join(SETTABLE_FIELDS)}")
    hint = FIELD_TYPES[name]
    try:
        if name == "weights":
            value = _weights_value(value)
        elif name == "step_milestones":
            parts = value.split(",") if isinstance(value, str) else list(value)
            value = tuple(int(p) for p in parts if str(p).strip())
        else:
            value = coerce_value(value, hint, name) if isinstance(value, str) else value
            target = petl.registry._non_optional(hint)
            if value is not None:
                if target is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if target in (int, float, str, bool) and not isinstance(value, target) or \
                        (target is int and isinstance(value, bool)):
                    raise ValueError(f"expected {target.__name__}, got {value!r}")
    except (ValueError, TypeError, petl.PetlConfigError) as exc:
        raise SweepError(f"{origin}: bad value for {name}: {exc}") from None
    _check_range(name, value, origin)
    return value


def _weights_value(value: Any) -> str | None:
    if value is None or str(value).lower() in ("none", "null", "random"):
        return None
    if value == "imagenet":
        return value
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ValueError(f"{value!r} is neither 'imagenet', 'none' nor an existing weights file")
    return str(path.resolve())


def _check_range(name: str, value: Any, origin: str) -> None:
    if value is None:
        return
    if name in CHOICES and value not in CHOICES[name]:
        raise SweepError(f"{origin}: {name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    if name in MIN_VALUES and value < MIN_VALUES[name]:
        raise SweepError(f"{origin}: {name} must be >= {MIN_VALUES[name]:g}, got {value!r}")
    if name in POSITIVE and value <= 0:
        raise SweepError(f"{origin}: {name} must be > 0, got {value!r}")
    if name == "data_size" and value not in DATA_SIZES:
        raise SweepError(f"{origin}: data_size must be one of {', '.join(map(str, DATA_SIZES))}, got {value!r}")
    if name == "head":
        from petl.backbones import HEADS
        if value not in HEADS:
            raise SweepError(f"{origin}: head must be one of {', '.join(HEADS)}, got {value!r}")
    if name == "backbone":
        _check_backbone(value, origin)


def _check_backbone(name: str, origin: str) -> None:
    import petl
    known = petl.available_backbones()
    if name in known:
        return
    import timm
    if not timm.is_model(name):
        raise SweepError(f"{origin}: unknown backbone {name!r}; use one of {', '.join(known)} or a timm model name")


# ------------------------------------------------------------------------------------------------- --set
@dataclass(frozen=True)
class SetItem:
    """One ``--set`` assignment: ``method`` is None for a RunConfig field; ``values`` has >1 entry to sweep."""

    method: str | None
    key: str
    values: tuple[Any, ...]


def parse_set(text: str) -> SetItem:
    """``lora_c.rank=4,8`` -> SetItem("lora_c", "rank", (4, 8)); values are validated, not just split.

    Commas sweep; for tuple-valued options and step_milestones (whose one value is itself a comma list)
    alternatives are separated by ';' instead.
    """
    if "=" not in text:
        raise SweepError(f"--set {text!r}: expected KEY=VALUE, e.g. --set lora_c.rank=8 or --set lr=1e-3")
    lhs, rhs = (s.strip() for s in text.split("=", 1))
    method, _, key = lhs.rpartition(".")
    if method:
        try:
            spec = petl.get_method(method)
        except petl.PetlConfigError as exc:
            raise SweepError(f"--set {text}: {exc}") from None
        hint = typing.get_type_hints(spec.options).get(key)
        if hint is None:
            raise SweepError(f"--set {text}: unknown option {key!r} for method {method!r}; valid options: "
                             f"{', '.join(petl.option_names(method)) or '(none)'}")
        raw = _split_values(rhs, typing.get_origin(petl.registry._non_optional(hint)) is tuple)
        values = []
        for v in raw:
            try:
                options = petl.make_options(method, {key: v})
            except petl.PetlConfigError as exc:
                raise SweepError(f"--set {text}: {exc}") from None
            values.append(options_to_dict(options)[key])
        return SetItem(method, key, tuple(values))
    raw = _split_values(rhs, key == "step_milestones")
    return SetItem(None, key, tuple(coerce_field(key, v, f"--set {text}") for v in raw))


def _split_values(rhs: str, tuple_valued: bool) -> list[str]:
    parts = [p.strip() for p in rhs.split(";" if tuple_valued else ",")]
    if not rhs.strip() or any(p == "" for p in parts):
        raise SweepError(f"--set value {rhs!r} has an empty entry; write e.g. KEY=4,8")
    return parts


# --------------------------------------------------------------------------------------------- expansion
@dataclass
class SweepSpec:
    """Everything a sweep is made of, before expansion."""

    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    fields: dict[str, Any] = field(default_factory=dict)                  # preset [config] values
    dataset_seeds: dict[str, list[int]] = field(default_factory=dict)     # datasets run with other seeds
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset [methods.NAME]
    cli_fields: dict[str, Any] = field(default_factory=dict)              # flags given on the command line
    sets: list[SetItem] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedRun:
    config: RunConfig
    label: str          # method + explicitly chosen options, e.g. "lora_c[rank=8]" (tables group by it)


def check_methods(methods: list[str]) -> None:
    if not methods:
        raise SweepError("no methods given; pass --methods NAME[,NAME...] (see --help for the list) or --preset")
    for composed in methods:
        for name in composed.split("+"):
            try:
                petl.get_method(name)
            except petl.PetlConfigError as exc:
                raise SweepError(f"--methods: {exc}") from None


def check_duplicate_sets(sets: list[SetItem]) -> None:
    """Two ``--set`` for one key would silently keep only the last; say so and show the one-flag form."""
    seen: dict[tuple[str | None, str], SetItem] = {}
    for item in sets:
        where = (item.method, item.key)
        if where in seen:
            name = f"{item.method}.{item.key}" if item.method else item.key
            sep = ";" if any(isinstance(v, (tuple, list)) for v in (*seen[where].values, *item.values)) else ","
            both = sep.join(",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
                            for v in (*seen[where].values, *item.values))
            raise SweepError(f"--set {name} is given twice; put every value in one --set to sweep them "
                             f"(--set {name}={both})")
        seen[where] = item


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """methods x datasets x swept --set values x seeds (the dataset's own, where ``dataset_seeds`` names it)
    -> validated, recipe-resolved runs (deduplicated)."""
    check_methods(spec.methods)
    check_duplicate_sets(spec.sets)
    if not spec.datasets:
        raise SweepError("no datasets given; pass --datasets NAME[,NAME...]")
    if not spec.seeds:
        raise SweepError("no seeds given; pass --seeds 0,1,2")
    components = {n for m in spec.methods for n in m.split("+")}
    for item in spec.sets:
        if item.method is not None and item.method not in components:
            raise SweepError(f"--set {item.method}.{item.key}: method {item.method!r} is not among the methods "
                             f"being run ({', '.join(spec.methods)}); add it to --methods or drop the --set")
    for name in spec.method_overrides:
        for part in name.split("+"):
            try:
                petl.get_method(part)
            except petl.PetlConfigError as exc:
                raise SweepError(f"preset [methods.{name}]: {exc}") from None

    base = {k: coerce_field(k, v, "preset [config]") for k, v in spec.fields.items()}
    planned: dict[str, PlannedRun] = {}
    for dataset in spec.datasets:
        for method in spec.methods:
            parts = method.split("+")
            fields, options = dict(base), {p: {} for p in parts}
            for name in (*parts, method) if len(parts) > 1 else parts:
                override = dict(spec.method_overrides.get(name, {}))
                opts = override.pop("options", {})
                if opts and name not in options:
                    raise SweepError(f"preset [methods.{name}]: put options under the single methods, "
                                     f"e.g. [methods.{parts[0]}] options = {{...}}")
                options.get(name, {}).update(opts)
                fields.update({k: coerce_field(k, v, f"preset [methods.{name}]") for k, v in override.items()})
            fields.update(spec.cli_fields)
            sets = [s for s in spec.sets if s.method is None or s.method in parts]
            for combo in itertools.product(*(s.values for s in sets)):
                run_fields, run_options = dict(fields), {k: dict(v) for k, v in options.items()}
                for item, value in zip(sets, combo):
                    if item.method is None:
                        run_fields[item.key] = value
                    else:
                        run_options[item.method][item.key] = value
                swept = {item.key: value for item, value in zip(sets, combo)
                         if item.method is None}
                for seed in spec.dataset_seeds.get(dataset, spec.seeds):
                    run = _resolve(method, dataset, seed, run_fields, run_options, swept)
                    planned.setdefault(run.config.key(), run)
    return list(planned.values())


def _resolve(method: str, dataset: str, seed: int, fields: dict[str, Any],
             options: dict[str, dict[str, Any]], swept: dict[str, Any] | None = None) -> PlannedRun:
    """Validated, recipe-resolved run; run fields given by ``--set`` (``backbone=a,b``) join its table label."""
    full_options = {}
    for name, values in options.items():
        try:
            full_options[name] = options_to_dict(petl.make_options(name, values))
        except petl.PetlConfigError as exc:
            raise SweepError(f"options for {name}: {exc}") from None
    config = RunConfig(method=method, dataset=dataset, seed=seed, options=full_options, **fields)
    config = apply_method_recipes(config)
    try:
        config = with_weights_hash(config)
    except OSError as exc:
        raise SweepError(f"weights file {config.weights}: cannot read it ({exc.strerror}); pass a readable "
                         f"--weights FILE") from None
    label = options_label(method, options)
    if swept:   # the values the run trains with: a method's recipe may replace a swept field (two_stage: lr)
        label += " " + " ".join(f"{k}={_fmt(getattr(config, k, v))}" for k, v in sorted(swept.items()))
    return PlannedRun(config=config, label=label)


def options_label(method: str, explicit: dict[str, dict[str, Any]]) -> str:
    """``lora_c[rank=8]``; only options chosen explicitly appear, so defaults keep the plain method name."""
    out = []
    for name in method.split("+"):
        opts = explicit.get(name) or {}
        inner = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(opts.items()))
        out.append(f"{name}[{inner}]" if inner else name)
    return "+".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(map(str, value))
    return str(value)


def parse_seeds(text: str) -> list[int]:
    """``0,1,2``, ``0-2`` (inclusive) or a mix (``0-2,7``) -> distinct seeds in the order given."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            first, dash, last = part.partition("-")
            if dash and first.strip():
                lo, hi = int(first), int(last)
                if hi < lo:
                    raise ValueError(part)
                seeds += range(lo, hi + 1)
            else:
                seeds.append(int(part))
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected integers and ranges, e.g. --seeds 0,1,2 or --seeds 0-2") \
            from None
    if not seeds or any(s < 0 for s in seeds):
        raise SweepError(f"--seeds {text!r}: expected non-negative integers, e.g. --seeds 0,1,2 or --seeds 0-2")
    return list(dict.fromkeys(seeds))


def split_list(text: str) -> list[str]:
    return list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
