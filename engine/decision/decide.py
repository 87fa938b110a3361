"""Deciding: raw subscriber rows -> scored, explained, segmented, policy-matched, arbitrated decisions.

Why one function for one subscriber and for millions: the front-desk lookup of tomorrow and tonight's
batch must agree, so both go through `decide_frame`; a batch is just a bigger frame, scored in chunks so
memory stays flat. Rules are evaluated once per distinct combination of rule inputs inside the policy
engine, so their cost does not grow with the number of subscribers.

The steps, in order: validate -> score -> grade -> explain (only grades that can be acted on, because
attributions are the slow part) -> policies (every eligible offer) -> contact rules -> arbitration (best
expected net value within budget and channel capacity) -> control group (a stable share of those chosen
keeps its would-be offer on record but is not contacted) -> work orders.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.data.schema import ID, LABEL_COLUMNS, validate_subscribers
from engine.decision.arbitration import CHOSEN, allocate, expected_net_value
from engine.decision.contact import blocked_reasons, call_window, control_mask, read_history
from engine.model.churn import PROBABILITY
from engine.model.reasons import NO_REASON, reason_words
from engine.model.registry import LoadedModel
from engine.model.segments import is_prepaid, lifecycle_stage, need_group, risk_grade, value_tier
from engine.model.value_tiers import ValueSegmenter
from engine.vocabulary import OUTBOUND_CHANNELS

ProgressFn = Callable[[str, int, int], None]
CHUNK_ROWS = 200_000
STATUS_OFFER, STATUS_NONE, STATUS_CONTROL, STATUS_BLOCKED = "offer", "no_offer", "control", "blocked"
CALL_CHANNELS = frozenset({"vip_manager", "outbound_call", "voice_bot"})


@dataclass
class Decisions:
    """A decision run: one row per subscriber, work orders per channel, and the figures a manager reads."""

    run_id: str
    run_date: dt.date
    table: pd.DataFrame
    work_orders: dict[str, pd.DataFrame]
    summary: dict[str, Any] = field(default_factory=dict)


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def score(frame: pd.DataFrame, loaded: LoadedModel, settings: Settings, *,
          progress: ProgressFn | None = None, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """Add derived features, churn probability, segments and (for actionable grades) the churn reason."""
    model = loaded.model
    total = len(frame)
    feats, probs = [], []
    for start, stop in _chunks(total, chunk_rows):
        f = model.features(frame.iloc[start:stop])
        feats.append(f)
        probs.append(model.predict_proba(frame.iloc[start:stop], features=f))
        if progress:
            progress("scoring", stop, total)
    features = pd.concat(feats) if len(feats) > 1 else feats[0]
    out = frame.copy()
    for col in model.pipeline.derived_:
        out[col] = features[col].to_numpy()
    out[PROBABILITY] = np.concatenate(probs)
    out["risk_grade"] = risk_grade(out[PROBABILITY], settings.risk_grades)
    segmenter = model.spec.get("value_segmenter")
    if settings.value_tiers.method == "kmeans" and segmenter:
        out["value_tier"] = ValueSegmenter.from_dict(segmenter).transform(out)
    else:
        out["value_tier"] = value_tier(out["arpu_mean_3m"], settings.value_tiers)
    out["lifecycle_stage"] = lifecycle_stage(out["tenure_months"], out["data_change"], out["voice_change"],
                                             settings.lifecycle)
    out["need_group"] = need_group(out["plan"], out["age_group"])
    out["is_prepaid"] = is_prepaid(out["plan"])
    _explain(out, features, model, settings, progress, chunk_rows)
    return out


def _explain(out: pd.DataFrame, features: pd.DataFrame, model: Any, settings: Settings,
             progress: ProgressFn | None, chunk_rows: int) -> None:
    """Reasons for the risk grades that can be acted on; 'none' elsewhere (attributions cost ~70 us/row)."""
    out["reason"] = NO_REASON
    out["reason_share"] = 0.0
    out["reason_signal"] = ""
    rows = np.flatnonzero(np.isin(out["risk_grade"].to_numpy(dtype=object), settings.explain_risk_grades))
    for start, stop in _chunks(len(rows), chunk_rows):
        part = rows[start:stop]
        r = model.explain(out.iloc[part], features=features.iloc[part])
        for col in ("reason", "reason_share", "reason_signal"):
            out.iloc[part, out.columns.get_loc(col)] = r[col].to_numpy()
        if progress:
            progress("reasons", stop, len(rows))


def decide_frame(frame: pd.DataFrame, *, loaded: LoadedModel, policy_engine: Any, settings: Settings,
                 run_id: str | None = None, run_date: dt.date | None = None, source: str = "input",
                 history: pd.DataFrame | None = None, learned: Mapping[tuple[str, str], float] | None = None,
                 progress: ProgressFn | None = None) -> Decisions:
    """Decide for every subscriber in `frame` (one row or millions)."""
    run_id = run_id or new_run_id()
    run_date = run_date or dt.date.today()
    history = read_history(None) if history is None else history
    valid = validate_subscribers(frame, source=source)
    labels = [c.name for c in LABEL_COLUMNS if c.name in valid.columns]
    scored = score(valid.drop(columns=labels).reset_index(drop=True), loaded, settings, progress=progress)
    n = len(scored)

    cands = policy_engine.candidates(scored, on=run_date)
    if progress:
        progress("policies", 1, 1)
    eligible = np.zeros(n, dtype=bool)
    eligible[cands["row"].to_numpy()] = True
    control = control_mask(scored[ID], settings.control_group) & eligible
    blocked = blocked_reasons(scored[ID], scored["opt_out"], history, run_date, settings.contact).to_numpy()

    rows = cands["row"].to_numpy()
    contactable = ~(cands["channel"].isin(list(OUTBOUND_CHANNELS)).to_numpy() & (blocked[rows] != ""))
    # Control subscribers go through arbitration like everyone else, so each carries the offer, rule and
    # channel it *would* have received: uplift per rule/offer/channel then compares like with like.
    open_cands = cands[contactable].copy()
    open_cands[PROBABILITY] = scored[PROBABILITY].to_numpy()[open_cands["row"].to_numpy()]
    open_cands["reason"] = scored["reason"].to_numpy()[open_cands["row"].to_numpy()]
    valued = expected_net_value(open_cands, settings.arbitration, settings.channels, learned)
    capacity = {ch: c.daily_capacity for ch, c in settings.channels.items()}
    allocation = allocate(valued, budget=settings.arbitration.budget, capacity=capacity)
    if progress:
        progress("arbitration", 1, 1)

    table = _decision_table(scored, cands, allocation, control, blocked, policy_engine, loaded, run_id, run_date)
    orders = work_orders(table, settings, run_id, run_date)
    decisions = Decisions(run_id=run_id, run_date=run_date, table=table, work_orders=orders)
    decisions.summary = summarise(decisions, policy_engine, loaded, settings)
    return decisions


def _decision_table(scored: pd.DataFrame, cands: pd.DataFrame, allocation: pd.DataFrame, control: np.ndarray,
                    blocked: np.ndarray, policy_engine: Any, loaded: LoadedModel, run_id: str,
                    run_date: dt.date) -> pd.DataFrame:
    n = len(scored)
    table = scored.copy()
    winners = cands[cands["rank"] == 0]
    policy_rule = np.full(n, None, dtype=object)
    policy_offer = np.full(n, None, dtype=object)
    policy_rule[winners["row"].to_numpy()] = winners["rule_id"].to_numpy()
    policy_offer[winners["row"].to_numpy()] = winners["offer_id"].to_numpy()
    matched = cands.groupby("row", sort=False)["rule_id"].agg(",".join)
    matched_rules = np.full(n, "", dtype=object)
    matched_rules[matched.index.to_numpy()] = matched.to_numpy()

    chosen = allocation[allocation["arbitration"] == CHOSEN]
    pos = chosen["row"].to_numpy()
    cols: dict[str, np.ndarray] = {}
    for col, fill in (("offer_id", None), ("channel", None), ("rule_id", None), ("stage", None)):
        cols[col] = np.full(n, fill, dtype=object)
        cols[col][pos] = chosen[col].to_numpy()
    for col in ("priority", "p_accept", "offer_cost", "channel_cost", "expected_saved_value", "net_value"):
        cols[col] = np.zeros(n, dtype=float)
        cols[col][pos] = chosen[col].to_numpy(dtype=float)

    status = np.full(n, STATUS_NONE, dtype=object)
    eligible = np.zeros(n, dtype=bool)
    eligible[cands["row"].to_numpy()] = True
    status[eligible] = STATUS_BLOCKED  # eligible but every candidate removed by contact rules (refined below)
    not_chosen = allocation[allocation["arbitration"] != CHOSEN]
    status[not_chosen["row"].to_numpy()] = not_chosen["arbitration"].to_numpy()
    status[pos] = STATUS_OFFER
    control = control & (status == STATUS_OFFER)  # held out from what would have been sent
    status[control] = STATUS_CONTROL
    for col in ("offer_cost", "channel_cost"):
        cols[col][control] = 0.0  # nothing is spent on the control group
    blocked_reason = np.where(status == STATUS_BLOCKED, blocked, "")

    table["control"] = control
    table["policy_rule"] = policy_rule
    table["policy_offer"] = policy_offer
    table["matched_rules"] = matched_rules
    for col, values in cols.items():
        table[col] = values
    table["priority"] = table["priority"].astype(int)
    table["status"] = status
    table["blocked_reason"] = blocked_reason
    table["message"] = render_messages(policy_engine, table, pos, cols["rule_id"][pos])
    table["policy_hash"] = policy_engine.policy_set.content_hash
    table["model_version"] = loaded.version or loaded.uri
    table["decision_run"] = run_id
    table["decided_on"] = run_date.isoformat()
    return table


def render_messages(policy_engine: Any, table: pd.DataFrame, positions: np.ndarray, rule_ids: np.ndarray) -> np.ndarray:
    """The chosen rule's message template rendered for each chosen row (offer description if none)."""
    from engine.policy.evaluate import render

    out = np.full(len(table), None, dtype=object)
    offers = policy_engine.policy_set.offers
    for rule_id in pd.unique(rule_ids):
        rows = positions[rule_ids == rule_id]
        rule = policy_engine.policy_set.rule(rule_id)
        template = rule.action.message
        out[rows] = render(template, table, rows) if template else offers[rule.offer].description
    return out


