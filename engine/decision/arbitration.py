"""Arbitration: among each subscriber's candidates, the one the policy set's `arbitration` mode picks,
within the run's budget and each channel's capacity.

Expected net value of sending offer o on channel c to subscriber s:
    P(churn_s) x P(accept | o, reason_s) x value_kept_o x horizon - cost_o - cost_c
P(accept | o, reason): the rate learned from outcomes, else the offer's prior in offers.yaml for the
reason, else its `default`, else the settings' `arbitration.acceptance_default`.

Which candidates take part (`eligible`):
- `first` (the decision table's reading, DMN's priority hit policy): every candidate. The
  highest-priority candidate is sent whatever its estimated net value; later candidates are fallbacks
  only for a winner whose channel is full or which the budget cannot pay. There is no `not_worth_it`.
- `best_value`: only candidates with a positive net value; a subscriber with none is `not_worth_it`.

Allocation, in rounds, over a flat candidates frame (one row per subscriber x candidate, with row,
subscriber_id, channel, priority, rank, total_cost, net_value). Each round:

1. **Proposal.** Every subscriber not yet served proposes its best remaining candidate among those whose
   channel has capacity left and whose cost alone fits the budget left. "Best" follows the mode
   (`preference_order`): `first`, the lowest rank (the policy winner, then its fallbacks in evaluation
   order); `best_value`, the highest net value (ties: higher priority, then lower rank).
2. **Order.** Proposals are ordered by value density, net_value / total_cost, highest first; ties by
   subscriber_id (a stable key, the same on any machine and in any partitioning). This only matters when
   budget or a capacity binds: it decides who is funded first.
3. **Capacity.** Per channel, the running count of proposals in that order is admitted while it stays
   within the channel's remaining capacity.
4. **Budget.** Over the capacity-admitted proposals, in the same order, the running total cost is
   admitted while it stays within the remaining budget. Those are chosen: one offer per subscriber.
5. Capacity and budget shrink by what was chosen. A subscriber refused for capacity falls back to its
   next candidate on a channel that still has room; one refused for budget proposes again (the same
   candidate if it still fits the budget left, else the next one that does).

Rounds end when nobody proposes (at most `MAX_ROUNDS`; the first proposal of a round is always chosen,
so each round serves someone). A subscriber left with candidates is `over_capacity` when its best
candidate's channel is full, else `over_budget`; under `best_value` one with no candidate of positive
value is `not_worth_it`. Every step is a sort, a filter or a running sum, so the same algorithm runs in
Spark with window functions: row_number over (partition by subscriber order by the mode's preference)
for the proposal, row_number over (partition by channel order by density desc, subscriber_id) for
capacity, and a running sum over (order by density desc, subscriber_id) for budget, with the rounds
driven from the driver.

Why greedy by value density, not an exact solver: the problem is an assignment with one budget
(knapsack) and per-channel capacities. At 10^5-10^7 subscribers every single offer is tiny against the
budget, where greedy by net value per unit of cost is within one offer's value of the LP optimum, runs
in O(n log n) per round, and is explainable to a retention manager ("best value per euro first"). Each
subscriber proposes its own best offer (the marketer's order, or by net value), not its densest one,
because when nothing binds the subscriber should get that offer; density only decides who goes first
when something does.
An exact MILP at this size would blow the nightly time budget for a gain smaller than rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.config import Arbitration, Channel, offer_prior_acceptance
from engine.data.frames import column_values
from engine.vocabulary import STATUS_NOT_WORTH, STATUS_OFFER, STATUS_OVER_BUDGET, STATUS_OVER_CAPACITY

CHOSEN, NOT_WORTH, OVER_BUDGET, OVER_CAPACITY = STATUS_OFFER, STATUS_NOT_WORTH, STATUS_OVER_BUDGET, STATUS_OVER_CAPACITY
MAX_ROUNDS = 100
_UNLIMITED = np.iinfo(np.int64).max


def acceptance_rate(offer_id: np.ndarray, reason: np.ndarray, cfg: Arbitration,
                    learned: Mapping[tuple[str, str], float] | None = None,
                    offer_priors: Mapping[str, Mapping[str, float]] | None = None) -> np.ndarray:
    """P(accept | offer, reason): the learned rate, else the offer's prior in the policy set (`acceptance:` in
    offers.yaml, for the reason, else its `default`), else the settings' `acceptance_default`.

    Without `offer_priors` (callers that have no policy set) the settings' per-offer table stands in for them.
    """
    return acceptance_rates(offer_id, reason, cfg, learned, offer_priors)[0]


def acceptance_rates(offer_id: np.ndarray, reason: np.ndarray, cfg: Arbitration,
                     learned: Mapping[tuple[str, str], float] | None = None,
                     offer_priors: Mapping[str, Mapping[str, float]] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(used, prior, learned) P(accept) per element (see `acceptance_rate`); learned is NaN where none is."""
    offer_id = np.asarray(offer_id, dtype=object)
    reason = np.asarray(reason, dtype=object)
    if offer_priors is None:
        prior = cfg.prior_acceptance(offer_id, reason)
    else:
        prior = offer_prior_acceptance(offer_id, reason, offer_priors, cfg.acceptance_default)
    measured = np.full(len(offer_id), np.nan, dtype=float)
    for (offer, r), rate in (learned or {}).items():
        measured[(offer_id == offer) & (reason == r)] = rate
    used = np.where(np.isnan(measured), prior, measured)
    return used, prior, measured


