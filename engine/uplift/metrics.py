"""How well a score ranks subscribers by the effect of treating them: Qini, AUUC, uplift at k.

Inputs everywhere: `y` the good outcome (1 = stayed, i.e. 1 - churned, so a helpful offer has positive
uplift), `treated` (1 treated, 0 control) and `score` (predicted uplift, higher = treat first). Curves are
cumulative over subscribers sorted by score, highest first, with tied scores taken together.

- **Qini curve** (Radcliffe 2007): Q(n) = Y_t(n) - Y_c(n) x N_t(n) / N_c(n), the extra good outcomes among
  the top n if the treated ones were compared with the control ones scaled to the same size.
- **Uplift curve**: U(n) = (Y_t(n) / N_t(n) - Y_c(n) / N_c(n)) x n.
- **Qini coefficient**: (area under the model's Qini curve - area under the random line) / (same for the
  perfect ranking - random line). 1 is the best possible ranking of these outcomes, 0 no better than
  random, below 0 worse (the normalised "Qini AUC" of scikit-uplift's `qini_auc_score`).
- **AUUC**: area under the uplift curve - area under its random line, divided by n^2: the average gain over
  random targeting per subscriber, across every targeting depth (0 for a random score).
- **uplift@k**: treated rate - control rate of the good outcome among the top k share by score.
"""

from __future__ import annotations

import numpy as np


def _arrays(y, treated, score):
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated, dtype=float)
    s = np.asarray(score, dtype=float)
    if not (len(y) == len(t) == len(s)):
        raise ValueError("y, treated and score must have the same length")
    return y, t, s


def _cumulative(y, t, s):
    order = np.argsort(-s, kind="mergesort")
    y, t, s = y[order], t[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # tied scores count together
    n = (last + 1).astype(float)
    n_t = np.cumsum(t)[last]
    y_t = np.cumsum(y * t)[last]
    y_c = np.cumsum(y * (1 - t))[last]
    return n, n_t, n - n_t, y_t, y_c


def qini_curve(y, treated, score) -> tuple[np.ndarray, np.ndarray]:
    """(subscribers targeted, Qini value) from (0, 0)."""
    y, t, s = _arrays(y, treated, score)
    n, n_t, n_c, y_t, y_c = _cumulative(y, t, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(n_c > 0, y_t - y_c * n_t / np.where(n_c > 0, n_c, 1), y_t)
    return np.r_[0.0, n], np.r_[0.0, q]


def uplift_curve(y, treated, score) -> tuple[np.ndarray, np.ndarray]:
    """(subscribers targeted, uplift x subscribers) from (0, 0)."""
    y, t, s = _arrays(y, treated, score)
    n, n_t, n_c, y_t, y_c = _cumulative(y, t, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_t = np.where(n_t > 0, y_t / np.where(n_t > 0, n_t, 1), 0.0)
        rate_c = np.where(n_c > 0, y_c / np.where(n_c > 0, n_c, 1), 0.0)
    return np.r_[0.0, n], np.r_[0.0, (rate_t - rate_c) * n]


def _area(x, q) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (q[1:] + q[:-1]) / 2))


def qini_coefficient(y, treated, score) -> float:
    """Normalised Qini (see the module docs): 1 perfect, 0 random. NaN without both arms."""
    y, t, _ = _arrays(y, treated, score)
    if t.sum() == 0 or t.sum() == len(t):
        return float("nan")
    x, q = qini_curve(y, t, score)
    random_area = x[-1] * q[-1] / 2
    xp, qp = qini_curve(y, t, y * t - y * (1 - t))  # perfect: treated stayers first, control stayers last
    denom = _area(xp, qp) - random_area
    return float((_area(x, q) - random_area) / denom) if denom != 0 else float("nan")


def auuc(y, treated, score) -> float:
    """Area between the uplift curve and its random line, per subscriber squared (0 for random)."""
    y, t, _ = _arrays(y, treated, score)
    if t.sum() == 0 or t.sum() == len(t):
        return float("nan")
    x, u = uplift_curve(y, t, score)
    return float((_area(x, u) - x[-1] * u[-1] / 2) / x[-1] ** 2)


def uplift_at_k(y, treated, score, k: float = 0.3) -> float:
    """Treated minus control rate of `y` among the top `k` share by score (NaN if an arm is empty there)."""
    y, t, s = _arrays(y, treated, score)
    if not 0 < k <= 1:
        raise ValueError("k must be in (0, 1]")
    top = np.argsort(-s, kind="mergesort")[: max(1, int(np.ceil(k * len(s))))]
    yt, tt = y[top], t[top]
    if tt.sum() == 0 or tt.sum() == len(tt):
        return float("nan")
    return float(yt[tt == 1].mean() - yt[tt == 0].mean())


def uplift_metrics(y, treated, score, ks: tuple[float, ...] = (0.1, 0.3)) -> dict[str, float]:
    """qini, auuc and uplift_at_<k%> in one dict (plus n, treated, control)."""
    y, t, s = _arrays(y, treated, score)
    out = {"n": float(len(y)), "treated": float(t.sum()), "control": float(len(t) - t.sum()),
           "qini": qini_coefficient(y, t, s), "auuc": auuc(y, t, s)}
    for k in ks:
        out[f"uplift_at_{int(round(k * 100))}"] = uplift_at_k(y, t, s, k)
    return out