def due_date(run_date: dt.date, business_days: int = 3) -> dt.date:
    """Operators require follow-up within 3 business days."""
    return np.busday_offset(np.datetime64(run_date), business_days, roll="forward").astype(dt.date)


def work_orders(table: pd.DataFrame, settings: Settings, run_id: str, run_date: dt.date) -> dict[str, pd.DataFrame]:
    """One contact list per channel, with the reason in words, the offer and a due date."""
    rows = table[table["status"] == STATUS_OFFER]
    if len(rows) == 0:
        return {}
    words = reason_words(rows["reason"], rows["reason_signal"], rows, settings.reason_labels)
    orders = pd.DataFrame({
        "order_id": [f"{run_id}-{i:07d}" for i in range(1, len(rows) + 1)],
        ID: rows[ID].to_numpy(),
        "channel": rows["channel"].to_numpy(),
        "priority": rows["priority"].to_numpy(),
        "risk_grade": rows["risk_grade"].to_numpy(),
        "churn_probability": rows[PROBABILITY].round(4).to_numpy(),
        "value_tier": rows["value_tier"].to_numpy(),
        "reason": rows["reason"].to_numpy(),
        "reason_text": words.to_numpy(),
        "offer_id": rows["offer_id"].to_numpy(),
        "offer_cost": rows["offer_cost"].to_numpy(),
        "expected_net_value": rows["net_value"].round(2).to_numpy(),
        "message": rows["message"].to_numpy(),
        "rule_id": rows["rule_id"].to_numpy(),
        "due_date": due_date(run_date).isoformat(),
    })
    orders = orders.sort_values(["channel", "priority", "expected_net_value"], ascending=[True, False, False],
                                kind="stable")
    window = call_window(settings.contact)
    out = {}
    for ch, g in orders.groupby("channel", sort=True):
        g = g.drop(columns=["channel"]).reset_index(drop=True)
        if ch in CALL_CHANNELS:
            g["call_window"] = window
        out[str(ch)] = g
    return out


