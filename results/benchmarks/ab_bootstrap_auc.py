"""Bootstrap AUC: the mid-rank form (a sort of every resample's drawn scores) against the count form
(``benchmarks.stats.auc_from_counts``: scores sorted once, each resample as image multiplicities), on this
project's test-set shapes, interleaved in one process; both must give the same AUCs bit for bit.

Run (alone on the cores): python results/benchmarks/ab_bootstrap_auc.py > results/benchmarks/ab_bootstrap_auc.txt
"""
import statistics
import time

import numpy as np

from benchmarks import stats as S

SHAPES = {"breastmnist": (156, 2), "pneumoniamnist": (624, 2), "isic2018": (1512, 7)}
ROUNDS = 5


def old(scores: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The form the count form replaced (``stats.auc_by_midranks``, a sort of every resample's drawn scores)."""
    if scores.shape[1] == 2:
        return S.auc_by_midranks((y[idx] == 1).astype(np.float64), scores[:, 1][idx])
    return np.mean([S.auc_by_midranks((y[idx] == c).astype(np.float64), scores[:, c][idx])
                    for c in range(scores.shape[1])], axis=0)


def new(scores: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return S.resampled_metric(scores, y, idx, "multiclass", "auc")


rng = np.random.default_rng(0)
print(f"{S.N_RESAMPLES} resamples per call, {ROUNDS} rounds, interleaved; seconds per call (median)")
for name, (n, k) in SHAPES.items():
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    scores = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 4)   # float32-like ties
    idx = S.stratified_indices(y, S.N_RESAMPLES, np.random.default_rng(S.SEED))
    same = np.array_equal(old(scores, y, idx), new(scores, y, idx), equal_nan=True)
    times: dict[str, list[float]] = {"mid-rank": [], "count": []}
    for _ in range(ROUNDS):
        for label, fn in (("mid-rank", old), ("count", new)):
            t0 = time.perf_counter()
            fn(scores, y, idx)
            times[label].append(time.perf_counter() - t0)
    a, b = statistics.median(times["mid-rank"]), statistics.median(times["count"])
    print(f"{name} (N={n}, {k} classes): mid-rank {a:.3f} s, count {b:.3f} s, {a / b:.1f}x; bit-identical: {same}")
