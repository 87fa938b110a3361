"""Hold-out evaluation: the metrics and plots a reviewer expects before trusting a churn model.

Why these: ROC AUC ranks, PR AUC matters at 15-30% churn, log loss and Brier judge the probabilities
that arbitration multiplies by money, and top-decile lift/capture is what a call centre with limited
capacity actually gets.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

from engine.model.metrics import (  # noqa: E402
    clip_probabilities,
    expected_calibration_error,
    probability_metrics,
    roc_auc,
)

__all__ = ["expected_calibration_error", "figures", "holdout_metrics", "shap_summary", "top_decile"]


def top_decile(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(lift, capture rate) among the 10% highest-scored subscribers."""
    k = max(1, int(np.ceil(0.1 * len(p))))
    top = np.argsort(-p, kind="stable")[:k]
    rate = y[top].mean()
    base = y.mean()
    return float(rate / base if base > 0 else 0.0), float(y[top].sum() / max(1, y.sum()))


def holdout_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC/PR AUC, log loss, Brier, ECE (`engine.model.metrics`, as monitoring measures them), top-decile
    lift and capture, and the confusion matrix at `threshold`."""
    y = np.asarray(y, dtype=int)
    p = clip_probabilities(p)
    lift, capture = top_decile(y, p)
    tn, fp, fn, tp = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel()
    return {
        **probability_metrics(y, p),
        "top_decile_lift": lift,
        "top_decile_capture": capture,
        "accuracy": float((tp + tn) / len(y)),
        "tp": float(tp), "fp": float(fp), "tn": float(tn), "fn": float(fn),
    }


def figures(y: np.ndarray, p: np.ndarray, importance: pd.Series) -> dict[str, plt.Figure]:
    """ROC, PR, gains/lift, calibration and feature-importance figures keyed by artefact file name."""
    y = np.asarray(y, dtype=int)
    out: dict[str, plt.Figure] = {}

    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"AUC {roc_auc(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (hold-out)")
    ax.legend(loc="lower right")
    out["plots/roc.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    prec, rec, _ = precision_recall_curve(y, p)
    ax.plot(rec, prec, label=f"AP {average_precision_score(y, p):.3f}")
    ax.axhline(y.mean(), ls="--", color="grey", label=f"base rate {y.mean():.2f}")
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall (hold-out)")
    ax.legend(loc="upper right")
    out["plots/pr.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    order = np.argsort(-p, kind="stable")
    captured = np.cumsum(y[order]) / max(1, y.sum())
    share = np.arange(1, len(y) + 1) / len(y)
    ax.plot(share, captured, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(xlabel="Share of subscribers contacted (by score)", ylabel="Share of churners captured",
           title="Cumulative gains")
    ax.legend(loc="lower right")
    out["plots/gains.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    ax.plot(mean_pred, frac_pos, "o-", label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.set(xlabel="Predicted churn probability", ylabel="Observed churn rate", title="Calibration (hold-out)")
    ax.legend(loc="upper left")
    out["plots/calibration.png"] = fig

    fig, ax = plt.subplots(figsize=(6, max(3, 0.28 * len(importance))))
    importance.sort_values().plot.barh(ax=ax)
    ax.set(title="Feature importance (CatBoost)", xlabel="importance")
    fig.tight_layout()
    out["plots/feature_importance.png"] = fig
    return out


def shap_summary(shap: np.ndarray, features: pd.DataFrame, top: int = 15) -> plt.Figure:
    """SHAP summary (beeswarm): each dot a subscriber, x its attribution, colour its feature value."""
    order = np.argsort(-np.abs(shap).mean(axis=0))[:top][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(order) + 1.5))
    rng = np.random.default_rng(0)
    for y, j in enumerate(order):
        col = features.iloc[:, j]
        if pd.api.types.is_numeric_dtype(col):
            v = col.to_numpy(dtype=float)
            lo, hi = np.nanpercentile(v, [5, 95]) if np.isfinite(v).any() else (0, 1)
            colour = np.clip((v - lo) / (hi - lo if hi > lo else 1), 0, 1)
        else:
            codes = pd.factorize(col)[0].astype(float)
            colour = codes / max(codes.max(), 1)
        ax.scatter(shap[:, j], y + rng.uniform(-0.3, 0.3, len(shap)), c=colour, cmap="coolwarm", s=4, alpha=0.6,
                   vmin=0, vmax=1, rasterized=True)
    ax.set_yticks(range(len(order)), [features.columns[j] for j in order])
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel="SHAP value (impact on churn log-odds)", title="SHAP summary (hold-out; colour = feature value)")
    fig.tight_layout()
    return fig