def summarise(decisions: Decisions, policy_engine: Any, loaded: LoadedModel, settings: Settings) -> dict[str, Any]:
    t = decisions.table
    offered = t[t["status"] == STATUS_OFFER]

    def counts(s: pd.Series) -> dict[str, int]:
        return {str(k): int(v) for k, v in s.value_counts().items()}

    budget = settings.arbitration.budget
    spent = float((offered["offer_cost"] + offered["channel_cost"]).sum())
    return {
        "decision_run": decisions.run_id,
        "decided_on": decisions.run_date.isoformat(),
        "subscribers": int(len(t)),
        "model": loaded.uri,
        "model_version": loaded.version,
        "policy_hash": policy_engine.policy_set.content_hash,
        "risk_grades": counts(t["risk_grade"]),
        "value_tiers": counts(t["value_tier"]),
        "reasons": counts(t.loc[t["reason"] != NO_REASON, "reason"]),
        "status": counts(t["status"]),
        "blocked": counts(t.loc[t["blocked_reason"] != "", "blocked_reason"]),
        "offers_per_channel": counts(offered["channel"]),
        "offers": counts(offered["offer_id"]),
        "control_group": int(t["control"].sum()),
        "total_offer_cost": round(float(offered["offer_cost"].sum()), 2),
        "total_channel_cost": round(float(offered["channel_cost"].sum()), 2),
        "budget": budget,
        "budget_used": round(spent, 2),
        "expected_saves": round(float((offered[PROBABILITY] * offered["p_accept"]).sum()), 1),
        "expected_saved_value": round(float(offered["expected_saved_value"].sum()), 2),
        "expected_net_value": round(float(offered["net_value"].sum()), 2),
        "mean_churn_probability": round(float(t[PROBABILITY].mean()), 4),
    }
