"""Verification scores for a rare-event forecast: what forecasters read beside plain accuracy."""
from __future__ import annotations

import math

import numpy as np


# what forecast_scores returns, in order; VAL_SCORES: those also kept for the validation split (prefixed val_)
SCORES = ["n", "positives", "climatology", "accuracy", "roc_auc", "roc_auc_se", "average_precision", "csi_050",
          "pod_050", "far_050", "threshold", "csi", "pod", "far", "best_threshold", "csi_best", "pod_best", "far_best",
          "brier", "bss", "reliability"]
VAL_SCORES = [f"val_{k}" for k in SCORES if k not in ("climatology", "threshold", "csi", "pod", "far")]
LOWER_IS_BETTER = {"brier", "far_050", "far", "far_best", "reliability", "roc_auc_se", "val_brier", "val_far_050",
                   "val_far_best", "val_reliability", "val_roc_auc_se"}
RELIABILITY_BINS = 10


def contingency(prob: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, float]:
    """CSI, POD and FAR of "yes" at or above `threshold` (NaN where a ratio has nothing to count)."""
    yes = prob >= threshold
    hits = float(np.sum(yes & (label == 1)))
    false_alarms = float(np.sum(yes & (label == 0)))
    misses = float(np.sum(~yes & (label == 1)))
    return _scores(hits, false_alarms, misses)


def _scores(hits: float, false_alarms: float, misses: float) -> dict[str, float]:
    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    return {
        "csi": ratio(hits, hits + false_alarms + misses),
        "pod": ratio(hits, hits + misses),
        "far": ratio(false_alarms, hits + false_alarms),
    }


def counts_at_thresholds(prob: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct forecast value, highest first, as a threshold ("yes" at or above it; ties share one),
    with the hits and false alarms it gives."""
    order = np.argsort(-np.asarray(prob), kind="stable")
    p, y = np.asarray(prob)[order], np.asarray(label)[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    return p[last], np.cumsum(y)[last], np.cumsum(1 - y)[last]


def best_csi_threshold(prob: np.ndarray, label: np.ndarray) -> tuple[float, dict[str, float]]:
    """The probability threshold that maximises CSI, scanning every distinct forecast value."""
    cut, h, f = counts_at_thresholds(prob, label)
    m = float(np.sum(label)) - h
    with np.errstate(invalid="ignore", divide="ignore"):
        csi = np.where(h + f + m > 0, h / (h + f + m), 0.0)
    k = int(np.argmax(csi))
    return float(cut[k]), _scores(float(h[k]), float(f[k]), float(m[k]))


def prior_shift(prob: np.ndarray, trained_rate: float, rate: float) -> np.ndarray:
    """Probabilities from a model trained at base rate `trained_rate` (positives oversampled), moved to base
    rate `rate` by Bayes' rule (the odds scale by the ratio of the priors' odds). Ranks are unchanged."""
    prob = np.asarray(prob, dtype=np.float64)
    if not (0 < trained_rate < 1 and 0 < rate < 1):
        return prob
    a = prob * (rate / trained_rate)
    b = (1 - prob) * ((1 - rate) / (1 - trained_rate))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(a + b > 0, a / (a + b), prob)


def roc_auc(prob: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve; NaN where the labels hold one class only."""
    label = np.asarray(label).astype(np.int64)
    if not 0 < label.sum() < len(label):
        return math.nan
    import torch
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(torch.from_numpy(np.asarray(prob, dtype=np.float64)), torch.from_numpy(label)))


