"""Verification scoring and metrics: cosine scores, AS-Norm, EER and MinDCF. Pure numpy/torch.

A trial is accepted when ``score >= threshold``. The DET curve of a trial set is the polyline of
(FPR, FNR) over all thresholds; EER is where it crosses FNR = FPR, linearly interpolated between
its vertices, and MinDCF the lowest normalised detection cost over its vertices.

Speed: the curve is built from the target and non-target scores sorted separately, then merged by
``searchsorted`` of the distinct scores of the smaller class into the larger one. That is a few
times faster than one argsort of all trials and touches only O(smaller class) points afterwards.
"""
from typing import NamedTuple

import numpy as np
import torch

from mvector.errors import MVectorError

P_TARGET = 0.01
P_TARGET_05 = 0.05
# False-accept rates whose thresholds a model ships besides the EER one (``operating_points``).
OPERATING_FARS = (0.01, 0.001)
AS_NORM_TOP_K = 300


def _unit_rows(x, what: str) -> np.ndarray:
    """float32 ``[count, dim]`` embeddings scaled to unit length (rows of zeros stay zero)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise MVectorError(f"{what} must be a 2-D [count, dim] array of embeddings, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


# numpy's BLAS rather than torch for the products: on a busy 2-core CPU it is steadier and faster here.
def cosine_score_matrix(enroll, test) -> np.ndarray:
    """Cosine score of every enrol embedding against every test embedding: ``[E, D] x [T, D] -> [E, T]``."""
    enroll, test = _unit_rows(enroll, "enroll"), _unit_rows(test, "test")
    if enroll.shape[1] != test.shape[1]:
        raise MVectorError(f"enroll and test embeddings differ in size: {enroll.shape[1]} vs {test.shape[1]}")
    return enroll @ test.T


def pair_scores(a, b) -> np.ndarray:
    """Cosine score of each row of ``a[N, D]`` with the same row of ``b[N, D]`` -> ``[N]``."""
    a, b = _unit_rows(a, "a"), _unit_rows(b, "b")
    if a.shape != b.shape:
        raise MVectorError(f"pair_scores needs two arrays of the same shape, got {a.shape} and {b.shape}")
    return np.einsum("nd,nd->n", a, b)


def cohort_stats(cohort_scores, top_k: int = AS_NORM_TOP_K):
    """Mean and (population) std of each row's ``top_k`` highest cohort scores: ``[N, C] -> ([N], [N])``."""
    scores = torch.as_tensor(cohort_scores).float()
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise MVectorError(f"cohort scores must be a non-empty 2-D [count, cohort] array, "
                           f"got shape {tuple(scores.shape)}")
    if top_k < 1:
        raise MVectorError(f"AS-Norm top_k must be >= 1, got {top_k}")
    top = torch.topk(scores, min(top_k, scores.shape[1]), dim=1).values.double()
    return top.mean(dim=1).numpy(), top.std(dim=1, correction=0).numpy()


def apply_as_norm(scores, enroll_stats, test_stats) -> np.ndarray:
    """AS-Norm from precomputed cohort statistics ``(mean, std)`` of each side (see ``cohort_stats``).

    ``scores[E, T]`` takes per-row enrol stats ``[E]`` and per-column test stats ``[T]``;
    ``scores[N]`` takes per-trial stats ``[N]`` on both sides.
    """
    scores = np.asarray(scores)
    (enroll_mean, enroll_std), (test_mean, test_std) = enroll_stats, test_stats
    if scores.ndim == 2:
        ok = scores.shape == (len(enroll_mean), len(test_mean))
        enroll_mean, enroll_std = enroll_mean[:, None], enroll_std[:, None]
    else:
        ok = scores.ndim == 1 and len(scores) == len(enroll_mean) == len(test_mean)
    if not ok:
        raise MVectorError(f"AS-Norm: scores of shape {scores.shape} do not match cohort statistics "
                           f"for {len(enroll_mean)} enrol and {len(test_mean)} test embeddings")
    # A cohort row of identical scores has std 0; the floor keeps the score finite.
    eps = 1e-8
    normed = 0.5 * ((scores - enroll_mean) / np.maximum(enroll_std, eps)
                    + (scores - test_mean) / np.maximum(test_std, eps))
    return normed.astype(np.float32)


