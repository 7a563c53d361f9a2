"""Test-set uncertainty from per-image predictions: bootstrap intervals, paired comparisons, DeLong, Holm.

Why: with ~150 test images (BreastMNIST) one AUC has a standard error of ~0.03, larger than most gaps between
methods, and the seed spread alone does not show it. Everything here works on stored per-image scores
(:mod:`benchmarks.predictions`), never on the test set's labels alone.

* **Interval of a configuration** (:func:`interval`): a two-level percentile bootstrap. Each of
  ``n_resamples`` (>= 2,000, fixed generator seed) draws the seeds with replacement and, independently, the
  test images stratified by class (each class keeps its count, as in the fixed test split); the statistic is the
  mean over the drawn seeds of the metric on the drawn images. Every seed of a configuration is tested on the
  same images (one split for every seed), so one image draw serves all of them. The interval thus holds both
  the seed-to-seed and the test-sampling variation.
* **Paired difference** (:func:`paired_difference`): the same bootstrap on ``metric(method) - metric(reference)``
  over the seeds both have (matched by seed, drawn together) and the same images for both; the two-sided
  bootstrap p is ``2 * min(P(d <= 0), P(d >= 0))`` with the usual +1 correction.
* **DeLong** (:func:`delong_covariance`, :func:`delong_paired`): the covariance of correlated ROC-AUCs on the same
  cases (DeLong, DeLong & Clarke-Pearson 1988) in Sun & Xu's (2014) mid-rank form; the paired test contrasts
  the mean AUC over the method's seeds with the reference's. It holds the seeds fixed (test-sampling
  variation only), the bootstrap p does not.
* **Holm** (:func:`holm`): step-down family-wise adjustment across one table's p-values.

Every record metric of :mod:`benchmarks.metric_registry` gets an interval (:func:`interval_metrics`). The four
built-ins are resampled in one vectorised pass (Mann-Whitney over tie groups for AUC, counts for accuracy,
balanced accuracy and macro-F1), defined exactly as :mod:`benchmarks.metrics` (MedMNIST's evaluator, sklearn's
macro averages); any other registered metric, and every metric of a multilabel task, is computed with its
registered function resample by resample (slower, the same definition as in the record).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

from benchmarks import metric_registry
from benchmarks import metrics as M

N_RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
VECTORISED = ("auc", "acc", "balanced_acc", "macro_f1")   # resampled in one vectorised pass, in table order
Runs = Sequence[tuple[np.ndarray, np.ndarray]]     # one (scores N x C, labels) per seed, all on the same images
MIN_RESAMPLES = 2000


def method_text(n_resamples: int = N_RESAMPLES) -> str:
    """One line naming the bootstrap, for table titles."""
    return (f"two-level percentile bootstrap, {n_resamples} resamples (seed {SEED}): seeds drawn with "
            f"replacement, test images drawn stratified by class; mean over the drawn seeds")


METHOD_TEXT = method_text()


def smallest_bootstrap_p(n_resamples: int) -> float:
    """The smallest two-sided p :func:`paired_difference` can return: with m comparisons Holm can adjust no p
    below m times this, so a table with many rows needs more resamples for any difference to hold."""
    return 2 / (n_resamples + 1)


def holm_floor(n_resamples: int, n_comparisons: int) -> float:
    """The smallest Holm-adjusted bootstrap p a family of ``n_comparisons`` can reach with ``n_resamples``: below
    it no difference can "hold after Holm" whatever the data, so tables state it beside their Holm column."""
    return min(1.0, n_comparisons * smallest_bootstrap_p(n_resamples))


def interval_metrics() -> tuple[str, ...]:
    """The metrics that get bootstrap intervals: every registered record metric, the vectorised built-ins first
    (their table order), then the others in registration order."""
    return VECTORISED + tuple(n for n in metric_registry.names("record") if n not in VECTORISED)


# ----------------------------------------------------------------------------------------------- resampling
def stratified_indices(labels: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, N) image indices, each class drawn with replacement to its own count (single-label), or
    all images drawn together (multilabel: no single class to stratify on)."""
    labels = np.asarray(labels)
    n = len(labels)
    if labels.ndim == 2:
        return rng.integers(0, n, size=(n_resamples, n))
    out = np.empty((n_resamples, n), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        out[:, start:start + len(members)] = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
        start += len(members)
    return out


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, N) float multiplicity of each of the N images in each of the B resamples ``idx`` (B x N indices)."""
    b = idx.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def auc_from_counts(counts: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of each resample given as image multiplicities ``counts`` (B x N); NaN where a class is absent.

    Mann-Whitney's U: every (positive, negative) pair of drawn images counts 1 when the positive scores higher and
    1/2 on a tie. The scores are sorted once and grouped into ties, so a resample costs a few passes over its
    counts instead of a sort of its drawn scores. U is a sum of integers and halves, exact in float64, so this
    equals the mid-rank form bit for bit (tests/test_stats.py)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ties = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])     # first image of each tie group
    w = counts[:, order]
    pos = np.add.reduceat(w * positive[order], ties, axis=1)                       # (B, groups) drawn positives
    neg = np.add.reduceat(w, ties, axis=1) - pos
    below = np.cumsum(neg, axis=1) - neg                                           # negatives scored strictly lower
    u = (pos * (below + 0.5 * neg)).sum(axis=1)
    n1, n0 = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def auc_by_midranks(y01: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row by the textbook form, (sum of the positives' mid-ranks - n1 (n1 + 1) / 2) / (n1 n0);
    NaN in a row with one class only. A sort per row: kept as the reference :func:`auc_from_counts` is checked
    and timed against (tests/test_stats.py, results/benchmarks/ab_bootstrap_auc.py)."""
    ranks = sps.rankdata(s, axis=1)
    n1 = y01.sum(axis=1)
    n0 = y01.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        a = ((ranks * y01).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), a, np.nan)


