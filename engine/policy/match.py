"""Forward matching: start from a retention product and find the subscribers it suits.

A subscriber suits offer X when at least one rule that gives X matches them - its conditions hold and
X is eligible and valid on the decision date - whether or not that rule wins today. The result says
which offer they get today, so a product manager sees both the audience and what the offer would
replace.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from engine.errors import PolicyError
from engine.policy.conditions import closest
from engine.policy.evaluate import PolicyEngine

CONTEXT = ("churn_probability", "risk_grade", "value_tier", "reason", "need_group")


def match_offer(engine: PolicyEngine, frame: pd.DataFrame, offer_id: str, on: dt.date | None = None) -> pd.DataFrame:
    """The subscribers `offer_id` suits, most at risk first."""
    ps = engine.policy_set
    if offer_id not in ps.offers:
        near = closest(offer_id, list(ps.offers), n=1)
        maybe = f"did you mean '{near[0]}'? " if near else ""
        raise PolicyError(f"unknown offer '{offer_id}'", hint=f"{maybe}known offers: {', '.join(ps.offers)}")
    if not any(r.offer == offer_id for r in ps.rules):
        raise PolicyError(f"offer '{offer_id}' is not given by any rule, so it suits nobody",
                          hint="add a rule whose `then.offer` is this offer")
    day = on or engine.decision_date or dt.date.today()
    suits = engine.matches_offer(frame, offer_id, day)["offer_rules"].to_numpy(dtype=object)
    rows = np.flatnonzero(suits != "")
    sub = frame.iloc[rows]
    today = engine.decide(sub, day)
    first_rule = [s.split(",")[0] for s in suits[rows]]
    positions = np.array([engine.position_of[r] for r in first_rule], dtype=np.int64)
    out = pd.DataFrame({
        "subscriber_id": sub["subscriber_id"].to_numpy() if "subscriber_id" in sub.columns else rows,
        "offer_id": offer_id,
        "matching_rules": suits[rows],
        "channel": engine.resolve_channels(sub, positions),
        "current_offer": today["offer_id"].to_numpy(),
        "current_rule": today["rule_id"].to_numpy(),
        "gets_it_today": (today["offer_id"].to_numpy(dtype=object) == offer_id),
    })
    for col in CONTEXT:
        if col in sub.columns:
            out[col] = sub[col].to_numpy()
    if "churn_probability" in out.columns:
        out = out.sort_values("churn_probability", ascending=False, kind="stable")
    return out.reset_index(drop=True)
