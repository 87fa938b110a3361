"""Churn reasons from the model's own attributions, and the words for them.

Why attributions and not rules of thumb: the model already weighs every signal for this subscriber;
summing its SHAP values per reason family (price, network, ...) says which family pushed the churn
probability up most. The family map is configuration (`reasons:` in the config) and is frozen into the
model at training time, so a model version always explains itself with the map it was trained with.

Part of the portable model code (see `__init__`): numpy and pandas only. `NO_REASON` repeats
`engine.vocabulary.NO_REASON` because this code runs without `engine`; a test keeps them equal.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .features import frame_from_arrays

NO_REASON = "none"

#: How a signal reads in a work order. `{v}` is the subscriber's value of the feature.
SIGNAL_TEXT: dict[str, str] = {
    "arpu_change": "ARPU changed {pct} in 2 months",
    "arpu_m0": "ARPU {v:.0f} this month",
    "arpu_mean_3m": "3-month ARPU {v:.0f}",
    "out_of_package_share": "{v:.0%} of the bill is out-of-package fees",
    "complaints_3m": "{v:.0f} complaint(s) in 3 months",
    "satisfaction_score": "satisfaction {v:.0f}/10",
    "service_call_minutes": "{v:.0f} min of service calls",
    "data_change": "data usage changed {pct} month on month",
    "voice_change": "voice usage changed {pct} month on month",
    "days_inactive": "{v:.0f} days inactive",
    "competitor_contact": "contacted a competitor",
    "balance": "balance {v:.2f}",
    "topup_count": "{v:.0f} top-ups this month",
    "topup_avg_amount": "average top-up {v:.2f}",
    "contract_months_left": "contract ends in {v:.0f} month(s)",
}


def family_matrix(feature_names: list[str], families: Mapping[str, list[str]]) -> tuple[list[str], np.ndarray]:
    """A (features x families) 0/1 matrix so per-family sums are one matrix product."""
    names = list(families)
    mat = np.zeros((len(feature_names), len(names)), dtype=np.float64)
    for j, fam in enumerate(names):
        for feat in families[fam]:
            if feat in feature_names:
                mat[feature_names.index(feat), j] = 1.0
    return names, mat


def reasons_from_shap(shap: np.ndarray, feature_names: list[str],
                      families: Mapping[str, list[str]]) -> pd.DataFrame:
    """Top reason family per row, its share of the positive family contributions, and its top signal.

    Only families that push churn *up* (positive sum) can be a reason; a subscriber whose churn risk
    comes from nothing actionable gets reason 'none'.
    """
    names, mat = family_matrix(feature_names, families)
    n = shap.shape[0]
    if not names or n == 0:
        return pd.DataFrame({"reason": [NO_REASON] * n, "reason_share": np.zeros(n), "reason_signal": [""] * n})
    fam = shap @ mat
    positive = np.clip(fam, 0, None)
    total = positive.sum(axis=1)
    top = positive.argmax(axis=1)
    top_value = positive[np.arange(n), top]
    has = top_value > 0
    reason = np.where(has, np.asarray(names, dtype=object)[top], NO_REASON)
    share = np.where(total > 0, top_value / np.where(total > 0, total, 1.0), 0.0)
    # the single feature inside the winning family that pushed hardest
    member = mat[:, top].T.astype(bool)  # rows x features
    masked = np.where(member, shap, -np.inf)
    best = masked.argmax(axis=1)
    signal = np.where(has, np.asarray(feature_names, dtype=object)[best], "")
    return frame_from_arrays({"reason": reason, "reason_share": share.round(4), "reason_signal": signal})


def _pct(v: float) -> str:
    return f"{v:+.0%}"


def signal_text(feature: str, value: object) -> str:
    """One signal in words, e.g. 'data usage changed -45% month on month'."""
    if not feature:
        return ""
    template = SIGNAL_TEXT.get(feature)
    if template is None:
        return f"{feature} = {value}"
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{feature} = {value}"
    if np.isnan(v):
        return f"{feature} unknown"
    return template.format(v=v, pct=_pct(v))


def reason_words(reason: pd.Series, signal: pd.Series, frame: pd.DataFrame, labels: Mapping[str, str]) -> pd.Series:
    """'competitor offer: contacted a competitor' for each row; computed only for rows that get an order."""
    out = []
    for r, s, idx in zip(reason.to_numpy(), signal.to_numpy(), reason.index, strict=True):
        if r == NO_REASON or not s:
            out.append("no dominant churn reason")
            continue
        value = frame.at[idx, s] if s in frame.columns else None
        out.append(f"{labels.get(r, r)}: {signal_text(s, value)}")
    return pd.Series(out, index=reason.index, dtype=object)
