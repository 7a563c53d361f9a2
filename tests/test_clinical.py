"""Clinical metrics (benchmarks.clinical) against hand computations and sklearn; the Youden threshold is chosen
on validation only."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from benchmarks import clinical as C


def _binary(p1: list[float]) -> np.ndarray:
    p = np.asarray(p1, dtype=float)
    return np.stack([1 - p, p], axis=1)


def test_ece_by_hand() -> None:
    # top-label confidences 0.9, 0.9 (one bin, 1 of 2 right) and 0.6 (class 0, right, a bin of its own)
    s = _binary([0.9, 0.9, 0.4])
    y = np.array([1, 0, 0])
    # bin of 0.9: |0.5 - 0.9| * 2/3; bin of 0.6: |1 - 0.6| * 1/3
    assert np.isclose(C.ece(s, y, "multiclass"), 0.4 * 2 / 3 + 0.4 / 3)
    assert C.ece(_binary([1.0, 0.0]), np.array([1, 0]), "multiclass") == 0.0


def test_brier_and_auprc() -> None:
    s, y = _binary([0.8, 0.3, 0.6, 0.1]), np.array([1, 0, 0, 1])
    assert np.isclose(C.brier(s, y, "multiclass"), np.mean([0.04, 0.09, 0.36, 0.81]))
    multi = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    assert np.isclose(C.brier(multi, np.array([0, 1, 0]), "multiclass"),
                      np.mean([0.09 + 0.04 + 0.01, 0.01 + 0.04 + 0.01, 0.49 + 0.09 + 0.16]))
    assert C.auprc(s, y, "multiclass") == average_precision_score(y, s[:, 1])
    # macro over classes one-vs-rest: each class's AP by hand (class 2 has no positive: left out)
    ap0 = average_precision_score([1, 0, 1], multi[:, 0])
    ap1 = average_precision_score([0, 1, 0], multi[:, 1])
    assert np.isclose(C.auprc(multi, np.array([0, 1, 0]), "multiclass"), (ap0 + ap1) / 2)


def test_youden_threshold_from_validation_applied_unchanged_to_test() -> None:
    val_s, val_y = _binary([0.1, 0.2, 0.35, 0.4, 0.7, 0.8]), np.array([0, 0, 0, 1, 1, 1])
    assert C.youden_threshold(val_s, val_y) == 0.4                 # J = 1 at score >= 0.4
    test_s, test_y = _binary([0.3, 0.45, 0.5, 0.39, 0.9]), np.array([0, 0, 1, 1, 1])
    out = C.clinical_metrics(val_s, val_y, test_s, test_y, "multiclass")
    assert out["threshold"] == 0.4
    assert (out["sensitivity"], out["specificity"]) == (2 / 3, 1 / 2)
    # other test scores never move the threshold
    assert C.clinical_metrics(val_s, val_y, _binary([0.99] * 5), test_y, "multiclass")["threshold"] == 0.4