def expected_net_value(cands: pd.DataFrame, cfg: Arbitration, channels: Mapping[str, Channel],
                       learned: Mapping[tuple[str, str], float] | None = None) -> pd.DataFrame:
    """Add p_accept, channel_cost, total_cost and net_value columns to a candidates frame.

    `cands` needs: churn_probability, reason, offer_id, channel, offer_cost, value_kept.
    """
    out = cands.copy()
    out["p_accept"] = acceptance_rate(column_values(out, "offer_id", object), column_values(out, "reason", object),
                                      cfg, learned)
    out["channel_cost"] = out["channel"].map({k: v.cost for k, v in channels.items()}).fillna(0.0).astype(float)
    out["total_cost"] = out["offer_cost"].astype(float) + out["channel_cost"]
    out["expected_saved_value"] = (out["churn_probability"] * out["p_accept"] * out["value_kept"].astype(float)
                                   * cfg.horizon_months)
    out["net_value"] = out["expected_saved_value"] - out["total_cost"]
    return out


@dataclass
class Allocation:
    """The result of `allocate_arrays`: per candidate whether it was chosen, per subscriber its status."""

    chosen: np.ndarray  # candidate indices chosen (one per served subscriber)
    status: np.ndarray  # per subscriber row (0..n_rows-1): '' when it had no candidate, else a status
    budget_left: float  # inf when unlimited
    capacity_left: dict[str, int | None]
    rounds: int


def eligible(net_value: np.ndarray, prefer: str = "best_value") -> np.ndarray:
    """Which candidates take part in arbitration: all under `first`, positive net value under `best_value`."""
    net_value = np.asarray(net_value, dtype=float)
    if prefer == "first":
        return np.ones(len(net_value), dtype=bool)
    return net_value > 0


def preference_order(row: np.ndarray, rank: np.ndarray, priority: np.ndarray, net_value: np.ndarray,
                     prefer: str = "best_value") -> np.ndarray:
    """Candidates grouped by subscriber, each subscriber's best first (see `prefer` in the module docs)."""
    if prefer == "first":
        return np.lexsort((rank, row))
    return np.lexsort((rank, -priority, -net_value, row))