def roc_auc_se(auc: float, positives: int, negatives: int) -> float:
    """Standard error of a ROC AUC from `positives` and `negatives` cases (Hanley and McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc ** 2) + (negatives - 1) * (q2 - auc ** 2))
    return math.sqrt(max(var, 0.0) / (positives * negatives)) if positives > 0 and negatives > 0 else math.nan


def delong(prob_a: np.ndarray, prob_b: np.ndarray, label: np.ndarray) -> tuple[float, float, float]:
    """ROC AUC of `prob_b` less that of `prob_a`, forecasts of the same cases, its standard error and the
    two-sided p-value of that difference (DeLong, DeLong and Clarke-Pearson 1988, in Sun and Xu's 2014 form):
    the test accounts for both being scored on the same cases, so it finds smaller differences than two
    separate standard errors would. NaN where the labels hold one class; p = 1 where the two forecasts rank
    every case alike."""
    return delong_against(prob_a, [prob_b], label)[0]


def delong_against(prob_a: np.ndarray, probs: list[np.ndarray], label: np.ndarray) -> list[tuple[float, float, float]]:
    """`delong(prob_a, prob_b, label)` for every `prob_b` of `probs`, `prob_a` ranked once."""
    from scipy.stats import norm

    label = np.asarray(label).astype(bool)
    m, n = int(label.sum()), int((~label).sum())
    if m == 0 or n == 0:
        return [(math.nan, math.nan, math.nan) for _ in probs]
    a = _placements(prob_a, label, m, n)
    out = []
    for prob_b in probs:
        aucs, v_pos, v_neg = zip(a, _placements(prob_b, label, m, n))
        cov = (np.cov(v_pos) / m if m > 1 else 0) + (np.cov(v_neg) / n if n > 1 else 0)
        var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) if np.ndim(cov) == 2 else 0.0
        diff = float(aucs[1] - aucs[0])
        if var <= 1e-15:
            out.append((diff, 0.0, 1.0 if abs(diff) < 1e-12 else 0.0))
        else:
            out.append((diff, math.sqrt(var), float(2 * norm.sf(abs(diff) / math.sqrt(var)))))
    return out


def _placements(prob: np.ndarray, label: np.ndarray, m: int, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """A forecast's ROC AUC (`label`: boolean, `m` positives, `n` negatives) and DeLong's placements: for each
    positive the share of negatives ranked below it, for each negative the share of positives ranked above it."""
    from scipy.stats import rankdata

    prob = np.asarray(prob, dtype=np.float64)
    everyone, pos, neg = rankdata(prob), rankdata(prob[label]), rankdata(prob[~label])
    auc = (everyone[label].sum() - m * (m + 1) / 2) / (m * n)
    return auc, (everyone[label] - pos) / n, 1 - (everyone[~label] - neg) / m


def forecast_scores(prob: np.ndarray, label: np.ndarray, climatology: float | None = None,
                    threshold: float | None = None, auc: float | None = None) -> dict[str, float]:
    """Accuracy, ROC AUC and its standard error, average precision, CSI/POD/FAR at 0.5, at `threshold` (chosen
    elsewhere: on the validation split) and at the best-CSI threshold of these very forecasts (an upper bound,
    optimistic), Brier score and Brier skill score against climatology (the training base rate if given).
    `auc`: the ROC AUC of these forecasts where it is known already (`roc_auc`)."""
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label).astype(np.int64)
    base = float(label.mean()) if climatology is None else float(climatology)
    out: dict[str, float] = {"n": len(label), "positives": int(label.sum()), "climatology": base}
    out["accuracy"] = float(np.mean((prob >= 0.5) == (label == 1)))
    out["roc_auc"] = roc_auc(prob, label) if auc is None else auc
    out["roc_auc_se"] = roc_auc_se(out["roc_auc"], int(label.sum()), int(len(label) - label.sum()))
    if 0 < label.sum() < len(label):
        import torch  # here: the report reads SCORES without loading torch
        from torchmetrics.functional.classification import binary_average_precision

        out["average_precision"] = float(binary_average_precision(torch.from_numpy(prob), torch.from_numpy(label)))
    else:
        out["average_precision"] = math.nan
    for k, v in contingency(prob, label, 0.5).items():
        out[f"{k}_050"] = v
    out["threshold"] = math.nan if threshold is None else float(threshold)
    for k, v in (contingency(prob, label, threshold) if threshold is not None else
                 dict.fromkeys(("csi", "pod", "far"), math.nan)).items():
        out[k] = v
    best_at, best = best_csi_threshold(prob, label)
    out["best_threshold"] = best_at
    for k, v in best.items():
        out[f"{k}_best"] = v
    out["brier"] = float(np.mean((prob - label) ** 2))
    ref = float(np.mean((base - label) ** 2))
    out["bss"] = 1 - out["brier"] / ref if ref > 0 else math.nan
    out["reliability"] = reliability(prob, label)
    return out


def reliability(prob: np.ndarray, label: np.ndarray, bins: int = RELIABILITY_BINS) -> float:
    """The reliability term of the Brier score's decomposition (Murphy 1973): the mean squared gap between
    the forecast probability and the observed frequency, over equal-width probability bins (0 = calibrated)."""
    prob, label = np.asarray(prob, dtype=np.float64), np.asarray(label, dtype=np.float64)
    if len(prob) == 0:
        return math.nan
    k = np.clip((prob * bins).astype(np.int64), 0, bins - 1)
    n = np.bincount(k, minlength=bins)
    f = np.bincount(k, weights=prob, minlength=bins)
    o = np.bincount(k, weights=label, minlength=bins)
    used = n > 0
    return float(np.sum((f[used] - o[used]) ** 2 / n[used]) / len(prob))
