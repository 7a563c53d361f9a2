"""The one registry of the report's figures, and the helpers every plot module shares (report, curves, learned
activations): one colour per label across panels, and saving a figure headless. Kept apart from ``report`` so
plot modules do not import the report that calls them.

Adding a figure is one decorated function; ``benchmarks.report`` draws every registered one::

    @register_plot("accuracy_vs_params")
    def accuracy_vs_params(inputs: PlotInputs) -> list[Path]: ...   # the files written; [] when its data is absent
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from petl.errors import DuplicateRegistrationError, PetlConfigError


@dataclass(frozen=True)
class PlotInputs:
    """What a report figure may draw from: the finished runs (``df``, one row per run as ``report.runs_frame``
    builds it, labelled like the tables), every record, the per-image predictions (``uncertainty.RunPredictions``)
    and where the records' files are; ``folder`` is where figures go."""

    df: Any
    records: list[dict[str, Any]]
    folder: Path
    preds: Any = None
    reference: str = "full_ft"
    runs_dirs: list[Path] = field(default_factory=list)


PlotFn = Callable[[PlotInputs], list[Path]]
_PLOTS: dict[str, PlotFn] = {}


def register_plot(name: str) -> Callable[[PlotFn], PlotFn]:
    """Decorator: register ``fn(inputs) -> list[Path]`` as the report figure ``name``; a name registered twice
    raises ``DuplicateRegistrationError`` (the second would replace the first silently)."""
    def decorate(fn: PlotFn) -> PlotFn:
        if name in _PLOTS:
            raise DuplicateRegistrationError(f"plot {name!r} is already registered; choose another name")
        _PLOTS[name] = fn
        return fn
    return decorate


def get_plot(name: str) -> PlotFn:
    try:
        return _PLOTS[name]
    except KeyError:
        raise PetlConfigError(f"unknown plot {name!r}; registered: {', '.join(_PLOTS)}") from None


def plot_names() -> tuple[str, ...]:
    return tuple(_PLOTS)


def draw_all(inputs: PlotInputs) -> list[Path]:
    """Every registered figure, in registration order, headless; each skips itself when its data is absent."""
    import matplotlib
    matplotlib.use("Agg")  # headless: sweeps run on servers
    written: list[Path] = []
    for fn in _PLOTS.values():
        written += fn(inputs)
    return written


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 110 dpi, tight) and close it; returns ``path``."""
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def palette(labels: list[str]) -> dict[str, Any]:
    """One colour per label, the same in every panel (tab10 up to 10 labels, then husl so none repeat)."""
    import seaborn as sns
    labels = sorted(labels)
    colors = sns.color_palette("tab10" if len(labels) <= 10 else "husl", len(labels))
    return dict(zip(labels, colors))