def resampled_metric(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray, task: str,
                     metric: str, counts: np.ndarray | None = None) -> np.ndarray:
    """``metric`` on every resample ``idx`` (B x N image indices): shape (B,), as :mod:`benchmarks.metrics`.

    ``counts``: ``resample_counts(idx, N)`` where the caller already has it (the seeds of one interval share their
    resamples), so it is built once. The single-label metrics are computed from these multiplicities: accuracy
    and the per-class true / predicted / true-positive counts are one matrix product of the counts with the images'
    0/1 indicators, sums of integers and so exact, equal bit for bit to counting the drawn images one by one."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if not _uses_counts(task, metric):
        return _resampled_one_by_one(scores, labels, idx, task, metric)
    y = labels.reshape(-1).astype(np.int64)
    n, k = len(y), scores.shape[1]
    if counts is None:
        counts = resample_counts(idx, n)
    if metric == "auc":
        if k == 2:
            return auc_from_counts(counts, (y == 1).astype(np.float64), scores[:, 1])
        return np.mean([auc_from_counts(counts, (y == c).astype(np.float64), scores[:, c]) for c in range(k)], axis=0)
    pred = (scores[:, 1] > 0.5).astype(np.int64) if k == 2 else scores.argmax(axis=1)
    if metric == "acc":
        return counts @ (y == pred).astype(np.float64) / n
    is_true, is_pred = y[:, None] == np.arange(k), pred[:, None] == np.arange(k)       # (N, k) indicators
    true_n, pred_n, tp = np.split(counts @ np.concatenate([is_true, is_pred, is_true & is_pred], axis=1)
                                  .astype(np.float64), 3, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "balanced_acc":     # recall averaged over the classes present in the drawn labels
            present = true_n > 0
            return np.where(present, tp / true_n, 0).sum(axis=1) / present.sum(axis=1)
        if metric == "macro_f1":         # F1 averaged over the classes in the drawn labels or predictions
            used = (true_n + pred_n) > 0
            f1 = np.where(used, 2 * tp / (true_n + pred_n), 0)
            return f1.sum(axis=1) / used.sum(axis=1)
    raise AssertionError(f"no vectorised form of {metric!r}")       # unreachable: VECTORISED lists the forms above


def _uses_counts(task: str, metric: str) -> bool:
    """Whether :func:`resampled_metric` computes ``metric`` from resample multiplicities (the vectorised
    single-label built-ins) rather than image by image; the one place that decides it."""
    return metric in VECTORISED and task != M.MULTILABEL


def _resampled_one_by_one(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray, task: str,
                          metric: str) -> np.ndarray:
    """``metric`` on each resample through its own function: registered metrics without a vectorised form, and
    every metric of a multilabel task (rare and small, so the reference functions are fast enough)."""
    if metric not in VECTORISED:
        spec = metric_registry.get_metric(metric)
        return np.array([metric_registry.evaluate(spec, scores[i], labels[i], task) for i in idx])

    def one(i: np.ndarray) -> float:
        if metric in ("auc", "acc"):
            return (M.auc if metric == "auc" else M.accuracy)(labels[i], scores[i], task)
        return float(M.compute_metrics(labels[i], _logit(scores[i]), task)[metric])
    return np.array([one(i) for i in idx])


def _logit(p: np.ndarray) -> np.ndarray:
    """Inverse sigmoid, so multilabel scores go back through ``compute_metrics`` unchanged."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _shared_counts(idx: np.ndarray, labels: np.ndarray, task: str, metric: str) -> np.ndarray | None:
    """The multiplicities every run of one bootstrap shares, where :func:`resampled_metric` uses them."""
    if _uses_counts(task, metric):
        return resample_counts(idx, len(np.asarray(labels)))
    return None