def as_norm(scores, enroll_cohort_scores, test_cohort_scores, top_k: int = AS_NORM_TOP_K) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-Norm): each score is z-normalised by the mean and std
    of the ``top_k`` highest cohort scores of its enrol side and of its test side, and the two averaged.

    ``scores[E, T]`` (cross product) takes ``enroll_cohort_scores[E, C]`` and ``test_cohort_scores[T, C]``;
    ``scores[N]`` (trial pairs) takes ``[N, C]`` for both. Cohort scores: ``cosine_score_matrix(x, cohort)``.
    """
    return apply_as_norm(scores, cohort_stats(enroll_cohort_scores, top_k), cohort_stats(test_cohort_scores, top_k))


class DetCurve(NamedTuple):
    """Vertices of the DET polyline in order of increasing threshold, with the threshold reaching each."""
    fpr: np.ndarray
    fnr: np.ndarray
    thresholds: np.ndarray


def _split_classes(scores, labels):
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1 and scores.shape != labels.shape:
        raise MVectorError(f"scores of shape {scores.shape} and labels of shape {labels.shape} differ")
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    if scores.shape != labels.shape:
        raise MVectorError(f"{len(scores)} scores but {len(labels)} labels")
    if labels.dtype != np.bool_:
        if not np.isin(labels, (0, 1)).all():
            raise MVectorError("trial labels must be 1 (target) or 0 (non-target)")
        labels = labels.astype(np.bool_)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise MVectorError(f"{int(np.count_nonzero(~np.isfinite(scores)))} trial score(s) are NaN or infinite")
    target, nontarget = scores[labels], scores[~labels]  # fresh copies: sorted in place
    target.sort()
    nontarget.sort()
    if len(target) == 0 or len(nontarget) == 0:
        raise MVectorError(f"metrics need both target and non-target trials; got {len(target)} target and "
                           f"{len(nontarget)} non-target")
    return target, nontarget


class _Polyline(NamedTuple):
    fnr: np.ndarray
    fpr: np.ndarray
    thresholds: np.ndarray
    below_o: np.ndarray  # how many scores of the larger class lie below each vertex's threshold
    segment_o: np.ndarray  # segment i -> i+1 passes scores of the larger class only
    o_sorted: np.ndarray  # the larger class's scores, sorted


def _polyline(target: np.ndarray, nontarget: np.ndarray) -> _Polyline:
    """The DET polyline from sorted target and non-target scores.

    With C the class with fewer scores and O the other, and u_1 < ... < u_K the distinct C scores, the
    vertices are: all accepted; for each k, P_k (threshold u_k) and Q_k (threshold just above u_k);
    all rejected. Between Q_k and P_{k+1} only O scores are passed, so the curve is straight there
    and its inner vertices add nothing to EER or MinDCF (both are found on the vertices kept).
    """
    c_is_target = len(target) <= len(nontarget)
    c_sorted, o_sorted = (target, nontarget) if c_is_target else (nontarget, target)
    first = np.flatnonzero(np.r_[True, c_sorted[1:] != c_sorted[:-1]])
    unique = c_sorted[first]
    c_left = first
    c_right = np.r_[first[1:], len(c_sorted)]
    o_left = np.searchsorted(o_sorted, unique, side="left")
    o_right = np.searchsorted(o_sorted, unique, side="right")

    num_c, num_o = len(c_sorted), len(o_sorted)
    below_c = np.concatenate(([0], np.column_stack((c_left, c_right)).ravel(), [num_c]))
    below_o = np.concatenate(([0], np.column_stack((o_left, o_right)).ravel(), [num_o]))

    # Thresholds: P_k is reached at u_k; Q_k at the next score above u_k of either class.
    o_padded = np.r_[o_sorted, np.inf]
    next_above = np.minimum(np.r_[unique[1:], np.inf], o_padded[o_right])
    top = max(c_sorted[-1], o_sorted[-1])
    next_above = np.where(np.isinf(next_above), np.nextafter(top, np.inf), next_above)
    lowest = min(c_sorted[0], o_sorted[0])
    thresholds = np.concatenate(([lowest], np.column_stack((unique, next_above)).ravel(),
                                 [np.nextafter(top, np.inf)]))

    below_t, below_n = (below_c, below_o) if c_is_target else (below_o, below_c)
    fnr = below_t / len(target)
    fpr = 1.0 - below_n / len(nontarget)
    # Segments start -> P_1, Q_k -> P_{k+1} and Q_K -> end pass only O scores.
    segment_o = np.zeros(len(fnr) - 1, dtype=bool)
    segment_o[0::2] = True
    return _Polyline(fnr, fpr, thresholds, below_o, segment_o, o_sorted)


def _eer(curve: _Polyline):
    fnr, fpr, thresholds, below_o, segment_o, o_sorted = curve
    diff = fnr - fpr  # -1 at the lowest threshold, +1 at the highest, never decreasing
    i = int(np.searchsorted(diff, 0.0, side="right")) - 1
    w = -diff[i] / (diff[i + 1] - diff[i])
    eer = fpr[i] + w * (fpr[i + 1] - fpr[i])
    if not segment_o[i]:
        return float(eer), float(thresholds[i])  # a jump at one score: that score is the threshold
    # Inside a run of O scores: the score of fractional rank (how many O scores lie below) at the crossing.
    rank = below_o[i] + w * (below_o[i + 1] - below_o[i])
    return float(eer), _score_at_rank(o_sorted, rank, below_o[i + 1], thresholds[i + 1])


def _score_at_rank(o_sorted, rank: float, end_rank: int, end_threshold: float) -> float:
    """The threshold with ``rank`` O scores below it, interpolated between the scores of whole ranks.

    Whole rank r < end_rank is reached at ``o_sorted[r]``; the segment's end rank at the threshold of
    its end vertex (o_sorted[end_rank] may lie beyond scores of the other class).
    """
    def at(r):
        return o_sorted[r] if r < end_rank else end_threshold

    low = int(np.floor(rank))
    if rank == low:
        return float(at(low))
    return float(at(low) + (rank - low) * (at(low + 1) - at(low)))


def _min_dcf(curve: _Polyline, p_target, c_miss, c_fa):
    cost = c_miss * p_target * curve.fnr + c_fa * (1.0 - p_target) * curve.fpr
    best = int(np.argmin(cost))
    return float(cost[best] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(curve.thresholds[best])


def det_curve(scores, labels) -> DetCurve:
    """The DET polyline (FPR, FNR, threshold per vertex), enough to draw the curve exactly."""
    curve = _polyline(*_split_classes(scores, labels))
    return DetCurve(curve.fpr, curve.fnr, curve.thresholds)


def compute_eer(scores, labels):
    """``(eer, threshold)``: EER as a fraction at the interpolated crossing of FNR and FPR."""
    return _eer(_polyline(*_split_classes(scores, labels)))


def compute_min_dcf(scores, labels, p_target=P_TARGET, c_miss=1.0, c_fa=1.0):
    """``(min_dcf, threshold)``: the lowest detection cost, normalised by that of the best trivial system."""
    return _min_dcf(_polyline(*_split_classes(scores, labels)), p_target, c_miss, c_fa)


def _threshold_at_far(target: np.ndarray, nontarget: np.ndarray, far: float) -> dict:
    """The lowest threshold at which at most ``far`` of the (sorted) non-target scores reach it, with the
    false-accept and false-reject rates it gives (a trial is accepted when its score >= threshold)."""
    allowed = int(np.floor(far * len(nontarget) + 1e-9))
    if allowed >= len(nontarget):
        threshold = float(nontarget[0])
    else:
        # Just above the highest non-target score that must be rejected: ties with it are rejected too.
        threshold = float(np.nextafter(np.float64(nontarget[len(nontarget) - allowed - 1]), np.inf))
    accepted = len(nontarget) - int(np.searchsorted(nontarget, threshold, side="left"))
    rejected = int(np.searchsorted(target, threshold, side="left"))
    return {"threshold": threshold, "far": accepted / len(nontarget), "frr": rejected / len(target)}


def verification_metrics(scores, labels, fars=OPERATING_FARS) -> dict:
    """EER, its threshold and MinDCF at p_target 0.01 and 0.05 (c_miss = c_fa = 1), from one sort, and
    ``operating_points``: the EER threshold and the threshold at each false-accept rate of ``fars``
    (keys ``eer`` and ``far=<rate>``, each with its threshold, far and frr)."""
    target, nontarget = _split_classes(scores, labels)
    curve = _polyline(target, nontarget)
    eer, threshold = _eer(curve)
    points = {"eer": {"threshold": threshold, "far": eer, "frr": eer}}
    points.update((f"far={far:g}", _threshold_at_far(target, nontarget, far)) for far in fars)
    return {
        "eer": eer,
        "threshold": threshold,
        "min_dcf": _min_dcf(curve, P_TARGET, 1.0, 1.0)[0],
        "min_dcf_05": _min_dcf(curve, P_TARGET_05, 1.0, 1.0)[0],
        "operating_points": points,
    }
