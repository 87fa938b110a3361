"""Run-level constraints: what one subscriber's decision owes to everyone else in the run.

`constrain(assessment, state)` takes the per-subscriber `Assessment` and the run's explicit `RunState`
(budget left, capacity left per channel, the control group, capacity-grading cut-offs) and decides:
which candidate each subscriber gets within budget and channel capacity (the round-based allocation of
engine/decision/arbitration.py), who is held out as control (a stable share of those chosen keeps its
would-be offer on record but is not contacted), the decision table, the work orders and the summary.
A subscriber whose first matching rule is a suppression (`Assessment.suppressed_by`) has no candidate: status
`suppressed`, with the suppression's rule id, stage, priority and `note`; never in the control group, no
work order.

**Exploration** (`exploration: {share: ...}` in the policy set, default 5%): before allocation, a stable
hash of (seed, subscriber id) picks a share of the subscribers with at least one contactable candidate;
each gets an action drawn uniformly among its eligible actions - no contact and every contactable
(offer, channel) - by a second hash draw (engine/uplift/explore.py). Their contacts are paid first from the
budget and capacity; everyone else is allocated as before with what is left. The seed is the policy set's
`exploration.seed`, else the decision date: the same subscriber gets the same draw alone, in any batch and
in any Spark partition that day, and a different one next month. Every decision records `explored` and
`propensity`, the probability with which its final action (the offer on its channel, or no contact) was
chosen: P(a) = (1 - share) x [a is the arbitration's choice] + share / m (m eligible actions, no contact
included), then the control group is held out as before - P(contact) x (1 - control share), P(no contact)
+ control share x (1 - P(no contact)). For an explored subscriber "the arbitration's choice" is its best
candidate before budget and capacity (`Assessment.best`). A subscriber with no candidate has propensity 1.
An explored "no contact" has status `explored_none`. Share 0 (or `decide_frame(explore=False)`, as policy
test cases and the off-policy target use) gives exactly the decisions without exploration.

The state is updated in place with what the run used (budget spent, contacts per channel), so a caller
that keeps a daily allowance - the HTTP service deciding one subscriber at a time - reads back what is
left. A batch builds its state from the settings (`RunState.from_settings`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.config import ControlGroup, Settings
from engine.data.frames import column_categorical, column_values, with_columns
from engine.data.schema import ID
from engine.decision.arbitration import allocate_arrays
from engine.decision.assess import Assessment
from engine.decision.contact import control_mask
from engine.decision.orders import summarise, work_orders
from engine.vocabulary import (
    STATUS_BLOCKED,
    STATUS_CONTROL,
    STATUS_EXPLORED_NONE,
    STATUS_NONE,
    STATUS_OFFER,
    STATUS_SUPPRESSED,
)

ProgressFn = Callable[[str, int, int], None]


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunState:
    """What a decision run may still spend, and what it has used.

    budget_left: offer + channel cost still allowed (None: no limit).
    capacity_left: contacts each channel can still take (None or absent: no limit).
    control: the control-group share and salt.
    risk_cutoffs: (high, medium) churn-probability cut-offs when risk grades follow capacity; set by the
        first batch graded with this state, or passed in so single subscribers are graded like the batch.
    spent, contacts: what this state has paid for and sent so far (summed over calls).
    """

    run_id: str = field(default_factory=new_run_id)
    budget_left: float | None = None
    capacity_left: dict[str, int | None] = field(default_factory=dict)
    control: ControlGroup = field(default_factory=ControlGroup)
    risk_cutoffs: tuple[float, float] | None = None
    spent: float = 0.0
    contacts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, run_id: str | None = None) -> RunState:
        """A batch run's state: the configured budget, each channel's daily capacity, the control group."""
        return cls(run_id=run_id or new_run_id(), budget_left=settings.arbitration.budget,
                   capacity_left={ch: c.daily_capacity for ch, c in settings.channels.items()},
                   control=settings.control_group)


@dataclass
class Decisions:
    """A decision run: one row per subscriber, work orders per channel, and the figures a manager reads."""

    run_id: str
    run_date: dt.date
    table: pd.DataFrame
    work_orders: dict[str, pd.DataFrame]
    summary: dict[str, Any] = field(default_factory=dict)


class _Columns(Mapping[str, Any]):
    """The decision table's columns before it is built: this call's new ones over the scored frame's."""

    def __init__(self, scored: pd.DataFrame, new: Mapping[str, Any]) -> None:
        self.scored, self.new = scored, new

    def __getitem__(self, name: str) -> Any:
        if name in self.new:
            value = self.new[name]
            return value if isinstance(value, np.ndarray) else np.full(len(self.scored), value, dtype=object)
        return column_values(self.scored, name)

    def __iter__(self):
        return iter([*self.new, *(c for c in self.scored.columns if c not in self.new)])

    def __len__(self) -> int:
        return len(set(self.new) | set(self.scored.columns))


