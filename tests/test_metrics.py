"""Verification scores against direct computations and scikit-learn; the base-rate correction."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from tornado.metrics import (SCORES, best_csi_threshold, delong, delong_against, forecast_scores, prior_shift,
                             roc_auc, roc_auc_se)


@pytest.fixture
def forecasts():
    rng = np.random.default_rng(4)
    label = (rng.random(3000) < 0.05).astype(np.int64)
    prob = np.clip(0.04 + 0.5 * label * rng.random(3000) + 0.2 * rng.random(3000) ** 3, 0, 1).round(3)  # ties
    return prob, label


def counts_at(prob, label, t):
    yes = prob >= t
    return (yes & (label == 1)).sum(), (yes & (label == 0)).sum(), (~yes & (label == 1)).sum()


def csi_at(prob, label, t):
    hits, fa, miss = counts_at(prob, label, t)
    return hits / (hits + fa + miss)


def pod_far_at(prob, label, t):
    """Probability of detection hits / (hits + misses), false-alarm ratio false alarms / (hits + false alarms)."""
    hits, fa, miss = counts_at(prob, label, t)
    return hits / (hits + miss), fa / (hits + fa)


def test_scores_match_sklearn_and_direct_counts(forecasts):
    prob, label = forecasts
    m = forecast_scores(prob, label, threshold=0.3)
    assert list(m) == SCORES
    assert m["roc_auc"] == pytest.approx(roc_auc_score(label, prob), abs=1e-6)
    assert m["roc_auc_se"] == roc_auc_se(m["roc_auc"], int(label.sum()), int((1 - label).sum())) > 0
    assert m["average_precision"] == pytest.approx(average_precision_score(label, prob), abs=1e-6)
    assert m["brier"] == pytest.approx(brier_score_loss(label, prob))
    assert m["climatology"] == pytest.approx(label.mean())
    assert m["bss"] == pytest.approx(1 - m["brier"] / np.mean((label.mean() - label) ** 2))
    assert m["threshold"] == 0.3 and m["csi"] == pytest.approx(csi_at(prob, label, 0.3))
    assert m["csi_050"] == pytest.approx(csi_at(prob, label, 0.5))
    # the best threshold is the best of every distinct forecast value
    best = max(np.unique(prob), key=lambda t: csi_at(prob, label, t))
    assert m["best_threshold"] == best and m["csi_best"] == pytest.approx(csi_at(prob, label, best))
    assert m["csi_best"] >= m["csi"]


def test_accuracy_pod_and_far_match_direct_counts(forecasts):
    prob, label = forecasts
    prob = np.where(np.arange(len(prob)) % 50 == 0, 0.5, prob)  # some forecasts exactly at 0.5: "yes"
    m = forecast_scores(prob, label, threshold=0.3)
    assert m["n"] == len(label) and m["positives"] == label.sum()
    # the paper's figure: a forecast of 0.5 or more is a "yes"
    assert m["accuracy"] == pytest.approx(np.mean((prob >= 0.5) == (label == 1)))
    assert 0.5 < m["accuracy"] < 1
    for suffix, t in (("_050", 0.5), ("", 0.3), ("_best", m["best_threshold"])):
        pod, far = pod_far_at(prob, label, t)
        assert 0 < pod < 1 and 0 < far < 1 and pod != pytest.approx(far), (suffix, pod, far)  # tell them apart
        assert m[f"pod{suffix}"] == pytest.approx(pod) and m[f"far{suffix}"] == pytest.approx(far), suffix


def test_no_threshold_given_leaves_its_scores_empty(forecasts):
    m = forecast_scores(*forecasts)
    assert all(math.isnan(m[k]) for k in ("threshold", "csi", "pod", "far"))
    assert not math.isnan(m["csi_best"])


def test_climatology_given_is_the_skill_reference(forecasts):
    prob, label = forecasts
    m = forecast_scores(prob, label, climatology=0.2)
    assert m["bss"] == pytest.approx(1 - m["brier"] / np.mean((0.2 - label) ** 2))


def test_best_csi_threshold_without_positives_is_zero_csi():
    t, s = best_csi_threshold(np.array([0.1, 0.7, 0.3]), np.zeros(3))
    assert s["csi"] == 0 and t in (0.1, 0.3, 0.7)


def test_prior_shift_undoes_oversampling():
    # a calibrated model on a set where positives were oversampled from 5% to 50%: Bayes' rule moves a
    # forecast of 0.5 (even odds on that set) to 5%, keeps 0 and 1, and keeps the order of the forecasts
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    q = prior_shift(p, 0.5, 0.05)
    assert q[2] == pytest.approx(0.05) and q[0] == 0 and q[-1] == 1
    assert np.all(np.diff(q) > 0)
    odds = lambda x: x / (1 - x)  # noqa: E731
    assert odds(q[1]) / odds(p[1]) == pytest.approx(odds(0.05) / odds(0.5))
    np.testing.assert_array_equal(prior_shift(p, 0.05, 0.05), p)
    np.testing.assert_array_equal(prior_shift(p, 0.0, 0.05), p)  # no rate to move from: as is
    np.testing.assert_array_equal(prior_shift(p, 0.5, 1.0), p)  # nor one to move to


def test_prior_shift_restores_calibration():
    # outcomes drawn at true probabilities, oversampled 10x on the positives; the frequencies a model learns
    # there, shifted back, are the true probabilities again
    true = np.array([0.01, 0.05, 0.2])
    seen = true * 10 / (true * 10 + (1 - true))  # frequency of positives in each bin after oversampling
    rate, trained = 0.05, 0.05 * 10 / (0.05 * 10 + 0.95)
    np.testing.assert_allclose(prior_shift(seen, trained, rate), true)


def test_reliability_is_the_binned_calibration_gap():
    from tornado.metrics import reliability

    # two bins: forecasts 0.05 (observed 1 in 10) and 0.85 (observed 8 in 10)
    prob = np.r_[np.full(10, 0.05), np.full(10, 0.85)]
    label = np.r_[np.eye(1, 10, 0)[0], np.ones(8), np.zeros(2)]
    want = (10 * (0.05 - 0.1) ** 2 + 10 * (0.85 - 0.8) ** 2) / 20
    assert reliability(prob, label) == pytest.approx(want)
    assert reliability(np.full(4, 0.25), np.array([1, 0, 0, 0])) == pytest.approx(0)
    assert forecast_scores(prob, label)["reliability"] == pytest.approx(want)
    # a forecast of exactly 1 falls in the top bin, [0.9, 1], with 0.95: (mean 0.975 - observed 0.5)^2
    assert reliability(np.array([0.95, 1.0]), np.array([1, 0])) == pytest.approx((0.975 - 0.5) ** 2)


def test_roc_auc_standard_error_matches_the_spread_of_resampled_test_sets():
    """Hanley-McNeil's SE against the spread of the AUC over many test sets of the same size (exponential
    scores, for which their formula is derived): within 10%."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    pos, neg, theta = 60, 1200, 3.0  # ~5% positives; positives' scores theta times larger: AUC = theta / (1 + theta)
    aucs = []
    for _ in range(3000):
        s = np.r_[rng.exponential(theta, pos), rng.exponential(1.0, neg)]
        r = rankdata(s)[:pos].sum()
        aucs.append((r - pos * (pos + 1) / 2) / (pos * neg))
    auc = theta / (1 + theta)
    assert np.mean(aucs) == pytest.approx(auc, abs=0.005)
    assert roc_auc_se(auc, pos, neg) == pytest.approx(np.std(aucs), rel=0.10)


