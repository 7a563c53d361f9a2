"""Test-set statistics (benchmarks.stats): vectorised metrics equal the reference ones, the bootstrap interval
agrees with independent computations, DeLong with its definition and a published example, Holm by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from benchmarks import metrics as M
from benchmarks import stats as S


def _data(n: int, k: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + signal * np.eye(k)[y]
    logits[:6], y[:6] = logits[6:12], y[6:12]          # exact ties in the scores
    logits = logits.astype(np.float32)
    return logits, M.scores_from_logits(torch.from_numpy(logits), "multiclass"), y


@pytest.mark.parametrize("k", [2, 4])
def test_resampled_metrics_equal_the_reference_metrics(k: int) -> None:
    logits, scores, y = _data(90, k, 1)
    idx = S.stratified_indices(y, 25, np.random.default_rng(0))
    for metric in S.VECTORISED:
        fast = S.resampled_metric(scores, y, idx, "multiclass", metric)
        ref = [M.compute_metrics(y[i], torch.from_numpy(logits[i]), "multiclass")[metric] for i in idx]
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12, err_msg=metric)


@pytest.mark.parametrize("k", [2, 7])
def test_auc_from_counts_equals_the_midrank_form_bit_for_bit(k: int) -> None:
    _, scores, y = _data(1512, k, 3)
    scores = np.round(scores, 2)                        # many ties, as quantised scores give
    idx = np.random.default_rng(1).integers(0, len(y), size=(400, len(y)))
    idx[0] = 0                                          # one resample of a single image: both classes absent
    counts = S.resample_counts(idx, len(y))
    assert counts.sum(axis=1).tolist() == [len(y)] * 400
    for c in range(k):
        fast = S.auc_from_counts(counts, (y == c).astype(np.float64), scores[:, c])
        ref = S.auc_by_midranks((y[idx] == c).astype(np.float64), scores[:, c][idx])
        assert np.isnan(fast[0]) and np.array_equal(fast, ref, equal_nan=True)


@pytest.mark.parametrize("k", [2, 7])
def test_counting_metrics_from_multiplicities_equal_counting_the_drawn_images(k: int) -> None:
    """acc, balanced_acc and macro_f1 from the resamples' multiplicities (one matrix product) against counting
    each drawn image's label and prediction: bit for bit, with or without the caller's shared counts."""
    _, scores, y = _data(1512, k, 4, signal=0.6)
    idx = S.stratified_indices(y, 300, np.random.default_rng(2))
    pred = (scores[:, 1] > 0.5).astype(np.int64) if k == 2 else scores.argmax(axis=1)
    yi, pi = y[idx], pred[idx]
    true_n = np.stack([(yi == c).sum(axis=1) for c in range(k)], axis=1).astype(np.float64)
    pred_n = np.stack([(pi == c).sum(axis=1) for c in range(k)], axis=1).astype(np.float64)
    tp = np.stack([((yi == c) & (pi == c)).sum(axis=1) for c in range(k)], axis=1).astype(np.float64)
    present, used = true_n > 0, (true_n + pred_n) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = {"acc": (yi == pi).mean(axis=1),
                    "balanced_acc": np.where(present, tp / true_n, 0).sum(axis=1) / present.sum(axis=1),
                    "macro_f1": np.where(used, 2 * tp / (true_n + pred_n), 0).sum(axis=1) / used.sum(axis=1)}
    counts = S.resample_counts(idx, len(y))
    for metric, want in expected.items():
        assert np.array_equal(S.resampled_metric(scores, y, idx, "multiclass", metric), want), metric
        assert np.array_equal(S.resampled_metric(scores, y, idx, "multiclass", metric, counts), want), metric


def test_paired_difference_reuses_the_reference_resamples_without_changing_any_result() -> None:
    """The reference runs' resampled AUCs are remembered across the comparisons of a table: a second method against
    the same reference (served from memory) gives exactly what it gives from scratch, and another reference with
    the same shapes is not served the first one's values."""
    _, ref, y = _data(300, 3, 5)
    runs = {name: [(_data(300, 3, seed)[1], y) for seed in seeds]
            for name, seeds in {"ref": (5, 6), "a": (7, 8), "b": (9, 10), "other_ref": (11, 12)}.items()}
    S._REFERENCE_CACHE.clear()
    S.paired_difference(runs["a"], runs["ref"], "multiclass", "auc")
    assert len(S._REFERENCE_CACHE) == 2                              # one entry per reference seed
    warm = S.paired_difference(runs["b"], runs["ref"], "multiclass", "auc")
    assert len(S._REFERENCE_CACHE) == 2                              # served from memory
    S._REFERENCE_CACHE.clear()
    assert S.paired_difference(runs["b"], runs["ref"], "multiclass", "auc") == warm
    other = S.paired_difference(runs["b"], runs["other_ref"], "multiclass", "auc")
    assert len(S._REFERENCE_CACHE) == 4 and other != warm


