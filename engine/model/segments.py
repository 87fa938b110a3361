"""Segments a retention team plans by: risk grade, value tier, lifecycle stage, need group.

Why vectorised functions of a frame: the same code grades one subscriber at the front desk and ten
million at night. Thresholds come from the config so business owners can move them without a release.

Each function returns an object array of labels in which equal labels are one shared `str` (`labels`):
`np.where(...).astype(object)` made a new string per row, ~55 bytes each, ~0.2 GiB for four segment
columns of a million-row run, and every later conversion to Arrow read them one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from engine.config import Lifecycle, RiskGrades, ValueTiers
from engine.data.schema import PREPAID_PLANS

GRADES = ("low", "medium", "high")


def labels(names: Sequence[str], codes: np.ndarray) -> np.ndarray:
    """`names[codes]` as an object array holding one `str` object per name, shared by every row with it."""
    return np.asarray(names, dtype=object)[codes]


def graded(values: np.ndarray, high: float, medium: float) -> np.ndarray:
    """'high' at or above `high`, else 'medium' at or above `medium`, else 'low' (NaN: 'low')."""
    return labels(GRADES, np.where(values >= high, 2, np.where(values >= medium, 1, 0)))


def risk_grade(probability: np.ndarray | pd.Series, grades: RiskGrades) -> np.ndarray:
    """By thresholds, or by capacity (top N high, next M medium) when capacities are configured."""
    p = np.asarray(probability, dtype=float)
    if grades.capacity_high is not None:
        rank = np.empty(len(p), dtype=np.int64)
        rank[np.argsort(-p, kind="stable")] = np.arange(len(p))
        medium = grades.capacity_high + (grades.capacity_medium or 0)
        return labels(GRADES, np.where(rank < grades.capacity_high, 2, np.where(rank < medium, 1, 0)))
    return graded(p, grades.high, grades.medium)


def value_tier(arpu_mean: np.ndarray | pd.Series, tiers: ValueTiers) -> np.ndarray:
    a = np.asarray(arpu_mean, dtype=float)
    return graded(a, tiers.high, tiers.medium)


def lifecycle_stage(tenure: pd.Series, data_change: pd.Series, voice_change: pd.Series, cfg: Lifecycle) -> np.ndarray:
    """new by tenure; decline when data or voice fell more than the configured share; else growth/mature."""
    t = np.asarray(tenure, dtype=float)
    falling = (np.minimum(np.asarray(data_change, dtype=float), np.asarray(voice_change, dtype=float))
               <= -cfg.decline_usage_drop)
    return labels(("new", "decline", "growth", "mature"),
                  np.select([t < cfg.new_months, falling, t < cfg.growth_months], [0, 1, 2], default=3))


def need_group(plan: pd.Series, age_group: pd.Series) -> np.ndarray:
    """business and family plans first (they decide the offer type), then age-driven needs."""
    plan_a, age = np.asarray(plan, dtype=object), np.asarray(age_group, dtype=object)
    return labels(("business", "family", "elderly", "young", "general"),
                  np.select([plan_a == "business", plan_a == "family_share", age == "65+", age == "18-24"],
                            [0, 1, 2, 3], default=4))


def is_prepaid(plan: pd.Series) -> np.ndarray:
    return np.isin(np.asarray(plan, dtype=object), PREPAID_PLANS)
