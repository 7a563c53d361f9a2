"""What GPAF learned: each replaced activation's function against the ReLU / ReLU6 it replaced, read from the
run's adapter file (:mod:`benchmarks.artifacts`). Called by ``benchmarks.report``; MetaLR's learned rates are
drawn by the report itself (``trainer__*.png``).

One panel per stage (ResNet ``layer1`` .. ``layer4``, the stem; timm's ``blocks.3`` ...). Per site (replaced
activation) the median over channels of f(x) is one line, and the band is the 10-90 % range over the channels of
all of the stage's sites. The input range is what the frozen backbone feeds the activation: the BatchNorm before
each site outputs, per channel, mean beta and standard deviation |gamma| on the data its statistics came from, so
x runs over beta +- 3 |gamma| (the union over the stage's channels); without a BatchNorm, [-6, 6].
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.plotting import PlotInputs, register_plot

POINTS = 241
SPREAD = 3.0          # input range: beta +- SPREAD |gamma| of the preceding BatchNorm


def _stage(name: str) -> str:
    """``layer2.1.act1`` -> ``layer2``; ``blocks.3.1.bn1.act`` -> ``blocks.3``; a name without numbers: itself."""
    parts = name.split(".")
    numeric = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[:numeric[0] + (0 if parts[0].startswith("layer") else 1)]) if numeric else name


def activation_sites(model: nn.Module) -> list[tuple[str, nn.Module, bool, nn.Module | None]]:
    """(name, function, replaces ReLU6, preceding BatchNorm) per learnable activation site, in module order.

    Shared units appear at every position they stand in for (``named_modules(remove_duplicate=False)``).
    """
    from petl.activations import ClampedAt6, is_activation_unit
    modules = dict(model.named_modules(remove_duplicate=False))
    sites = []
    last_bn: nn.Module | None = None
    skip: set[str] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            last_bn = module
        if name in skip:
            continue
        if isinstance(module, ClampedAt6):
            sites.append((name, module, True, _feeding_bn(name, modules, last_bn)))
            skip.add(f"{name}.unit")
        elif is_activation_unit(module):
            sites.append((name, module, False, _feeding_bn(name, modules, last_bn)))
    return sites


def _feeding_bn(name: str, modules: dict[str, nn.Module], last_bn: nn.Module | None) -> nn.Module | None:
    """The BatchNorm whose output the activation ``name`` takes: its owner (timm's ``BatchNormAct2d``), the
    sibling of the same number (a ResNet block's ``act2`` <- ``bn2``; the stem's ``relu`` <- ``bn1``), else the
    last BatchNorm before it in module order (a ResNet block registers its split activations after its convs)."""
    parent, _, attr = name.rpartition(".")
    is_bn = lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm)  # noqa: E731
    if parent and is_bn(modules.get(parent)):
        return modules[parent]
    digits = "".join(ch for ch in attr if ch.isdigit()) or "1"
    sibling = modules.get(f"{parent}.bn{digits}" if parent else f"bn{digits}")
    if is_bn(sibling):
        return sibling
    return last_bn


@torch.no_grad()
def _curves(fn: nn.Module, bn: nn.Module | None, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """x (P,) and f(x) (P, C) per channel of ``fn`` (C from the BatchNorm before it, 1 for a scalar unit)."""
    channels = int(getattr(bn, "num_features", 1) or 1)
    x = torch.linspace(lo, hi, POINTS)
    inp = x.view(-1, 1, 1, 1).expand(-1, channels, 1, 1).contiguous()
    try:
        out = fn(inp)
    except RuntimeError:          # a per-channel unit whose channel count the BatchNorm guess missed: scalar input
        out = fn(x.view(-1, 1, 1, 1))
    return x.numpy(), out.reshape(len(x), -1).numpy()


def _input_range(bns: list[nn.Module | None]) -> tuple[float, float]:
    lows, highs = [], []
    for bn in bns:
        w, b = getattr(bn, "weight", None), getattr(bn, "bias", None)
        if w is None or b is None:
            continue
        spread = SPREAD * w.detach().abs()
        lows.append(float((b.detach() - spread).min()))
        highs.append(float((b.detach() + spread).max()))
    if not lows:
        return -6.0, 6.0
    return min(min(lows), -0.5), max(max(highs), 0.5)


def plot_learned_activations(model: nn.Module, title: str, path: Path) -> Path | None:
    """The figure described in the module docstring; None when the model has no learnable activation."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from benchmarks.plotting import save as _save
    sites = activation_sites(model)
    if not sites:
        return None
    stages: dict[str, list[tuple[str, nn.Module, bool, nn.Module | None]]] = {}
    for site in sites:
        stages.setdefault(_stage(site[0]), []).append(site)
    cols = min(3, len(stages))
    rows = -(-len(stages) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows + 0.8), squeeze=False)
    for ax in axes.ravel()[len(stages):]:
        ax.axis("off")
    for ax, (stage, members) in zip(axes.ravel(), stages.items()):
        lo, hi = _input_range([bn for *_, bn in members])
        colors = sns.color_palette("viridis", len(members))
        all_curves = []
        for (name, fn, is6, bn), color in zip(members, colors):
            x, y = _curves(fn, bn, lo, hi)
            all_curves.append(y)
            ax.plot(x, np.median(y, axis=1), color=color, lw=1.3, label=name if len(members) <= 6 else None)
        stacked = np.concatenate(all_curves, axis=1)
        ax.fill_between(x, np.percentile(stacked, 10, axis=1), np.percentile(stacked, 90, axis=1), color="tab:blue",
                        alpha=0.15, label="10-90 % of channels")
        ref6 = all(is6 for _, _, is6, _ in members)
        xt = torch.from_numpy(x)
        ax.plot(x, (xt.clamp(0, 6) if ref6 else xt.clamp(min=0)).numpy(), color="black", ls="--", lw=1,
                label="ReLU6 (replaced)" if ref6 else "ReLU (replaced)")
        ax.set(title=f"{stage}: {len(members)} site(s)", xlabel="input x (frozen backbone's range)",
               ylabel="f(x), median over channels")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