def test_stratified_resamples_keep_each_class_count() -> None:
    y = np.array([0] * 30 + [1] * 7 + [2] * 3)
    idx = S.stratified_indices(y, 50, np.random.default_rng(0))
    assert idx.shape == (50, 40)
    for row in idx:
        assert np.bincount(y[row], minlength=3).tolist() == [30, 7, 3]
    assert len(np.unique(idx[:, 0])) > 10              # really resampled, not the identity


def test_accuracy_interval_agrees_with_the_stratified_normal_interval() -> None:
    """One seed, 800 images: the bootstrap ACC interval matches mean +- 1.96 SE with the stratified binomial
    variance sum_c (n_c / n)^2 p_c (1 - p_c) / n_c (an independent, closed-form computation)."""
    _, scores, y = _data(800, 2, 3, signal=1.2)
    correct = (scores[:, 1] > 0.5).astype(int) == y
    n = len(y)
    var = sum((np.sum(y == c) / n) ** 2 * correct[y == c].mean() * (1 - correct[y == c].mean()) / np.sum(y == c)
              for c in (0, 1))
    point, low, high = S.interval([(scores, y)], "multiclass", "acc")
    assert point == correct.mean()
    assert abs((high - low) / 2 - 1.96 * np.sqrt(var)) < 0.1 * 1.96 * np.sqrt(var)
    assert abs((low + high) / 2 - point) < 0.01


def test_auc_interval_width_agrees_with_delong_standard_error() -> None:
    """Bootstrap and DeLong estimate the same AUC variance by different routes (resampling vs structural
    components); on 600 images their 95 % half-widths agree within 12 %."""
    _, scores, y = _data(600, 2, 4, signal=1.0)
    point, low, high = S.interval([(scores, y)], "multiclass", "auc")
    aucs, cov = S.delong_covariance(scores[:, 1][None], y)
    assert np.isclose(point, aucs[0])
    assert abs((high - low) / 2 - 1.96 * np.sqrt(cov[0, 0])) < 0.12 * 1.96 * np.sqrt(cov[0, 0])


def test_seed_spread_widens_the_interval_and_identical_seeds_add_nothing() -> None:
    _, scores, y = _data(200, 2, 5)
    one = S.interval([(scores, y)], "multiclass", "auc")
    same = S.interval([(scores, y)] * 3, "multiclass", "auc")
    np.testing.assert_allclose(one, same)
    rng = np.random.default_rng(9)
    noisy = [(M.scores_from_logits(torch.from_numpy(np.log(scores) + rng.normal(0, 1.5, scores.shape)),
                                   "multiclass"), y) for _ in range(3)]
    spread = np.std([S.full_metric(s, y, "multiclass", "auc") for s, _ in noisy], ddof=1)
    lo, hi = S.interval(noisy, "multiclass", "auc")[1:]
    # the same image draws with the seeds held fixed: test-sampling variation alone is narrower
    idx = S.stratified_indices(y, S.N_RESAMPLES, np.random.default_rng(S.SEED))
    fixed = np.mean([S.resampled_metric(s, y, idx, "multiclass", "auc") for s, _ in noisy], axis=0)
    f_lo, f_hi = np.percentile(fixed, [2.5, 97.5])
    assert spread > 0.01 and hi - lo > 1.05 * (f_hi - f_lo)