def _density_order(density: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Order by density descending, ties by key ascending (ties are rare: only those are sorted by key)."""
    order = np.argsort(-density, kind="stable")
    d = density[order]
    tie = np.r_[False, d[1:] == d[:-1]]
    if tie.any():
        in_tie = tie | np.r_[tie[1:], False]
        group = np.cumsum(~tie)
        at = np.flatnonzero(in_tie)
        sub = np.lexsort((keys[order[at]].astype(str), group[at]))
        order[at] = order[at][sub]
    return order


def _cumcount(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Running count of each code's earlier occurrences (0 for the first), in array order."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_codes)
    starts = np.cumsum(counts) - counts
    out = np.empty(len(codes), dtype=np.int64)
    out[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    return out


def allocate_arrays(*, row: np.ndarray, key: np.ndarray, channel: np.ndarray, channel_names: list[str],
                    priority: np.ndarray, rank: np.ndarray, total_cost: np.ndarray, net_value: np.ndarray,
                    n_rows: int, budget: float | None, capacity: Mapping[str, int | None],
                    prefer: str = "best_value", max_rounds: int = MAX_ROUNDS) -> Allocation:
    """The round-based allocation of the module docs over parallel candidate arrays.

    `row` is each candidate's subscriber position (0..n_rows-1), `key` its subscriber's tie-break key
    (subscriber_id), `channel` a code into `channel_names`. Channels missing from `capacity` (or None) are
    unlimited; `budget` None is unlimited.
    """
    n_ch = len(channel_names)
    cap = np.array([_UNLIMITED if capacity.get(ch) is None else int(capacity[ch]) for ch in channel_names],
                   dtype=np.int64)
    budget_left = np.inf if budget is None else float(budget)
    status = np.full(n_rows, "", dtype=object)
    status[row] = NOT_WORTH  # under `first` every subscriber with a candidate is overwritten below
    worth = np.flatnonzero(eligible(net_value, prefer))
    pref = worth[preference_order(row[worth], rank[worth], priority[worth], net_value[worth], prefer)]
    p_row, p_ch, p_cost = row[pref], channel[pref], total_cost[pref]
    p_density = net_value[pref] / np.maximum(p_cost, 1e-9)
    served = np.zeros(n_rows, dtype=bool)
    alive = np.ones(len(pref), dtype=bool)
    chosen: list[np.ndarray] = []
    rounds = 0
    while rounds < max_rounds:
        alive &= ~served[p_row] & (cap[p_ch] > 0) & (p_cost <= budget_left)
        live = np.flatnonzero(alive)
        if len(live) == 0:
            break
        rounds += 1
        r = p_row[live]
        proposal = live[np.r_[True, r[1:] != r[:-1]]]  # first live candidate of each subscriber
        order = proposal[_density_order(p_density[proposal], key[p_row[proposal]])]
        ch = p_ch[order]
        admitted = _cumcount(ch, n_ch) < cap[ch]
        running = np.cumsum(np.where(admitted, p_cost[order], 0.0))
        take = admitted & (running <= budget_left)
        won = order[take]
        chosen.append(pref[won])
        served[p_row[won]] = True
        budget_left -= float(running[take][-1]) if take.any() else 0.0  # take is a prefix of the admitted
        used = np.bincount(p_ch[won], minlength=n_ch)
        cap = np.where(cap == _UNLIMITED, cap, cap - used)
    chosen_idx = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    status[row[chosen_idx]] = CHOSEN
    # the rest of those with worthwhile candidates: why their best one was refused
    first = np.r_[True, p_row[1:] != p_row[:-1]] if len(pref) else np.zeros(0, dtype=bool)
    best_row, best_ch = p_row[first], p_ch[first]
    refused = ~served[best_row]
    status[best_row[refused]] = np.where(cap[best_ch[refused]] <= 0, OVER_CAPACITY, OVER_BUDGET)
    left = {ch: (None if cap[i] == _UNLIMITED else int(cap[i])) for i, ch in enumerate(channel_names)}
    return Allocation(chosen_idx, status, budget_left, left, rounds)


def allocate(cands: pd.DataFrame, *, budget: float | None, capacity: Mapping[str, int | None],
             prefer: str = "best_value") -> pd.DataFrame:
    """At most one offer per subscriber, never over budget or channel capacity (see the module docs).

    `cands` is the output of `expected_net_value` plus a `row` column (the subscriber's position) and
    optionally `subscriber_id` (the tie-break key; `row` otherwise) and `rank`.
    Returns one row per subscriber that had candidates: the chosen candidate or the reason none was.
    """
    rows = column_values(cands, "row")
    codes, names = pd.factorize(column_values(cands, "channel", object))
    n_rows = int(rows.max()) + 1 if len(rows) else 0
    key_col = cands["subscriber_id"] if "subscriber_id" in cands.columns else cands["row"]
    key = np.empty(n_rows, dtype=object)
    key[rows] = key_col.to_numpy(dtype=object)
    rank = column_values(cands, "rank") if "rank" in cands.columns else np.zeros(len(cands), dtype=np.int64)
    result = allocate_arrays(row=rows, key=key, channel=codes.astype(np.int64), channel_names=[str(c) for c in names],
                             priority=cands["priority"].fillna(0).to_numpy(dtype=float), rank=rank,
                             total_cost=column_values(cands, "total_cost", float),
                             net_value=column_values(cands, "net_value", float), n_rows=n_rows, budget=budget,
                             capacity=capacity, prefer=prefer)
    chosen = cands.iloc[np.sort(result.chosen)].assign(arbitration=CHOSEN)
    with_cands = np.unique(rows)
    rest = with_cands[result.status[with_cands] != CHOSEN]
    unchosen = pd.DataFrame({"row": rest, "arbitration": result.status[rest]})
    return pd.concat([chosen, unchosen], ignore_index=True).sort_values("row", kind="stable").reset_index(drop=True)
