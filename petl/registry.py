"""Name -> method registry.

A method is an options dataclass plus an ``apply(model, options)`` function that inserts its modules into a
model whose parameters have already been frozen and marks its own parameters trainable. Registering one is a
single decorator; the rest of petl and the benchmark runner never branch on a method's name (reports and
the performance table only name reference baselines such as ``full_ft`` to compute ratios against).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import PetlConfigError

if TYPE_CHECKING:   # torch is imported by the methods, not here: --help and the catalogue stay fast
    from torch import Tensor, nn

    from .trainer import TrainerFactory

ApplyFn = Callable[["nn.Module", Any], None]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    ``bn_policy`` is the BatchNorm running-statistics policy the method wants on the (formerly) frozen backbone:
    ``"frozen"`` keeps running statistics fixed (the default for parameter-efficient methods),
    ``"train"`` updates them as ordinary fine-tuning does.
    The three optional hooks below are how a method reaches past ``apply`` into training; whoever trains (the
    benchmark engine) reads these fields generically, so it has no branch per method. Each is None for a method
    that does not need it.
    """

    name: str
    options: type
    apply: ApplyFn
    description: str
    bn_policy: str = "frozen"
    trainer_factory: TrainerFactory | None = None
    """Builds the method's own :class:`~petl.trainer.Trainer` (MetaLR: meta-learned rates) in place of the
    caller's plain optimiser step; at most one method of a composition may have one, and it is applied last."""
    recipe: Callable[[Any], dict[str, Any]] | None = None
    """``recipe(options) -> overrides`` of the training configuration the method's paper prescribes (two_stage:
    head warm-up epochs and lrs), folded in before the run is keyed, so the key covers the recipe used."""
    regularizer: Callable[[nn.Module], Tensor] | None = None
    """``regularizer(model) -> scalar`` added to the training loss of every step (GPAF: its spline penalty)."""


#: the old free-form ``hooks={...}`` keys and the typed field each one now fills
LEGACY_HOOK_FIELDS = {"trainer": "trainer_factory", "recipe": "recipe", "regularizer": "regularizer"}


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, options: type, *, bn_policy: str = "frozen",
                    trainer_factory: TrainerFactory | None = None,
                    recipe: Callable[[Any], dict[str, Any]] | None = None,
                    regularizer: Callable[[nn.Module], Tensor] | None = None,
                    hooks: dict[str, Any] | None = None) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: ``@register_method("lora_c", LoraCOptions)`` on the method's apply function.

    ``trainer_factory``, ``recipe`` and ``regularizer`` are the optional hooks documented on :class:`MethodSpec`.
    ``hooks`` is the older spelling of the same (``{"trainer": ..., "recipe": ..., "regularizer": ...}``), kept
    so plugins written against it still register; an unknown key is refused rather than silently ignored.
    """
    if not dataclasses.is_dataclass(options):
        raise PetlConfigError(f"options for method {name!r} must be a dataclass, got {options!r}; decorate the "
                              f"options class with @dataclass")
    if bn_policy not in ("frozen", "train"):
        raise PetlConfigError(f"bn_policy must be 'frozen' or 'train', got {bn_policy!r}")
    fields = _hook_fields(name, {"trainer_factory": trainer_factory, "recipe": recipe, "regularizer": regularizer},
                          hooks or {})

    def decorator(fn: ApplyFn) -> ApplyFn:
        if name in _METHODS:
            from .errors import DuplicateRegistrationError
            raise DuplicateRegistrationError(f"method {name!r} is already registered; choose another name")
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = MethodSpec(name=name, options=options, apply=fn,
                                    description=doc[0] if doc else "", bn_policy=bn_policy, **fields)
        return fn

    return decorator


def _hook_fields(name: str, typed: dict[str, Any], hooks: dict[str, Any]) -> dict[str, Any]:
    """The typed hook fields of a registration, with the legacy ``hooks`` dict mapped onto them."""
    fields = dict(typed)
    for key, value in hooks.items():
        field = LEGACY_HOOK_FIELDS.get(key)
        if field is None:
            known = ", ".join(f"{k!r} (now {f}=)" for k, f in LEGACY_HOOK_FIELDS.items())
            raise PetlConfigError(f"method {name!r}: unknown hook {key!r}; known hooks: {known}; use one of "
                                  f"those (preferably as its register_method keyword) or drop it")
        if fields[field] is not None:
            raise PetlConfigError(f"method {name!r}: hook {key!r} given twice (hooks={{{key!r}: ...}} and "
                                  f"{field}=); pass it once, as {field}=")
        if field == "trainer_factory" and value is not None:
            from .trainer import legacy_trainer_factory
            value = legacy_trainer_factory(value)
        fields[field] = value
    for field, value in fields.items():
        if value is not None and not callable(value):
            raise PetlConfigError(f"method {name!r}: {field} must be callable, got {type(value).__name__}; pass "
                                  f"the function or class itself")
    return fields


def option(default: Any, help: str) -> Any:
    """An options-dataclass field with its help text: ``rank: int = option(4, "rank r of each update")``.

    The text is the field's ``metadata["help"]``; ``python -m benchmarks.run --help-method NAME`` and the method
    catalogue read it generically, so a method documents its options where it declares them.
    """
    return dataclasses.field(default=default, metadata={"help": help})


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _ensure_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of a registered method; an unknown name raises an error listing the valid ones."""
    _ensure_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise PetlConfigError(
            f"unknown method {name!r}; available methods: {', '.join(sorted(_METHODS))}") from None