def _delong_by_definition(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong 1988 directly: psi(x, y) = 1, 1/2, 0; V10 per positive, V01 per negative; S10/m + S01/n."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    k = len(scores)
    s10 = np.array([[np.sum((v10[r] - v10[r].mean()) * (v10[s] - v10[s].mean())) / (pos.shape[1] - 1)
                     for s in range(k)] for r in range(k)])
    s01 = np.array([[np.sum((v01[r] - v01[r].mean()) * (v01[s] - v01[s].mean())) / (neg.shape[1] - 1)
                     for s in range(k)] for r in range(k)])
    return psi.mean(axis=(1, 2)), s10 / pos.shape[1] + s01 / neg.shape[1]


def test_delong_equals_its_definition_on_correlated_tied_scores() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 70)
    base = y + rng.normal(0, 1, 70)
    scores = np.stack([np.round(base + rng.normal(0, s, 70), 1) for s in (0.3, 0.8, 1.5)])   # ties from rounding
    aucs, cov = S.delong_covariance(scores, y)
    ref_aucs, ref_cov = _delong_by_definition(scores, y)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    u = sps.mannwhitneyu(scores[0, y == 1], scores[0, y == 0]).statistic
    assert np.isclose(aucs[0], u / (np.sum(y == 1) * np.sum(y == 0)))
    # the paired test is the contrast of those correlated AUCs
    res = S.delong_paired(scores[:2], scores[2:], y)
    c = np.array([0.5, 0.5, -1.0])
    assert np.isclose(res["z"], c @ ref_aucs / np.sqrt(c @ ref_cov @ c))
    assert np.isclose(res["p_delong"], 2 * sps.norm.sf(abs(res["z"])))


def test_delong_on_hanley_mcneil_published_example() -> None:
    """Hanley & McNeil (1982, Radiology 143:29) CT ratings: 58 normal (33, 6, 6, 11, 2 on ratings 1-5) and
    51 abnormal (3, 2, 2, 11, 33) cases; published AUC 0.893 with SE 0.032 (their exponential approximation,
    which DeLong's nonparametric SE matches to within a few thousandths)."""
    ratings = np.arange(1, 6)
    s = np.concatenate([np.repeat(ratings, [33, 6, 6, 11, 2]), np.repeat(ratings, [3, 2, 2, 11, 33])]).astype(float)
    y = np.r_[np.zeros(58), np.ones(51)]
    aucs, cov = S.delong_covariance(s[None], y)
    assert round(float(aucs[0]), 3) == 0.893
    assert abs(np.sqrt(cov[0, 0]) - 0.032) < 0.003


def test_holm_by_hand_and_nan_left_out() -> None:
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03, 0.005, np.nan]), [0.03, 0.06, 0.06, 0.02, np.nan])
    assert S.holm([0.6, 0.9]).tolist() == [1.0, 1.0]
    # the example: eight tests, smallest p 0.04996 -> 0.40 after Holm
    assert round(float(S.holm([0.04996] + [0.5] * 7)[0]), 2) == 0.40


def test_paired_difference_is_the_mean_seed_difference_with_a_paired_interval() -> None:
    _, ref, y = _data(300, 2, 6, signal=0.6)
    _, better, _ = _data(300, 2, 6, signal=0.6)
    better = better.copy()
    better[:, 1] = np.where(y == 1, np.minimum(better[:, 1] + 0.15, 1), np.maximum(better[:, 1] - 0.15, 0))
    better[:, 0] = 1 - better[:, 1]
    res = S.paired_difference([(better, y)] * 2, [(ref, y)] * 2, "multiclass", "auc")
    d = S.full_metric(better, y, "multiclass", "auc") - S.full_metric(ref, y, "multiclass", "auc")
    assert np.isclose(res["diff"], d) and 0 < res["ci95_low"] < d < res["ci95_high"] and res["p_bootstrap"] < 0.01
    same = S.paired_difference([(ref, y)], [(ref, y)], "multiclass", "auc")
    assert same["diff"] == 0 and same["ci95_low"] == same["ci95_high"] == 0 and same["p_bootstrap"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        S.paired_difference([(ref, y)], [(ref, y[::-1].copy())], "multiclass", "auc")
