"""benchmarks.metrics must reproduce medmnist's own getAUC / getACC and sklearn's balanced accuracy / macro-F1 on
the same predictions, and say up front when AUC is undefined."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from benchmarks.metrics import auc_undefined, compute_metrics, scores_from_logits


@pytest.mark.parametrize("num_classes,task_name", [(2, "binary-class"), (5, "multi-class")])
def test_matches_medmnist_single_label(num_classes: int, task_name: str) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, num_classes, 300)
    logits = torch.from_numpy(rng.normal(size=(300, num_classes)) + np.eye(num_classes)[y])
    m = compute_metrics(y, logits, "multiclass")
    scores = scores_from_logits(logits, "multiclass")
    assert m["auc"] == pytest.approx(getAUC(y[:, None], scores, task_name), abs=1e-12)
    assert m["acc"] == pytest.approx(getACC(y[:, None], scores, task_name), abs=1e-12)
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, scores.argmax(1)), abs=1e-12)
    assert np.asarray(m["confusion_matrix"]).sum() == 300 and len(m["per_class_recall"]) == num_classes


def test_matches_medmnist_multilabel() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (200, 4)).astype(np.float32)
    logits = torch.from_numpy(rng.normal(size=(200, 4)) + 1.5 * (y - 0.5))
    m = compute_metrics(y, logits, "multilabel")
    scores = scores_from_logits(logits, "multilabel")
    assert m["auc"] == pytest.approx(getAUC(y, scores, "multi-label, binary-class"), abs=1e-12)
    assert m["acc"] == pytest.approx(getACC(y, scores, "multi-label, binary-class"), abs=1e-12)
    assert len(m["per_label_auc"]) == 4


def test_single_class_subset_gives_nan_auc_not_error() -> None:
    m = compute_metrics(np.zeros(8, dtype=int), torch.randn(8, 2), "multiclass")
    assert np.isnan(m["auc"]) and m["acc"] >= 0


@pytest.mark.parametrize("absent", [None, 3])
def test_balanced_acc_and_macro_f1_match_sklearn(absent: int | None) -> None:
    """5 classes, weak logits (so some classes are rarely predicted); optionally one class absent from y_true."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 400)
    if absent is not None:
        y[y == absent] = 0
    logits = torch.from_numpy(rng.normal(size=(400, 5)) + 0.8 * np.eye(5)[y])
    pred = logits.numpy().argmax(1)
    m = compute_metrics(y, logits, "multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # sklearn: "y_pred contains classes not in y_true"
        expected_bal = balanced_accuracy_score(y, pred)
    assert m["balanced_acc"] == pytest.approx(expected_bal, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["per_class_recall"] == pytest.approx(recall_score(y, pred, labels=range(5), average=None,
                                                               zero_division=0).tolist(), abs=1e-12)


def test_multilabel_macro_f1_and_balanced_acc_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (300, 4))
    logits = torch.from_numpy(rng.normal(size=(300, 4)) + (y - 0.5))
    pred = (torch.sigmoid(logits).numpy() > 0.5).astype(int)
    m = compute_metrics(y, logits, "multilabel")
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["balanced_acc"] == pytest.approx(np.mean([balanced_accuracy_score(y[:, i], pred[:, i])
                                                       for i in range(4)]), abs=1e-12)


def test_auc_undefined_names_what_makes_auc_nan() -> None:
    names = ["a", "b", "c"]
    y = np.array([0, 0, 2, 2, 0])
    assert auc_undefined(y, "multiclass", 3, names) == ["'b' (1)"]
    assert np.isnan(compute_metrics(y, torch.randn(5, 3), "multiclass")["auc"])
    assert auc_undefined(np.array([0, 1, 2]), "multiclass", 3, names) == []
    assert auc_undefined(np.zeros(4, dtype=int), "multiclass", 2) == ["'1' (1)"]
    yl = np.array([[0, 1], [0, 0], [0, 1]])
    assert auc_undefined(yl, "multilabel", 2, ["x", "y"]) == ["'x' (0) all 0"]
    assert np.isnan(compute_metrics(yl, torch.randn(3, 2), "multilabel")["auc"])