def render_messages(policy_engine: Any, table: pd.DataFrame | Mapping[str, Any], positions: np.ndarray,
                    rule_ids: np.ndarray, n: int | None = None) -> np.ndarray:
    """The chosen rule's message template rendered for each chosen row (offer description if none).
    `table`: the decision table, or its columns by name (then `n` is its length)."""
    from engine.policy.evaluate import render

    out = np.full(len(table) if n is None else n, None, dtype=object)
    offers = policy_engine.policy_set.offers
    vocabulary = getattr(policy_engine.policy_set, "vocabulary", None)
    for rule_id in pd.unique(rule_ids):
        rows = positions[rule_ids == rule_id]
        rule = policy_engine.policy_set.rule(rule_id)
        template = rule.action.message
        out[rows] = render(template, table, rows, vocabulary) if template else offers[rule.offer].description
    return out


def _take(values: np.ndarray | pd.Categorical, idx: np.ndarray, n: int, pos: np.ndarray, fill: Any,
          dtype: Any) -> np.ndarray:
    out = np.full(n, fill, dtype=dtype)
    out[pos] = np.asarray(values.take(idx), dtype=dtype)
    return out


@dataclass
class ExplorationDraw:
    """Per subscriber: explored or not, its drawn action (a candidate index or -1 for no contact), the number
    m of eligible actions (no contact included) and its unconstrained best candidate (-1 if none)."""

    share: float
    seed: str
    explored: np.ndarray
    action: np.ndarray
    n_actions: np.ndarray
    best: np.ndarray


def exploration_seed(assessment: Assessment) -> str:
    seed = getattr(assessment.policy_engine.policy_set, "exploration_seed", None)
    return str(seed) if seed is not None else assessment.run_date.isoformat()


def draw_exploration(assessment: Assessment, share: float | None = None) -> ExplorationDraw:
    """The exploration draw of the module docs; pure per subscriber (the same alone or in any batch)."""
    from engine.uplift.explore import NO_CONTACT, explore

    a = assessment
    share = float(getattr(a.policy_engine.policy_set, "exploration_share", 0.0) if share is None else share)
    seed = exploration_seed(a)
    n = len(a.scored)
    c = a.candidates
    open_idx = np.flatnonzero(column_values(c, "contactable"))
    # one eligible action per distinct (offer, channel): the lowest-rank candidate carrying it. Each
    # candidate's (row, offer, channel) as one integer key, so the search is numpy's, not a frame's.
    offers, channels = column_categorical(c, "offer_id"), column_categorical(c, "channel")
    offer, chan = offers.codes, channels.codes
    n_offer, n_chan = len(offers.categories) + 1, len(channels.categories) + 1
    key = (column_values(c, "row").astype(np.int64) * n_offer + (offer.astype(np.int64) + 1)) * n_chan \
        + (chan.astype(np.int64) + 1)
    ordered = open_idx[np.lexsort((column_values(c, "rank")[open_idx], column_values(c, "row")[open_idx]))]
    _, first = np.unique(key[ordered], return_index=True)
    distinct = ordered[np.sort(first)]
    best = a.best()
    greedy = np.full(n, NO_CONTACT, dtype=np.int64)
    has = np.flatnonzero(best >= 0)
    if len(distinct) and len(has):  # the best candidate's (offer, channel), as an index into `distinct`
        by_key = np.argsort(key[distinct], kind="stable")
        sorted_keys = key[distinct][by_key]
        at = np.minimum(np.searchsorted(sorted_keys, key[best[has]]), len(sorted_keys) - 1)
        greedy[has] = np.where(sorted_keys[at] == key[best[has]], by_key[at], NO_CONTACT)
    ids = column_values(a.scored, ID, object)
    ex = explore(column_values(c, "row")[distinct], n, greedy, ids, epsilon=share, seed=seed)
    explored = ex.explored & (ex.n_actions > 1) & (share > 0)
    action = np.where(explored & (ex.action >= 0), distinct[np.maximum(ex.action, 0)] if len(distinct) else -1,
                      NO_CONTACT)
    return ExplorationDraw(share=share, seed=seed, explored=explored, action=action.astype(np.int64),
                           n_actions=ex.n_actions, best=best)


def matches_best(draw: ExplorationDraw, cands: pd.DataFrame) -> np.ndarray:
    """Per subscriber: explored, and its drawn action is its unconstrained best's (same offer and channel, or
    both no contact)."""
    out = np.zeros(len(draw.explored), dtype=bool)
    at = np.flatnonzero(draw.explored)
    if len(at) == 0:
        return out
    drawn, best = draw.action[at], draw.best[at]
    same = (drawn >= 0) & (best >= 0)
    for col in ("offer_id", "channel"):
        codes = column_categorical(cands, col).codes
        same &= np.where(same, codes[np.maximum(drawn, 0)] == codes[np.maximum(best, 0)], False)
    out[at] = same | ((drawn < 0) & (best < 0))
    return out


