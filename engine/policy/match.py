"""Forward matching: start from a retention product and find the subscribers it suits.

A subscriber **qualifies** for offer X when at least one rule that gives X matches them - its conditions
hold, the rule and X are valid on the decision date and X is eligible - whether or not that rule wins.
Whether they would **receive** X is what `retain decide` would do: the same decision function (arbitration,
contact rules, control group, budget and capacity) is run on the table, and `receives` is true for the
subscribers it would send X to (status `offer`). The result also says what each qualifying subscriber gets
instead (`current_offer`, `status`), so a product manager sees both the audience and what the offer would
replace. The decision run is `engine.decision.whatif.match_offer`; this module builds the audience.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from engine.errors import PolicyError
from engine.policy.conditions import closest
from engine.policy.evaluate import PolicyEngine

CONTEXT = ("churn_probability", "risk_grade", "value_tier", "reason", "need_group")


def check_offer(engine: PolicyEngine, offer_id: str) -> None:
    """Refuse an unknown offer (with a suggestion) or one no rule gives."""
    ps = engine.policy_set
    if offer_id not in ps.offers:
        near = closest(offer_id, list(ps.offers), n=1)
        maybe = f"did you mean '{near[0]}'? " if near else ""
        raise PolicyError(f"unknown offer '{offer_id}'", hint=f"{maybe}known offers: {', '.join(ps.offers)}")
    if not any(r.offer == offer_id for r in ps.rules):
        raise PolicyError(f"offer '{offer_id}' is not given by any rule, so it suits nobody",
                          hint="add a rule whose `then.offer` is this offer")


def audience(engine: PolicyEngine, frame: pd.DataFrame, offer_id: str, table: pd.DataFrame,
             on: dt.date | None = None) -> pd.DataFrame:
    """The subscribers `offer_id` suits (qualify), with whether decide would send it to them, most at risk first.

    `table`: `retain decide`'s decision table for `frame` (engine.decision.whatif.match_offer runs it).
    """
    check_offer(engine, offer_id)
    day = on or engine.decision_date or dt.date.today()
    suits = engine.matches_offer(frame, offer_id, day)["offer_rules"].to_numpy(dtype=object)
    rows = np.flatnonzero(suits != "")
    sub = frame.iloc[rows]
    status = table["status"].to_numpy(dtype=object)[rows]
    sent = table["offer_id"].to_numpy(dtype=object)[rows]
    receives = (status == "offer") & (sent == offer_id)
    first_rule = [s.split(",")[0] for s in suits[rows]]
    positions = np.array([engine.position_of[r] for r in first_rule], dtype=np.int64)
    channel = engine.resolve_channels(sub, positions)
    channel = np.where(receives, table["channel"].to_numpy(dtype=object)[rows], channel)
    out = pd.DataFrame({
        "subscriber_id": sub["subscriber_id"].to_numpy() if "subscriber_id" in sub.columns else rows,
        "offer_id": offer_id,
        "matching_rules": suits[rows],
        "channel": channel,
        "receives": receives,
        "status": status,
        "current_offer": np.where(status == "offer", sent, None),
        "current_rule": table["rule_id"].to_numpy(dtype=object)[rows],
        "gets_it_today": receives,
    })
    for col in CONTEXT:
        if col in sub.columns:
            out[col] = sub[col].to_numpy()
    if "churn_probability" in out.columns:
        out = out.sort_values("churn_probability", ascending=False, kind="stable")
    return out.reset_index(drop=True)
