"""Segments a retention team plans by: risk grade, value tier, lifecycle stage, need group.

Why vectorised functions of a frame: the same code grades one subscriber at the front desk and ten
million at night. Thresholds come from the config so business owners can move them without a release.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.config import Lifecycle, RiskGrades, ValueTiers
from engine.data.schema import PREPAID_PLANS


def risk_grade(probability: np.ndarray | pd.Series, grades: RiskGrades) -> np.ndarray:
    """By thresholds, or by capacity (top N high, next M medium) when capacities are configured."""
    p = np.asarray(probability, dtype=float)
    if grades.capacity_high is not None:
        rank = np.empty(len(p), dtype=np.int64)
        rank[np.argsort(-p, kind="stable")] = np.arange(len(p))
        medium = grades.capacity_high + (grades.capacity_medium or 0)
        return np.where(rank < grades.capacity_high, "high", np.where(rank < medium, "medium", "low")).astype(object)
    return np.where(p >= grades.high, "high", np.where(p >= grades.medium, "medium", "low")).astype(object)


def value_tier(arpu_mean: np.ndarray | pd.Series, tiers: ValueTiers) -> np.ndarray:
    a = np.asarray(arpu_mean, dtype=float)
    return np.where(a >= tiers.high, "high", np.where(a >= tiers.medium, "medium", "low")).astype(object)


def lifecycle_stage(tenure: pd.Series, data_change: pd.Series, voice_change: pd.Series, cfg: Lifecycle) -> np.ndarray:
    """new by tenure; decline when data or voice fell more than the configured share; else growth/mature."""
    t = np.asarray(tenure, dtype=float)
    falling = (np.minimum(np.asarray(data_change, dtype=float), np.asarray(voice_change, dtype=float))
               <= -cfg.decline_usage_drop)
    return np.select([t < cfg.new_months, falling, t < cfg.growth_months], ["new", "decline", "growth"],
                     default="mature").astype(object)


def need_group(plan: pd.Series, age_group: pd.Series) -> np.ndarray:
    """business and family plans first (they decide the offer type), then age-driven needs."""
    plan_a, age = np.asarray(plan, dtype=object), np.asarray(age_group, dtype=object)
    return np.select([plan_a == "business", plan_a == "family_share", age == "65+", age == "18-24"],
                     ["business", "family", "elderly", "young"], default="general").astype(object)


def is_prepaid(plan: pd.Series) -> np.ndarray:
    return np.isin(np.asarray(plan, dtype=object), PREPAID_PLANS)
