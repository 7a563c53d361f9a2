"""benchmarks.metrics must reproduce medmnist's own getAUC / getACC on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import balanced_accuracy_score

from benchmarks.metrics import compute_metrics, scores_from_logits


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