def _paired_forecasts(rng, pos: int, neg: int, noise_a: float, noise_b: float):
    """Two forecasts of the same cases: a shared signal (what the case is) plus each model's own noise."""
    label = np.r_[np.ones(pos), np.zeros(neg)].astype(int)
    signal = rng.normal(size=pos + neg) + 1.5 * label
    return signal + noise_a * rng.normal(size=pos + neg), signal + noise_b * rng.normal(size=pos + neg), label


def test_delong_difference_and_its_spread_over_resampled_test_sets():
    """The AUC difference DeLong reports is the difference of the two AUCs, and its standard error matches the
    spread of that difference over many test sets of the same size (paired: the same cases for both)."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    a, b, label = _paired_forecasts(rng, 70, 1400, 0.6, 0.9)
    diff, se, p = delong(a, b, label)
    assert diff == pytest.approx(roc_auc(b, label) - roc_auc(a, label), abs=1e-6)  # torchmetrics: float32
    assert diff < 0 and p == pytest.approx(2 * norm.sf(abs(diff) / se))
    runs = np.array([delong(*_paired_forecasts(rng, 70, 1400, 0.6, 0.9))[:2] for _ in range(2000)])
    assert np.mean(runs[:, 1]) == pytest.approx(np.std(runs[:, 0]), rel=0.10)
    # paired: far smaller than two independent standard errors would say
    assert se < 0.6 * math.hypot(roc_auc_se(0.85, 70, 1400), roc_auc_se(0.8, 70, 1400))


def test_delong_p_values_under_no_difference_and_edge_cases():
    rng = np.random.default_rng(2)
    ps = np.array([delong(*_paired_forecasts(rng, 50, 1000, 0.7, 0.7))[2] for _ in range(1000)])
    assert 0.03 <= np.mean(ps < 0.05) <= 0.07                   # as often as 5% says, when there is no difference
    a, b, label = _paired_forecasts(rng, 50, 1000, 0.2, 3.0)
    assert delong(a, b, label)[2] < 1e-6                        # a far worse forecast is told apart
    assert delong(a, a, label) == (0.0, 0.0, 1.0)               # the same forecast: no difference
    assert delong(a, 2 * a + 1, label) == (0.0, 0.0, 1.0)       # the same ranking
    assert all(math.isnan(v) for v in delong(a, b, np.zeros_like(label)))


def test_delong_against_several_forecasts_is_delong_for_each():
    rng = np.random.default_rng(3)
    a, b, label = _paired_forecasts(rng, 40, 800, 0.5, 0.8)
    others = [b, a, 2 * a + 1, np.round(b, 1), rng.normal(size=len(label))]
    assert delong_against(a, others, label) == [delong(a, o, label) for o in others]
    assert delong_against(a, [], label) == []
    assert all(math.isnan(v) for d in delong_against(a, [b, a], np.ones_like(label)) for v in d)


def test_forecast_scores_take_a_roc_auc_known_already():
    rng = np.random.default_rng(4)
    label = (rng.random(500) < 0.1).astype(int)
    prob = np.clip(0.1 + 0.5 * label * rng.random(500) + 0.3 * rng.random(500), 0, 1)
    known = forecast_scores(prob, label, auc=roc_auc(prob, label))
    assert known == forecast_scores(prob, label)
    assert forecast_scores(prob, label, auc=0.75)["roc_auc_se"] == roc_auc_se(0.75, int(label.sum()),
                                                                             int(len(label) - label.sum()))