@register_plot("learned_activations")
def learned_activation_plots(inputs: PlotInputs) -> list[Path]:
    """The report's figure: :func:`make_activation_plots` on its records."""
    return make_activation_plots(inputs.records, inputs.runs_dirs, inputs.folder)


def make_activation_plots(records: list[dict[str, Any]], runs_dirs: list[Path], folder: Path) -> list[Path]:
    """``activations__<dataset>__<method>.png`` for the lowest seed of each method whose adapter has learnable
    activations; runs without a kept adapter are skipped (one note on stderr)."""
    import petl
    from benchmarks.artifacts import ArtifactError, adapter_path
    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted((r for r in records if r.get("status") == "ok"), key=lambda r: r["config"]["seed"]):
        if "gpaf" in str(r["config"]["method"]).split("+"):
            firsts.setdefault((r["config"]["dataset"], r.get("label") or r["config"]["method"]), r)
    written, skipped = [], []
    for (dataset, label), record in sorted(firsts.items()):
        folder_with = next((d for d in runs_dirs if isinstance(record.get("adapter"), dict)
                            and (Path(d) / str(record["adapter"].get("file"))).exists()), runs_dirs[0])
        try:
            model = petl.load_adapter(adapter_path(record, folder_with)).eval()
        except (ArtifactError, petl.PetlError) as exc:
            skipped.append(f"{record.get('run_name')}: {exc}")
            continue
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{dataset}__{label}")
        path = plot_learned_activations(model, f"{label} on {dataset} (seed {record['config']['seed']}): learned "
                                               f"activation per stage vs the replaced one",
                                        folder / f"activations__{safe}.png")
        if path is not None:
            written.append(path)
    if skipped:
        print(f"note: learned-activation plots skipped for {len(skipped)} GPAF run(s) without a usable adapter "
              f"(e.g. {skipped[0]})", file=sys.stderr)
    return written
