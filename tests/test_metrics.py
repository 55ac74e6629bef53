import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from mvector.errors import MVectorError
from mvector.metrics import (as_norm, compute_eer, compute_min_dcf, cosine_score_matrix, det_curve, pair_scores,
                             verification_metrics)

pytestmark = pytest.mark.unit


def reference_eer(scores, labels):
    """EER where sklearn's ROC, as (FPR, FNR) vertices, crosses FNR = FPR, linearly interpolated."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    diff = (1 - tpr) - fpr  # +1 at the highest threshold, falling to -1
    i = np.flatnonzero(diff <= 0)[0]
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    return fpr[i - 1] + w * (fpr[i] - fpr[i - 1])


def reference_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    """Brute force: the cost at every distinct score as threshold, and above the highest."""
    thresholds = np.r_[np.unique(scores), np.inf]
    target, nontarget = scores[labels == 1], scores[labels == 0]
    fnr = (target[None, :] < thresholds[:, None]).mean(axis=1)
    fpr = (nontarget[None, :] >= thresholds[:, None]).mean(axis=1)
    cost = c_miss * p_target * fnr + c_fa * (1 - p_target) * fpr
    return cost.min() / min(c_miss * p_target, c_fa * (1 - p_target))


def random_trials(rng, size, target_fraction, decimals=None):
    labels = (rng.random(size) < target_fraction).astype(int)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.standard_normal(size) + labels * rng.uniform(0.5, 2.5)
    if decimals is not None:  # coarse rounding makes many ties, within and across classes
        scores = np.round(scores, decimals)
    return scores, labels


CASES = [(size, fraction, decimals) for size in (7, 60, 500, 3000)
         for fraction in (0.05, 0.5, 0.9) for decimals in (None, 1, 0)]


@pytest.mark.parametrize("size,fraction,decimals", CASES)
def test_eer_and_min_dcf_match_independent_computations(size, fraction, decimals):
    rng = np.random.default_rng(size * 100 + int(fraction * 10) + (decimals or 7))
    scores, labels = random_trials(rng, size, fraction, decimals)
    result = verification_metrics(scores, labels)
    assert result["eer"] == pytest.approx(reference_eer(scores, labels), abs=1e-4)
    assert result["min_dcf"] == pytest.approx(reference_min_dcf(scores, labels, 0.01), abs=1e-4)
    assert result["min_dcf_05"] == pytest.approx(reference_min_dcf(scores, labels, 0.05), abs=1e-4)
    assert compute_eer(scores, labels)[0] == pytest.approx(result["eer"], abs=1e-12)
    assert compute_min_dcf(scores, labels)[0] == pytest.approx(result["min_dcf"], abs=1e-12)


@pytest.mark.parametrize("p_target,c_miss,c_fa", [(0.01, 1, 1), (0.3, 10, 1), (0.001, 1, 5)])
def test_min_dcf_threshold_achieves_the_minimum_cost(p_target, c_miss, c_fa):
    scores, labels = random_trials(np.random.default_rng(3), 800, 0.2, decimals=1)
    min_dcf, threshold = compute_min_dcf(scores, labels, p_target, c_miss, c_fa)
    assert min_dcf == pytest.approx(reference_min_dcf(scores, labels, p_target, c_miss, c_fa), abs=1e-4)
    fnr = np.mean(scores[labels == 1] < threshold)
    fpr = np.mean(scores[labels == 0] >= threshold)
    cost = (c_miss * p_target * fnr + c_fa * (1 - p_target) * fpr) / min(c_miss * p_target, c_fa * (1 - p_target))
    assert cost == pytest.approx(min_dcf, abs=1e-12)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_eer_threshold_gives_error_rates_at_the_eer(fraction):
    rng = np.random.default_rng(int(fraction * 10))
    scores, labels = random_trials(rng, 4000, fraction)
    eer, threshold = compute_eer(scores, labels)
    target, nontarget = scores[labels == 1], scores[labels == 0]
    # Accepting at the threshold misses and false-alarms at the EER, give or take one trial of each class.
    assert abs(np.mean(target < threshold) - eer) <= 1 / len(target) + 1e-12
    assert abs(np.mean(nontarget >= threshold) - eer) <= 1 / len(nontarget) + 1e-12


def test_perfectly_separated_scores_have_zero_eer_and_cost():
    scores = np.r_[np.linspace(-1, 0.2, 50), np.linspace(0.5, 1, 20)]
    labels = np.r_[np.zeros(50), np.ones(20)]
    result = verification_metrics(scores, labels)
    assert result["eer"] == 0 and result["min_dcf"] == 0 and result["min_dcf_05"] == 0
    assert 0.2 < result["threshold"] <= 0.5


def test_reversed_scores_have_eer_one():
    scores = np.r_[np.linspace(0.5, 1, 10), np.linspace(-1, 0.2, 10)]
    labels = np.r_[np.zeros(10), np.ones(10)]
    assert compute_eer(scores, labels)[0] == pytest.approx(1.0)


def test_all_scores_tied_gives_eer_one_half():
    assert compute_eer(np.zeros(10), np.r_[np.zeros(5), np.ones(5)])[0] == pytest.approx(0.5)


def test_matrix_scores_with_matrix_labels_equal_flattened_ones():
    rng = np.random.default_rng(5)
    scores, labels = rng.standard_normal((30, 40)), rng.random((30, 40)) < 0.1
    assert verification_metrics(scores, labels) == verification_metrics(scores.ravel(), labels.ravel())


def test_det_curve_runs_from_all_accepted_to_all_rejected():
    scores, labels = random_trials(np.random.default_rng(6), 300, 0.3, decimals=1)
    curve = det_curve(scores, labels)
    assert (curve.fpr[0], curve.fnr[0]) == (1.0, 0.0)
    assert (curve.fpr[-1], curve.fnr[-1]) == (0.0, 1.0)
    assert np.all(np.diff(curve.fpr) <= 0) and np.all(np.diff(curve.fnr) >= 0)
    assert np.all(np.diff(curve.thresholds) >= 0)
    # Each vertex is what accepting at its threshold gives.
    target, nontarget = scores[labels == 1], scores[labels == 0]
    for fpr, fnr, threshold in zip(*curve):
        assert fnr == pytest.approx(np.mean(target < threshold))
        assert fpr == pytest.approx(np.mean(nontarget >= threshold))


@pytest.mark.parametrize("scores,labels,match", [
    (np.zeros(4), np.zeros(4), "both target and non-target"),
    (np.zeros(4), np.ones(4), "both target and non-target"),
    (np.array([0.1, np.nan, 0.2]), np.array([0, 1, 1]), "NaN"),
    (np.zeros(3), np.array([0, 1, 2]), "1 .target. or 0"),
    (np.zeros(3), np.array([0, 1]), "3 scores but 2 labels"),
])
def test_bad_trials_raise_clear_errors(scores, labels, match):
    with pytest.raises(MVectorError, match=match):
        verification_metrics(scores, labels)


def test_cosine_score_matrix_equals_a_loop():
    rng = np.random.default_rng(7)
    enroll, test = rng.standard_normal((5, 16)), rng.standard_normal((7, 16)) * 3
    expected = np.array([[e @ t / np.linalg.norm(e) / np.linalg.norm(t) for t in test] for e in enroll])
    np.testing.assert_allclose(cosine_score_matrix(enroll, test), expected, atol=1e-6)
    np.testing.assert_allclose(cosine_score_matrix(torch.from_numpy(enroll), torch.from_numpy(test)), expected,
                               atol=1e-6)


def test_pair_scores_equal_a_loop():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((9, 12)), rng.standard_normal((9, 12))
    expected = [x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)]
    np.testing.assert_allclose(pair_scores(a, b), expected, atol=1e-6)


def test_scoring_rejects_mismatched_shapes():
    with pytest.raises(MVectorError, match="differ in size"):
        cosine_score_matrix(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(MVectorError, match="same shape"):
        pair_scores(np.ones((2, 3)), np.ones((3, 3)))


def direct_as_norm(score, enroll_cohort_row, test_cohort_row, top_k):
    """One trial at a time, as the AS-Norm formula reads."""
    top_e = np.sort(enroll_cohort_row)[::-1][:top_k]
    top_t = np.sort(test_cohort_row)[::-1][:top_k]
    return 0.5 * ((score - top_e.mean()) / top_e.std() + (score - top_t.mean()) / top_t.std())


@pytest.mark.parametrize("top_k", [3, 10, 50])  # 50 > cohort size: the whole cohort
def test_as_norm_equals_direct_per_trial_computation(top_k):
    rng = np.random.default_rng(9)
    enroll, test, cohort = (rng.standard_normal((n, 8)) for n in (4, 6, 20))
    scores = cosine_score_matrix(enroll, test)
    enroll_cohort, test_cohort = cosine_score_matrix(enroll, cohort), cosine_score_matrix(test, cohort)
    normed = as_norm(scores, enroll_cohort, test_cohort, top_k=top_k)
    for e in range(4):
        for t in range(6):
            expected = direct_as_norm(scores[e, t], enroll_cohort[e], test_cohort[t], top_k)
            assert normed[e, t] == pytest.approx(expected, abs=1e-5)
    # Trial pairs: per-trial cohort rows on both sides.
    pairs = as_norm(scores[:, :4].diagonal(), enroll_cohort, test_cohort[:4], top_k=top_k)
    for i in range(4):
        assert pairs[i] == pytest.approx(direct_as_norm(scores[i, i], enroll_cohort[i], test_cohort[i], top_k),
                                         abs=1e-5)


def test_as_norm_rejects_mismatched_cohort_scores():
    with pytest.raises(MVectorError, match="do not match"):
        as_norm(np.zeros((3, 4)), np.zeros((3, 5)), np.zeros((3, 5)))


def test_operating_points_hold_the_false_accept_rate_at_or_under_their_target():
    rng = np.random.default_rng(0)
    target, nontarget = rng.normal(0.6, 0.15, 3000), rng.normal(0.0, 0.15, 30000)
    nontarget[:50] = nontarget[50]  # ties at one score must all fall on one side
    scores = np.concatenate([target, nontarget])
    labels = np.concatenate([np.ones(len(target)), np.zeros(len(nontarget))])
    result = verification_metrics(scores, labels)
    points = result["operating_points"]
    assert points["eer"]["threshold"] == result["threshold"]
    for name, far in (("far=0.01", 0.01), ("far=0.001", 0.001)):
        threshold = points[name]["threshold"]
        accepted = np.mean(nontarget >= threshold)
        assert accepted <= far and accepted == points[name]["far"]
        # The lowest such threshold: the highest rejected non-target score lies just below it.
        assert np.nextafter(np.max(nontarget[nontarget < threshold]), np.inf) == threshold
        assert points[name]["frr"] == np.mean(target < threshold)
    assert points["far=0.001"]["threshold"] > points["far=0.01"]["threshold"]