def propensity_cases(draw: ExplorationDraw, hit_best: np.ndarray, control_share: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per subscriber, the propensity of its final action (module docs) if it ends (sent an offer, held out as
    control, with no contact). `hit_best`: `matches_best`. Subscribers with one action (no contact) get 1."""
    eps, m, c = draw.share, draw.n_actions.astype(float), control_share
    explored = draw.explored
    hit = np.where(explored, hit_best, True)  # the sent action is the arbitration's choice
    p_sent = (1 - c) * ((1 - eps) * hit + eps / m)
    none_ctrl = (1 - eps) * (explored & (draw.best < 0)) + eps / m  # the choice was a contact, unless explored
    none = (1 - eps) * np.where(explored, draw.best < 0, True) + eps / m
    p_control, p_none = none_ctrl + c * (1 - none_ctrl), none + c * (1 - none)
    single = draw.n_actions <= 1
    return tuple(np.where(single, 1.0, p) for p in (p_sent, p_control, p_none))  # type: ignore[return-value]


def run_notes(arbitration: str, effect: str | None, share: float, seed: str, explored: int) -> dict[str, Any]:
    """The summary keys every engine adds: the arbitration mode, where tau came from, the exploration."""
    return {"arbitration": arbitration, "effect": effect,
            "exploration": {"share": share, "seed": seed, "explored": explored}}


def constrain(assessment: Assessment, state: RunState, *, progress: ProgressFn | None = None,
              explore: bool = True, outputs: bool = True) -> Decisions:
    """Allocate within the state's budget and capacity, hold out the control group, build the outputs.

    `explore=False` turns exploration off for this call (policy test cases, off-policy targets).
    `outputs=False` skips the work orders and the summary (a caller that builds its own, such as a Spark
    partition, or that does not need them): the decision table and the state are the same either way.
    """
    a = assessment
    scored, cands = a.scored, a.candidates
    n = len(scored)
    budget_at_start = state.budget_left
    rows = column_values(cands, "row")
    contactable = column_values(cands, "contactable")
    open_idx = np.flatnonzero(contactable)
    channel = column_categorical(cands, "channel")
    ids = column_values(scored, ID, object)
    priority_c, rank_c = column_values(cands, "priority"), column_values(cands, "rank")
    draw = draw_exploration(a, share=None if explore else 0.0)
    budget, capacity = state.budget_left, state.capacity_left
    forced = np.zeros(0, dtype=np.int64)
    explored_status = None
    if draw.explored.any():  # explored contacts first, in value-density order, while budget and capacity allow
        drawn = draw.action[draw.explored & (draw.action >= 0)]
        first = allocate_arrays(
            row=rows[drawn], key=ids, channel=channel.codes[drawn].astype(np.int64),
            channel_names=[str(c) for c in channel.categories], priority=priority_c[drawn],
            rank=rank_c[drawn], total_cost=column_values(cands, "total_cost")[drawn],
            net_value=column_values(cands, "net_value")[drawn], n_rows=n, budget=budget, capacity=capacity,
            prefer="first")
        forced = drawn[first.chosen]
        explored_status = first.status
        budget = None if budget is None else first.budget_left
        capacity = first.capacity_left
        open_idx = open_idx[~draw.explored[rows[open_idx]]]
    result = allocate_arrays(
        row=rows[open_idx], key=ids, channel=channel.codes[open_idx].astype(np.int64),
        channel_names=[str(c) for c in channel.categories], priority=priority_c[open_idx],
        rank=rank_c[open_idx], total_cost=column_values(cands, "total_cost")[open_idx],
        net_value=column_values(cands, "net_value")[open_idx], n_rows=n, budget=budget,
        capacity=capacity, prefer=a.prefer)
    chosen = open_idx[result.chosen]
    if draw.explored.any():
        chosen = np.sort(np.r_[chosen, forced])
        result.status[draw.explored] = STATUS_EXPLORED_NONE
        refused = explored_status != ""
        result.status[refused] = explored_status[refused]  # drawn a contact the budget or capacity refused
    if progress:
        progress("arbitration", 1, 1)

    pos = rows[chosen]
    status = np.full(n, STATUS_NONE, dtype=object)
    status[rows] = STATUS_BLOCKED  # eligible, but every candidate removed by contact rules
    arbitrated = result.status != ""
    status[arbitrated] = result.status[arbitrated]
    rules = a.policy_engine.rules if hasattr(a.policy_engine, "rules") else []
    supp = a.suppressed_by if a.suppressed_by is not None else np.full(n, -1, dtype=np.int64)
    suppressed = supp >= 0  # the first matching rule is a suppression: no candidate at all
    status[suppressed] = STATUS_SUPPRESSED
    control = np.zeros(n, dtype=bool)
    if len(pos):
        control[pos] = control_mask(pd.Series(ids[pos]), state.control)  # held out from what would be sent
    status[control] = STATUS_CONTROL
    p_sent, p_control, p_none = propensity_cases(draw, matches_best(draw, cands), state.control.share)
    propensity = np.where(status == STATUS_OFFER, p_sent, np.where(control, p_control, p_none))
    propensity[status == STATUS_SUPPRESSED] = 1.0

    winners = np.flatnonzero(rank_c == 0)
    new: dict[str, Any] = {"control": control}
    new["policy_rule"] = _take(column_categorical(cands, "rule_id"), winners, n, rows[winners], None, object)
    new["policy_offer"] = _take(column_categorical(cands, "offer_id"), winners, n, rows[winners], None, object)
    new["matched_rules"] = a.matched_rules
    for col in ("offer_id", "channel", "rule_id", "stage"):
        new[col] = _take(column_categorical(cands, col), chosen, n, pos, None, object)
    note = np.full(n, None, dtype=object)
    supp_priority = np.zeros(n, dtype=float)
    if suppressed.any():  # the suppression is the decision's rule, with its note
        at = np.flatnonzero(suppressed)
        by = supp[at]
        rule_names = np.array([r.id for r in rules], dtype=object)
        new["policy_rule"] = np.where(suppressed, rule_names[np.where(suppressed, supp, 0)], new["policy_rule"])
        new["rule_id"][at] = rule_names[by]
        new["stage"][at] = np.array([r.stage for r in rules], dtype=object)[by]
        note[at] = np.array([r.action.note for r in rules], dtype=object)[by]
        supp_priority[at] = np.array([r.priority for r in rules], dtype=float)[by]
    for col in ("priority", "p_accept", "offer_cost", "channel_cost", "expected_saved_value", "net_value"):
        values = _take(column_values(cands, col), chosen, n, pos, 0.0, float)
        if col in ("offer_cost", "channel_cost"):
            values[control] = 0.0  # nothing is spent on the control group
        new[col] = values
    new["priority"] = np.where(suppressed, supp_priority, new["priority"]).astype(int)
    new["status"] = status
    new["blocked_reason"] = np.where(status == STATUS_BLOCKED, a.blocked, "").astype(object)
    new["note"] = note
    new["message"] = np.full(n, None, dtype=object)  # (rendered below, once every column is known)
    new["policy_hash"] = a.policy_engine.policy_set.content_hash
    new["model_version"] = a.loaded.version or a.loaded.uri
    new["decision_run"] = state.run_id
    new["decided_on"] = a.run_date.isoformat()
    new["explored"] = draw.explored
    new["propensity"] = propensity
    if a.prefer == "incremental_value":
        new["tau"] = _take(column_values(cands, "tau"), chosen, n, pos, 0.0, float)
    if len(pos):  # templates may name any column of the table, decision columns included
        new["message"] = render_messages(a.policy_engine, _Columns(scored, new), pos, new["rule_id"][pos], n)

    offered = status == STATUS_OFFER
    offer_cost, channel_cost, chosen_channel = new["offer_cost"], new["channel_cost"], new["channel"]
    table = with_columns(scored, new)

    spent = float(offer_cost[offered].sum() + channel_cost[offered].sum())
    state.spent += spent
    if state.budget_left is not None:
        state.budget_left = max(0.0, state.budget_left - spent)
    if offered.any():
        names, counts = np.unique(chosen_channel[offered].astype(str), return_counts=True)
        for ch, k in zip(names.tolist(), counts.tolist(), strict=True):
            state.contacts[ch] = state.contacts.get(ch, 0) + int(k)
            if state.capacity_left.get(ch) is not None:
                state.capacity_left[ch] = max(0, int(state.capacity_left[ch]) - int(k))

    if not outputs:
        return Decisions(run_id=state.run_id, run_date=a.run_date, table=table, work_orders={}, summary={})
    labels = a.loaded.model.reason_labels if hasattr(a.loaded.model, "reason_labels") else {}
    orders = work_orders(table, a.settings, state.run_id, a.run_date, labels=labels or a.settings.reason_labels)
    summary = summarise(table, run_id=state.run_id, run_date=a.run_date,
                        policy_hash=a.policy_engine.policy_set.content_hash, model_uri=a.loaded.uri,
                        model_version=a.loaded.version, budget=budget_at_start)
    summary.update(run_notes(a.prefer, a.effect_note, draw.share if explore else 0.0, draw.seed,
                             int(draw.explored.sum())))
    return Decisions(run_id=state.run_id, run_date=a.run_date, table=table, work_orders=orders, summary=summary)
