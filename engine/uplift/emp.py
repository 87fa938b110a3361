"""Expected maximum profit (EMP) of a churn model, and the contact share it implies (Verbraken, Verbeke and
Baesens, "A novel profit maximizing metric for measuring classification performance of customer churn
prediction models", IEEE TKDE 25(5), 2013).

A retention campaign contacts the top share of subscribers by churn score. Each contact costs f; a
contacted would-be churner accepts the incentive (cost d) with probability gamma and is kept (worth CLV);
a contacted stayer takes the incentive anyway (cost d). With pi0 the churn rate, pi1 = 1 - pi0 and
F0, F1 the shares of churners and stayers contacted at a cut-off (true and false positive rates):

    profit(t; gamma) = CLV x [(gamma (1 - delta) - phi) pi0 F0(t) - (delta + phi) pi1 F1(t)]

with delta = d / CLV and phi = f / CLV. The acceptance rate gamma is uncertain, gamma ~ Beta(alpha, beta).
For each gamma the best cut-off is a vertex of the ROC convex hull; vertex i stays optimal for gamma in
[gamma_i, gamma_{i+1}], where moving from vertex i-1 to i pays once

    gamma > gamma_i = ((delta + phi) pi1 dF1 / (pi0 dF0) + phi) / (1 - delta).

EMP = E_gamma[max_t profit(t; gamma)] = sum over hull vertices of the profit integrated over its gamma range
(closed form with regularised incomplete beta functions), per subscriber. The implied contact share is
E_gamma[pi0 F0 + pi1 F1] at the optimal vertex: the share of subscribers worth contacting. Defaults are
the paper's (CLV 200, d 10, f 1, alpha 6, beta 14); `engine` passes the operator's figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import betainc


@dataclass
class EMPResult:
    emp: float  # expected maximum profit per subscriber (currency)
    contact_share: float  # expected share of subscribers contacted at the optimum
    threshold: float  # the score whose top share is `contact_share` (contact scores >= it)
    churn_rate: float


def roc_convex_hull(y, score) -> tuple[np.ndarray, np.ndarray]:
    """(F0, F1): true and false positive rates of the ROC curve's upper convex hull, from (0, 0) to (1, 1)."""
    y = np.asarray(y, dtype=float)
    s = np.asarray(score, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.r_[0.0, np.cumsum(y)[last]]
    fp = np.r_[0.0, np.cumsum(1 - y)[last]]
    f0, f1 = tp / max(tp[-1], 1e-300), fp / max(fp[-1], 1e-300)
    hull: list[int] = []
    for i in range(len(f0)):  # Andrew's monotone chain, upper hull over (F1, F0)
        while len(hull) >= 2:
            j, k = hull[-2], hull[-1]
            cross = (f1[k] - f1[j]) * (f0[i] - f0[j]) - (f0[k] - f0[j]) * (f1[i] - f1[j])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return f0[hull], f1[hull]


def emp(y, score, *, clv: float = 200.0, incentive: float = 10.0, contact: float = 1.0,
        alpha: float = 6.0, beta: float = 14.0) -> EMPResult:
    """EMP of churn scores `score` for labels `y` (1 = churned), per subscriber, with its contact share."""
    y = np.asarray(y, dtype=float)
    s = np.asarray(score, dtype=float)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("EMP needs both churners and stayers")
    if clv <= 0:
        raise ValueError("clv must be positive")
    pi0 = float(y.mean())
    pi1 = 1 - pi0
    delta, phi = incentive / clv, contact / clv
    f0, f1 = roc_convex_hull(y, s)
    d0, d1 = np.diff(f0), np.diff(f1)
    with np.errstate(divide="ignore"):
        g = ((delta + phi) * pi1 * d1 / np.where(d0 > 0, pi0 * d0, 0.0) + phi) / (1 - delta)
    g = np.where(d0 > 0, g, np.inf)
    bounds = np.clip(np.r_[0.0, g, 1.0], 0.0, 1.0)  # vertex i optimal on [bounds[i], bounds[i+1]]
    bounds = np.maximum.accumulate(bounds)
    lo, hi = bounds[:-1], bounds[1:]
    prob = betainc(alpha, beta, hi) - betainc(alpha, beta, lo)
    mean_g = alpha / (alpha + beta) * (betainc(alpha + 1, beta, hi) - betainc(alpha + 1, beta, lo))
    profit = clv * (((1 - delta) * mean_g - phi * prob) * pi0 * f0 - (delta + phi) * pi1 * f1 * prob)
    share = float(np.sum(prob * (pi0 * f0 + pi1 * f1)))
    ranked = np.sort(s)[::-1]
    k = int(round(share * len(s)))
    threshold = float(ranked[k - 1]) if k > 0 else float("inf")
    return EMPResult(emp=float(profit.sum()), contact_share=share, threshold=threshold, churn_rate=pi0)


@dataclass
class ChurnModelEMP:
    result: EMPResult
    clv: float
    incentive: float
    contact: float
    rows: int


def churn_model_emp(settings, loaded, frame, *, target: str = "churn", clv: float | None = None,
                    incentive: float | None = None, contact: float | None = None, offer_costs=None,
                    alpha: float = 6.0, beta: float = 14.0) -> ChurnModelEMP:
    """EMP of a churn model (anything with `predict_proba(frame)`) on labelled rows, with the operator's figures.

    Defaults: CLV = mean monthly ARPU (arpu_m0) x the arbitration horizon; incentive = median of `offer_costs`
    (the policy set's offer costs; the CLI passes them) or the paper's 10; contact = median channel cost of the
    configured channels.
    """
    import pandas as pd

    from engine.errors import DataError

    if target not in frame.columns:
        raise DataError(f"the table has no '{target}' column: EMP needs labelled rows",
                        hint="pass a labelled table (e.g. a simulated month from retain data generate)")
    y = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=float)
    if np.isnan(y).any():
        raise DataError(f"column '{target}' has missing or non-numeric labels")
    if clv is None:
        arpu = frame["arpu_m0"] if "arpu_m0" in frame.columns else None
        if arpu is None:
            raise DataError("no arpu_m0 column to derive the customer lifetime value from", hint="pass --clv")
        clv = float(pd.to_numeric(arpu, errors="coerce").mean()) * settings.arbitration.horizon_months
    if incentive is None:
        incentive = float(np.median(list(offer_costs))) if offer_costs else 10.0
    if contact is None:
        costs = [c.cost for c in settings.channels.values()]
        contact = float(np.median(costs)) if costs else 0.0
    result = emp(y, loaded.predict_proba(frame), clv=clv, incentive=incentive, contact=contact, alpha=alpha, beta=beta)
    return ChurnModelEMP(result=result, clv=clv, incentive=incentive, contact=contact, rows=len(frame))
