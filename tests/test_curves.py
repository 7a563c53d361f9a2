"""Curves from predictions (benchmarks.curves) and GPAF's learned-activation plot (benchmarks.learned): the numbers
behind each figure checked against their definitions, and every figure rendered, also through build_reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import petl
from benchmarks import curves, learned
from benchmarks.clinical import _ece_top_label
from benchmarks.predictions import from_arrays
from benchmarks.uncertainty import RunPredictions


def _scores(rng: np.random.Generator, labels: np.ndarray, k: int, signal: float) -> np.ndarray:
    logits = rng.normal(size=(len(labels), k))
    logits[np.arange(len(labels)), labels] += signal
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _fixture(k: int = 2, with_missing: bool = True) -> tuple[pd.DataFrame, RunPredictions]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, 120)
    rows, preds = [], RunPredictions()
    for label, signal in (("full_ft", 2.0), ("lora_c", 1.0)):
        for seed in (0, 1):
            name = f"d__{label}__s{seed}"
            rows.append({"run_name": name, "dataset": "d", "label": label, "seed": seed})
            logits = np.log(_scores(rng, labels, k, signal))
            preds.by_run[name] = {"test": from_arrays(logits, labels)}
            preds.task[name] = "multiclass"
    if with_missing:
        rows.append({"run_name": "d__old__s0", "dataset": "d", "label": "old", "seed": 0})
        preds.missing.append("d__old__s0")
    return pd.DataFrame(rows), preds


def test_reliability_bins_and_ece_match_the_clinical_table():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 500)
    scores = _scores(rng, labels, 3, 1.5)
    conf, acc, n, ece = curves.reliability(scores, labels, bins=10)
    assert n.sum() == 500 and np.all(np.diff(conf) > 0)
    assert ece == pytest.approx(_ece_top_label(scores.max(1), scores.argmax(1) == labels, 10), abs=1e-12)
    top, right = scores.max(1), scores.argmax(1) == labels
    which = (np.ceil(top * 10) - 1).clip(0, 9)
    occupied = sorted(set(which.tolist()))
    assert len(conf) == len(occupied)
    for i, b in enumerate(occupied):                       # each point: mean confidence and accuracy of its bin
        assert conf[i] == pytest.approx(top[which == b].mean()) and acc[i] == pytest.approx(right[which == b].mean())


def test_binary_view_positive_class_and_micro_average():
    scores = np.array([[0.8, 0.2], [0.3, 0.7]])
    y, s = curves._binary_view(scores, np.array([0, 1]))
    assert y.tolist() == [0, 1] and s.tolist() == [0.2, 0.7]
    scores3 = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    y, s = curves._binary_view(scores3, np.array([0, 2]))
    assert y.tolist() == [1, 0, 0, 0, 0, 1] and s.tolist() == scores3.reshape(-1).tolist()


@pytest.mark.parametrize("k", [2, 4])
def test_figures_render_and_name_skipped_runs(tmp_path, k):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    df, preds = _fixture(k)
    records = [{"status": "ok", "config": {"dataset": "d"},
                "metrics": {"test": {"class_names": [f"class {i}" for i in range(k)]}}}]
    written = curves.make_curve_plots(df, preds, records, tmp_path, "full_ft")
    assert [p.name for p in written] == ["roc_pr__d.png", "reliability__d.png", "confusion__d.png"]
    for p in written:
        img = mpimg.imread(p)
        assert img.shape[0] > 300 and img.shape[1] > 400
    runs, skipped = curves._runs_by_label(df, preds, "d")
    assert sorted(runs) == ["full_ft", "lora_c"] and [len(v) for v in runs.values()] == [2, 2] and skipped == 1
    assert "1 run(s) without predictions" in curves._note(skipped)


def test_no_predictions_no_curve_figures(tmp_path):
    df, _ = _fixture()
    assert curves.make_curve_plots(df, RunPredictions(), [], tmp_path, "full_ft") == []


def test_learned_activation_sites_and_curves(tmp_path):
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("resnet18", weights=None, num_classes=2), "gpaf", kind="prelu",
                       where=("act1", "act2"), sharing="channel")
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "weight") and type(m).__name__ == "PReLUUnit":
                m.weight.fill_(0.25)
    sites = learned.activation_sites(model)
    assert len(sites) == 16                                  # 8 BasicBlocks x (act1, act2)
    assert [learned._stage(n) for n, *_ in sites[:2]] == ["layer1", "layer1"]
    name, fn, is6, bn = sites[0]
    assert name == "layer1.0.act1" and not is6 and bn is model.layer1[0].bn1
    x, y = learned._curves(fn, bn, -2.0, 2.0)
    assert y.shape == (learned.POINTS, 64)
    np.testing.assert_allclose(y[:, 0], np.where(x > 0, x, 0.25 * x), rtol=1e-6, atol=1e-7)
    lo, hi = learned._input_range([bn])
    w, b = bn.weight.detach(), bn.bias.detach()
    assert lo == pytest.approx(min(float((b - 3 * w.abs()).min()), -0.5))
    assert hi == pytest.approx(max(float((b + 3 * w.abs()).max()), 0.5))
    path = learned.plot_learned_activations(model, "test", tmp_path / "act.png")
    assert path is not None and path.stat().st_size > 20_000
    assert learned.plot_learned_activations(petl.build_backbone("resnet18", weights=None, num_classes=2), "x",
                                            tmp_path / "none.png") is None


def test_lite0_relu6_sites_are_clamped(tmp_path):
    model = petl.apply(petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2), "gpaf",
                       where=("all",))
    sites = learned.activation_sites(model)
    assert sites and all(is6 for _, _, is6, _ in sites)
    assert {learned._stage(n) for n, *_ in sites} >= {"bn1.act", "blocks.0", "blocks.6", "bn2.act"}
    _, fn, _, bn = sites[0]
    x, y = learned._curves(fn, bn, -8.0, 8.0)
    np.testing.assert_allclose(y[:, 0], np.clip(x, 0, 6), atol=1e-6)   # at init: exactly ReLU6