def full_metric(scores: np.ndarray, labels: np.ndarray, task: str, metric: str) -> float:
    """``metric`` on all images (the point estimate)."""
    return float(resampled_metric(scores, labels, np.arange(len(labels))[None, :], task, metric)[0])


def _percentile(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not len(v):
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))


def _check_same_images(runs: Runs) -> None:
    first = np.asarray(runs[0][1])
    for _, labels in runs[1:]:
        if np.asarray(labels).shape != first.shape or not np.array_equal(labels, first):
            raise ValueError("the runs were not tested on the same images (their test labels differ); "
                             "rerun them on one split (split_seed)")


# ------------------------------------------------------------------------------------------------ intervals
def interval(runs: Runs, task: str, metric: str,
             n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """(mean over seeds, low, high) of ``metric``: the two-level bootstrap of the module docstring.

    ``runs``: one (scores, labels) per seed, all on the same test images in the same order.
    """
    _check_same_images(runs)
    rng = np.random.default_rng(seed)
    idx = stratified_indices(runs[0][1], n_resamples, rng)
    counts = _shared_counts(idx, runs[0][1], task, metric)
    per_seed = np.stack([resampled_metric(s, y, idx, task, metric, counts) for s, y in runs])   # (k, B)
    pick = rng.integers(0, len(runs), size=(n_resamples, len(runs)))
    boot = np.nanmean(per_seed[pick, np.arange(n_resamples)[:, None]], axis=1)
    point = float(np.mean([full_metric(s, y, task, metric) for s, y in runs]))
    return (point, *_percentile(boot))


_REFERENCE_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_REFERENCE_CACHE_SIZE = 64     # a dataset's reference runs (seeds x variants) fit many times over


def _reference_resampled(run: tuple[np.ndarray, np.ndarray], idx: np.ndarray, task: str, metric: str,
                         counts: np.ndarray | None, draw: tuple[int, int]) -> np.ndarray:
    """:func:`resampled_metric` of a reference run, remembered: a paired table compares every method with the same
    reference runs on the same resamples (``idx`` is fixed by the test labels and ``draw`` = (resamples, seed)),
    so each reference run is resampled once per table instead of once per method. Keyed by the run's scores and
    labels themselves, so a different run can never be served another's values."""
    scores, labels = np.ascontiguousarray(run[0]), np.ascontiguousarray(run[1])
    key = (hashlib.sha1(scores.tobytes()).hexdigest(), scores.shape, scores.dtype.str,
           hashlib.sha1(labels.tobytes()).hexdigest(), labels.shape, labels.dtype.str, task, metric, draw)
    if key in _REFERENCE_CACHE:
        _REFERENCE_CACHE.move_to_end(key)
        return _REFERENCE_CACHE[key]
    values = resampled_metric(scores, labels, idx, task, metric, counts)
    values.flags.writeable = False
    _REFERENCE_CACHE[key] = values
    if len(_REFERENCE_CACHE) > _REFERENCE_CACHE_SIZE:
        _REFERENCE_CACHE.popitem(last=False)
    return values


def paired_difference(method: Runs, reference: Runs, task: str, metric: str, n_resamples: int = N_RESAMPLES,
                      seed: int = SEED) -> dict[str, float]:
    """Mean over matched seeds of ``metric(method) - metric(reference)`` with its bootstrap 95 % interval and
    two-sided bootstrap p; ``method[j]`` and ``reference[j]`` are seed j of each, on the same images."""
    if len(method) != len(reference) or not method:
        raise ValueError("paired_difference needs one reference run per method run (matched seeds)")
    _check_same_images([*method, *reference])
    rng = np.random.default_rng(seed)
    idx = stratified_indices(method[0][1], n_resamples, rng)
    counts = _shared_counts(idx, method[0][1], task, metric)
    d = np.stack([resampled_metric(m[0], m[1], idx, task, metric, counts)
                  - _reference_resampled(r, idx, task, metric, counts, (n_resamples, seed))
                  for m, r in zip(method, reference)])
    pick = rng.integers(0, len(method), size=(n_resamples, len(method)))
    boot = np.nanmean(d[pick, np.arange(n_resamples)[:, None]], axis=1)
    boot = boot[np.isfinite(boot)]
    point = float(np.mean([full_metric(m[0], m[1], task, metric) - full_metric(r[0], r[1], task, metric)
                           for m, r in zip(method, reference)]))
    low, high = _percentile(boot)
    p = min(1.0, 2 * min((np.sum(boot <= 0) + 1), (np.sum(boot >= 0) + 1)) / (len(boot) + 1)) if len(boot) \
        else float("nan")
    return {"diff": point, "ci95_low": low, "ci95_high": high, "p_bootstrap": float(p)}


# --------------------------------------------------------------------------------------------------- DeLong
def delong_covariance(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), covariance (k, k)) of k score vectors (rows of ``scores``, k x N) on the same binary
    ``labels`` (N,), by DeLong's structural components computed from mid-ranks (Sun & Xu 2014):
    V10_i = P(score of positive i > a negative's) and V01_j likewise per negative, ties counting 1/2;
    cov = S10 / m + S01 / n with S the sample covariances (ddof 1) over the m positives / n negatives."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.asarray(labels).reshape(-1).astype(bool)
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 positives and >= 2 negatives, got {m} and {n}")
    tx, ty = sps.rankdata(pos, axis=1), sps.rankdata(neg, axis=1)
    tz = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_paired(method_scores: np.ndarray, reference_scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """DeLong's test of mean AUC over the method's score vectors (rows) minus the reference's, on the same images.

    The contrast L = (1/k, ..., 1/k, -1/k', ..., -1/k') over all correlated AUCs: z = L a / sqrt(L S L'),
    two-sided normal p."""
    a = np.atleast_2d(method_scores)
    b = np.atleast_2d(reference_scores)
    aucs, cov = delong_covariance(np.concatenate([a, b]), labels)
    contrast = np.concatenate([np.full(len(a), 1 / len(a)), np.full(len(b), -1 / len(b))])
    diff = float(contrast @ aucs)
    var = float(contrast @ cov @ contrast)
    if var <= 0:
        return {"diff": diff, "z": float("nan"), "p_delong": 1.0 if diff == 0 else float("nan")}
    z = diff / np.sqrt(var)
    return {"diff": diff, "z": float(z), "p_delong": float(2 * sps.norm.sf(abs(z)))}


# ----------------------------------------------------------------------------------------------------- Holm
def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; NaN entries stay NaN and do not
    count in the family size."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
