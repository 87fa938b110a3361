"""Synthetic decision frames: every attribute of DECISION_ATTRIBUTES, built with numpy, no model needed.

For benchmarks and tests of the policy engine. The engine outputs (churn probability, reason, segments)
are drawn directly instead of coming from a model, with shares a retention team would recognise:
mostly low risk, a third of the rest with a price or network reason, ~5% lapsed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from engine.data.schema import AGE_GROUPS, CHANNELS, PLANS, PREPAID_PLANS
from engine.model.segments import need_group
from engine.vocabulary import LIFECYCLE_STAGES, REASON_VALUES

REGIONS = ("north", "south", "east", "west", "central")


def _change(now: np.ndarray, before: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(before > 0, now / np.where(before > 0, before, 1.0) - 1.0, np.where(now > 0, 1.0, 0.0))
    return np.clip(out, -1.0, 10.0)


def synthetic_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` subscribers with every decision attribute, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(np.array(PLANS, dtype=object), n, p=[0.22, 0.13, 0.32, 0.12, 0.13, 0.08])
    prepaid = np.isin(plan, PREPAID_PLANS)
    tenure = np.minimum(rng.gamma(1.6, 18, n).astype(np.int64), 600)
    contract = np.where(prepaid, np.nan, rng.integers(0, 25, n).astype(float))
    arpu0 = np.round(rng.lognormal(3.8, 0.55, n), 2)
    arpu1 = np.round(arpu0 * rng.lognormal(0, 0.12, n), 2)
    arpu2 = np.round(arpu1 * rng.lognormal(0, 0.12, n), 2)
    data1 = np.round(rng.lognormal(1.5, 0.8, n), 2)
    data0 = np.round(data1 * rng.lognormal(-0.05, 0.35, n), 2)
    voice1 = np.round(rng.lognormal(5.3, 0.7, n), 1)
    voice0 = np.round(voice1 * rng.lognormal(-0.03, 0.3, n), 1)
    balance = np.where(prepaid, np.round(rng.normal(15, 12, n), 2),
                       np.where(rng.random(n) < 0.1, -np.round(rng.gamma(2, 30, n), 2), 0.0))
    topups = np.where(prepaid, rng.poisson(2.5, n), 0)
    lapsed = rng.random(n) < 0.05
    days_inactive = np.where(lapsed, rng.integers(60, 240, n), np.where(rng.random(n) < 0.3, rng.integers(0, 30, n), 0))
    prob = np.round(rng.beta(1.4, 4.5, n), 4)
    grade = np.where(prob >= 0.5, "high", np.where(prob >= 0.25, "medium", "low")).astype(object)
    reasons = np.array(REASON_VALUES, dtype=object)
    weights = np.array([0.2, 0.18, 0.15, 0.14, 0.16, 0.09, 0.08])
    reason = rng.choice(reasons, n, p=weights / weights.sum())
    reason = np.where((grade == "low") & (rng.random(n) < 0.5), "none", reason).astype(object)
    arpu_mean = (arpu0 + arpu1 + arpu2) / 3
    data_change = _change(data0, data1)
    voice_change = _change(voice0, voice1)
    age = rng.choice(np.array(AGE_GROUPS, dtype=object), n, p=[0.16, 0.24, 0.28, 0.2, 0.12])
    lifecycle = np.select([tenure < 6, np.minimum(data_change, voice_change) <= -0.3, tenure < 24],
                          list(LIFECYCLE_STAGES[:1]) + ["decline", "growth"], default="mature").astype(object)
    frame = pd.DataFrame({
        "subscriber_id": [f"S{i:07d}" for i in range(1, n + 1)],
        "tenure_months": tenure,
        "plan": plan,
        "contract_months_left": contract,
        "region": rng.choice(np.array(REGIONS, dtype=object), n),
        "age_group": age,
        "preferred_channel": rng.choice(np.array(CHANNELS, dtype=object), n, p=[0.4, 0.3, 0.2, 0.1]),
        "opt_out": rng.random(n) < 0.08,
        "arpu_m0": arpu0, "arpu_m1": arpu1, "arpu_m2": arpu2,
        "data_gb_m0": data0, "data_gb_m1": data1,
        "voice_min_m0": voice0, "voice_min_m1": voice1,
        "out_of_package_share": np.round(rng.beta(1.2, 7, n), 3),
        "balance": balance,
        "topup_count": topups,
        "topup_avg_amount": np.where(topups > 0, np.round(rng.gamma(2, 8, n), 2), 0.0),
        "complaints_3m": rng.poisson(0.45, n),
        "satisfaction_score": np.clip(np.round(rng.normal(7.4, 1.9, n)), 0, 10),
        "service_call_minutes": np.round(rng.gamma(0.8, 12, n), 1),
        "days_inactive": days_inactive,
        "competitor_contact": rng.random(n) < 0.07,
        "arpu_mean_3m": arpu_mean,
        "arpu_change": _change(arpu0, arpu2),
        "data_change": data_change,
        "voice_change": voice_change,
        "churn_probability": prob,
        "risk_grade": grade,
        "reason": reason,
        "reason_share": np.where(reason == "none", 0.0, np.round(rng.uniform(0.3, 1.0, n), 3)),
        "value_tier": np.where(arpu_mean >= 80, "high", np.where(arpu_mean >= 40, "medium", "low")).astype(object),
        "lifecycle_stage": lifecycle,
        "need_group": need_group(pd.Series(plan), pd.Series(age)),
        "is_prepaid": prepaid,
    })
    return frame


#: Size and seed of the synthetic population `retain policy validate` computes coverage on when no
#: decisions table is given.
POPULATION_SIZE = 20_000
POPULATION_SEED = 0


def synthetic_population(policy_set: Any = None, n: int = POPULATION_SIZE, seed: int = POPULATION_SEED,
                         settings: Any = None) -> pd.DataFrame:
    """`synthetic_frame` plus a column for every attribute the policy set declares, graded by `settings`.

    Declared columns are drawn at random, independent of everything else: booleans true for 10%,
    categoricals uniform over their `values` (a few made-up levels when none are listed), numerics
    uniform between `min` and `max` (0..100 where a bound is not given). With `settings`, risk grades and
    lifecycle stages follow its thresholds (risk_grades.high/medium unless graded by capacity;
    lifecycle), like the engine's own.
    """
    frame = synthetic_frame(n, seed)
    if settings is not None:
        from engine.model.segments import lifecycle_stage, risk_grade, value_tier

        frame["risk_grade"] = risk_grade(frame["churn_probability"], settings.risk_grades)
        frame["lifecycle_stage"] = lifecycle_stage(frame["tenure_months"], frame["data_change"],
                                                   frame["voice_change"], settings.lifecycle)
        if settings.value_tiers.method == "thresholds":
            frame["value_tier"] = value_tier(frame["arpu_mean_3m"], settings.value_tiers)
    declared = getattr(policy_set, "declared", None) or {}
    rng = np.random.default_rng(seed + 1)
    for name, attr in sorted(declared.items()):
        if attr.kind == "boolean":
            frame[name] = rng.random(n) < 0.1
        elif attr.kind == "categorical":
            levels = list(attr.values) if attr.values else [f"{name}_{i}" for i in range(1, 4)]
            frame[name] = rng.choice(np.array(levels, dtype=object), n)
        else:
            lo = attr.minimum if attr.minimum is not None else (0.0 if attr.maximum is None or attr.maximum > 0
                                                                  else attr.maximum - 100.0)
            hi = attr.maximum if attr.maximum is not None else lo + 100.0
            frame[name] = np.round(rng.uniform(lo, hi, n), 2)
    return frame
