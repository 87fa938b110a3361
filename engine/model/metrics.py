"""How good a churn probability is: the numbers training reports on its hold-out and monitoring re-measures.

Why one module: the hold-out AUC logged at training is the yardstick a drift check compares a labelled
month with, and a decay alarm is only meaningful if both sides are the same computation (same clipping,
same calibration bins). Training (`training.evaluation`) and monitoring (`engine.monitoring.drift`) both
call `probability_metrics`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Probabilities are clipped to [EPS, 1 - EPS] so log loss stays finite on a confident miss.
EPS = 1e-7
CALIBRATION_BINS = 10


def clip_probabilities(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Observed churn rate vs mean predicted probability per equal-width probability bin (empty bins left out)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "rows": int(mask.sum()),
                         "predicted": float(p[mask].mean()), "observed": float(y[mask].mean())})
    return rows


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |observed rate - mean predicted probability| over equal-width bins, weighted by bin size."""
    n = len(np.asarray(y))
    if n == 0:
        return float("nan")
    return float(sum(r["rows"] * abs(r["observed"] - r["predicted"]) for r in calibration_table(y, p, bins)) / n)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (NaN when only one class is present: ranking is undefined then)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision): what ranking is worth at a 15-30% churn rate."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.asarray(y, dtype=int), p))


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of a ROC AUC: how far a sample's AUC moves by chance."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / max(n_pos * n_neg, 1)
    return float(np.sqrt(max(var, 0.0)))


def probability_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, log loss, Brier score and expected calibration error of probabilities `p` for 0/1 `y`.

    `y` must hold both classes (callers check: with one class there is nothing to rank).
    """
    from sklearn.metrics import brier_score_loss, log_loss

    y = np.asarray(y, dtype=int)
    p = clip_probabilities(p)
    return {"roc_auc": roc_auc(y, p), "pr_auc": pr_auc(y, p),
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "brier": float(brier_score_loss(y, p)),
            "ece": expected_calibration_error(y, p)}
