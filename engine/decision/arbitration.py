"""Arbitration: among each subscriber's eligible offers, the one with the best expected return,
within the run's budget and each channel's capacity.

Expected net value of sending offer o on channel c to subscriber s:
    P(churn_s) x P(accept | o, reason_s) x value_kept_o x horizon - cost_o - cost_c

Why greedy by value density, not an exact solver: the problem is an assignment with one budget
(knapsack) and per-channel capacities. At 10^5-10^7 subscribers every single offer is tiny against the
budget, where greedy by net value per unit of cost is within one offer's value of the LP optimum, runs
in O(n log n), and is explainable to a retention manager ("best value per euro first"). An exact MILP
at this size would blow the nightly time budget for a gain smaller than rounding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from engine.config import Arbitration, Channel

CHOSEN, NOT_WORTH, OVER_BUDGET, OVER_CAPACITY = "offer", "not_worth_it", "over_budget", "over_capacity"


def acceptance_rate(offer_id: np.ndarray, reason: np.ndarray, cfg: Arbitration,
                    learned: Mapping[tuple[str, str], float] | None = None) -> np.ndarray:
    """P(accept | offer, reason): learned rates first, then the configured priors."""
    out = cfg.prior_acceptance(offer_id, reason)
    for (offer, r), rate in (learned or {}).items():
        out[(offer_id == offer) & (reason == r)] = rate
    return out


def expected_net_value(cands: pd.DataFrame, cfg: Arbitration, channels: Mapping[str, Channel],
                       learned: Mapping[tuple[str, str], float] | None = None) -> pd.DataFrame:
    """Add p_accept, channel_cost, total_cost and net_value columns to a candidates frame.

    `cands` needs: churn_probability, reason, offer_id, channel, offer_cost, value_kept.
    """
    out = cands.copy()
    out["p_accept"] = acceptance_rate(out["offer_id"].to_numpy(dtype=object), out["reason"].to_numpy(dtype=object),
                                      cfg, learned)
    out["channel_cost"] = out["channel"].map({k: v.cost for k, v in channels.items()}).fillna(0.0).astype(float)
    out["total_cost"] = out["offer_cost"].astype(float) + out["channel_cost"]
    out["expected_saved_value"] = (out["churn_probability"] * out["p_accept"] * out["value_kept"].astype(float)
                                   * cfg.horizon_months)
    out["net_value"] = out["expected_saved_value"] - out["total_cost"]
    return out


def allocate(cands: pd.DataFrame, *, budget: float | None, capacity: Mapping[str, int | None]) -> pd.DataFrame:
    """Greedy allocation: at most one offer per subscriber, never over budget or channel capacity.

    `cands` is the output of `expected_net_value` plus a `row` column (the subscriber's position).
    Returns one row per subscriber that had candidates: the chosen candidate or the reason none was.
    """
    worth = cands[cands["net_value"] > 0]
    density = worth["net_value"].to_numpy() / np.maximum(worth["total_cost"].to_numpy(), 1e-9)
    order = np.lexsort((-worth["priority"].fillna(0).to_numpy(), -density))
    rows = worth["row"].to_numpy()[order]
    chans = worth["channel"].to_numpy(dtype=object)[order]
    costs = worth["total_cost"].to_numpy()[order]
    remaining_budget = np.inf if budget is None else float(budget)
    left = {ch: (np.inf if cap is None else int(cap)) for ch, cap in capacity.items()}
    taken: dict[int, int] = {}
    blocked: dict[int, str] = {}
    for i in range(len(order)):
        r = rows[i]
        if r in taken:
            continue
        ch = chans[i]
        if left.get(ch, np.inf) <= 0:
            blocked.setdefault(r, OVER_CAPACITY)
            continue
        if costs[i] > remaining_budget:
            blocked.setdefault(r, OVER_BUDGET)
            continue
        taken[r] = order[i]
        remaining_budget -= costs[i]
        if ch in left:
            left[ch] -= 1
    chosen = worth.iloc[list(taken.values())].assign(arbitration=CHOSEN)
    all_rows = pd.Index(cands["row"].unique())
    rest = all_rows.difference(pd.Index(list(taken)))
    status = [blocked.get(r, NOT_WORTH) for r in rest]
    unchosen = pd.DataFrame({"row": rest, "arbitration": status})
    return pd.concat([chosen, unchosen], ignore_index=True).sort_values("row", kind="stable").reset_index(drop=True)
