"""Methods defined outside petl: entry points of the group ``petl.methods`` and modules named in ``PETL_PLUGINS``.

A plugin is an ordinary module that calls ``@register_method`` when imported. Installed packages announce theirs
in ``pyproject.toml``::

    [project.entry-points."petl.methods"]
    my_method = "my_package.my_module"

and a module that is only on ``PYTHONPATH`` is named at run time (``python -m benchmarks.run --import my_module``,
which sets ``PETL_PLUGINS`` so that worker processes and SLURM jobs import it too). The registry loads both the
first time a method is looked up, so every process that resolves a method name sees the same methods.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from .errors import PetlConfigError

ENTRY_POINT_GROUP = "petl.methods"
ENV_VAR = "PETL_PLUGINS"


def entry_points() -> list[metadata.EntryPoint]:
    """Installed plugin entry points, sorted by name (the load order is then the same on every machine)."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def env_modules() -> list[str]:
    """Module names listed (comma-separated) in ``$PETL_PLUGINS``."""
    return [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]


def import_module(name: str) -> None:
    """Import one plugin module; a failure is one ``PetlConfigError`` line naming the module and the fix."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise PetlConfigError(f"plugin module {name!r} cannot be imported ({exc}); check the name and put its "
                              f"folder on PYTHONPATH (or install it)") from None
    except Exception as exc:   # the plugin's own code raised: name it, never hide it
        raise PetlConfigError(f"plugin module {name!r} raised {type(exc).__name__}: {exc}; fix the module") from exc


def add_modules(names: list[str]) -> None:
    """Import ``names`` now and append them to ``$PETL_PLUGINS`` for the processes this one starts."""
    for name in names:
        import_module(name)
    known = env_modules()
    os.environ[ENV_VAR] = ",".join(known + [n for n in names if n not in known])


def load_plugins() -> None:
    """Import every entry-point plugin and every ``$PETL_PLUGINS`` module (each registers its methods)."""
    for ep in entry_points():
        try:
            ep.load()
        except Exception as exc:   # a broken installed plugin must not look like an unknown method
            raise PetlConfigError(f"plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP}) "
                                  f"failed to import: {type(exc).__name__}: {exc}; fix or uninstall it") from exc
    for name in env_modules():
        import_module(name)
