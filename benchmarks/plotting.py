"""Figure helpers every plot module shares (report, curves, learned activations): one colour per label across
panels, and saving a figure headless. Kept apart from ``report`` so plot modules do not import the report that
calls them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
