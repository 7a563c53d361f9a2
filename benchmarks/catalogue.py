"""What ``--help`` lists: every method with its options (type, default, help text), the datasets and presets.

The names come from the registries themselves (``petl.available_methods``, ``benchmarks.data``), but building
them imports every method and dataset module, i.e. torch, timm, peft and medmnist: seconds, several times what a
help screen may cost. So the catalogue is cached as JSON under ``$PETL_CACHE_DIR`` (else ``~/.cache/petl``)
in ``help/``, keyed by the size and mtime of every source file that registers something, by the installed
plugin entry points and by ``$PETL_PLUGINS``: a code change or a new plugin rebuilds it on the next call, and
only that call pays the imports. An option's help text is its dataclass field's ``metadata["help"]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import petl
from petl import plugins

_SOURCES = (Path(petl.__file__).resolve().parent, Path(__file__).resolve().parent / "data")


def _cache_root() -> Path:
    env = os.environ.get("PETL_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "petl") / "help"


def fingerprint() -> str:
    """Hash of what the catalogue is built from: source files, plugin entry points, ``$PETL_PLUGINS``."""
    parts = [sys.version, str(Path(__file__).resolve())]
    for folder in _SOURCES:
        for path in sorted(folder.rglob("*.py")):
            st = path.stat()
            parts.append(f"{path}|{st.st_size}|{st.st_mtime_ns}")
    modules = [ep.value.split(":")[0] for ep in plugins.entry_points()] + plugins.env_modules()
    parts += [f"{name}|{_module_stamp(name)}" for name in modules]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _module_stamp(name: str) -> str:
    """Size and mtime of a plugin module's file (without importing it when it is a top-level module)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return "missing"   # reported when the registry imports it
    origin = getattr(spec, "origin", None)
    if not origin or not os.path.isfile(origin):
        return str(origin)
    st = os.stat(origin)
    return f"{origin}|{st.st_size}|{st.st_mtime_ns}"


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return petl.registry.json_ready(value)


def method_options(name: str) -> list[dict[str, Any]]:
    """One dict per option of method ``name``: name, type, default, help (``""`` where the field has none)."""
    options = petl.get_method(name).options
    hints = typing.get_type_hints(options)
    return [{"name": f.name, "type": _type_name(hints.get(f.name, f.type)), "default": _default(f),
             "help": str(f.metadata.get("help", ""))} for f in dataclasses.fields(options)]


def build() -> dict[str, Any]:
    """The catalogue from the live registries (imports every method and dataset module)."""
    from benchmarks.data import available_datasets
    methods = {name: {"description": petl.get_method(name).description, "options": method_options(name)}
               for name in petl.available_methods()}
    return {"methods": methods, "datasets": available_datasets()}


def load() -> dict[str, Any]:
    """The cached catalogue when it is current, else a freshly built one (then cached)."""
    path = _cache_root() / f"catalogue-{fingerprint()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass   # not cached yet (or a torn file from a killed writer): build it below
    data = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:   # a read-only cache only costs speed: say so once, keep the help
        print(f"note: cannot cache the --help catalogue in {path.parent} ({exc.strerror}); set PETL_CACHE_DIR "
              f"to a writable folder for a fast --help", file=sys.stderr)
    return data


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "()"
    return str(value)


def methods_text(catalogue: dict[str, Any]) -> list[str]:
    """The --help lines for methods: name, description, then its options with defaults."""
    lines = []
    for name, info in catalogue["methods"].items():
        lines.append(f"  {name:<14} {info['description']}")
        if info["options"]:
            opts = " ".join(f"{o['name']}={_fmt(o['default'])}" for o in info["options"])
            lines.append(f"  {'':<14}   options: {opts}")
    lines.append("  (python -m benchmarks.run --help-method NAME: each option's type, default and meaning)")
    return lines


def method_help(catalogue: dict[str, Any], name: str) -> str:
    """The --help-method NAME text; ``KeyError`` for an unknown name."""
    info = catalogue["methods"][name]
    lines = [f"{name}: {info['description']}", ""]
    if not info["options"]:
        lines.append("no options")
    else:
        lines.append(f"options (set with --set {name}.OPTION=VALUE; a comma list sweeps):")
        for o in info["options"]:
            lines.append(f"  {o['name']:<18} {o['type']}, default {_fmt(o['default'])}")
            if o["help"]:
                lines.append(f"  {'':<18} {o['help']}")
    return "\n".join(lines)