def option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_method(name).options)]


def describe(name: str) -> str:
    """What a method is and what each option takes: ``print(petl.describe("lora_c"))``.

    One line per option: its name, type, default and help (the field's ``metadata["help"]``), read from the
    options dataclass itself, so the description cannot drift from what ``make_options`` accepts.
    """
    spec = get_method(name)
    hints = typing.get_type_hints(spec.options)
    lines = [f"{name}: {spec.description}" if spec.description else name]
    fields = dataclasses.fields(spec.options)
    if not fields:
        lines.append("  (no options)")
    for f in fields:
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        kind = _type_name(hints.get(f.name, f.type))
        help_text = f.metadata.get("help", "")
        lines.append(f"  {f.name}: {kind} = {default}" + (f"  -- {help_text}" if help_text else ""))
    return "\n".join(lines)


def _type_name(hint: Any) -> str:
    """``int``, ``tuple[str, ...] | None``: the annotation as it is written, without module prefixes."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def make_options(name: str, values: dict[str, Any]) -> Any:
    """Build a method's options dataclass from keyword values (strings are coerced to the field type).

    Unknown keys and values the options reject raise ``PetlConfigError`` naming the valid choices.
    """
    spec = get_method(name)
    fields = {f.name: f for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "(this method takes no options)"
        raise PetlConfigError(f"unknown option(s) {', '.join(unknown)} for method {name!r}; valid options: {valid}")
    hints = typing.get_type_hints(spec.options)
    coerced = {k: coerce_value(v, hints.get(k), f"{name}.{k}") for k, v in values.items()}
    try:
        return spec.options(**coerced)
    except PetlConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise PetlConfigError(f"invalid options for method {name!r}: {exc}") from None


def options_to_dict(options: Any) -> dict[str, Any]:
    """JSON-friendly dict of an options dataclass (tuples become lists)."""
    return json_ready(dataclasses.asdict(options))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def coerce_value(value: Any, hint: Any, label: str) -> Any:
    """Turn command-line strings ("8", "true", "conv1,conv2") into the field's declared type."""
    if not isinstance(value, str) or hint is None:
        if isinstance(value, list) and hint is not None and _origin(_non_optional(hint)) is tuple:
            return tuple(value)
        return value
    target = _non_optional(hint)
    if value.lower() in ("none", "null") and target is not hint:
        return None
    try:
        if target is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if target is int:
            return int(value)
        if target is float:
            return float(value)
        if _origin(target) is tuple:
            return tuple(p.strip() for p in value.split(",") if p.strip())
    except ValueError:
        raise PetlConfigError(f"option {label}: cannot read {value!r} as {getattr(target, '__name__', target)}") from None
    return value


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint) or hint


def _non_optional(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


_BUILTINS_LOADED = False


def _ensure_builtin_methods() -> None:
    """Import petl.methods and the plugins once so their modules register themselves."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from . import methods  # noqa: F401  (registers built-in methods)
        from .plugins import load_plugins
        load_plugins()           # entry points "petl.methods" and $PETL_PLUGINS (see petl/plugins.py)
