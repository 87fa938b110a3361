"""Deciding: raw subscriber rows -> scored, explained, segmented, policy-matched decisions.

Why one function for one subscriber and for millions: the front-desk lookup of tomorrow and tonight's
batch must agree, so both go through `decide_frame`; a batch is just a bigger frame, scored in chunks
so memory stays flat. Rule evaluation happens once per distinct combination of rule inputs inside the
policy engine, so it does not grow with the number of subscribers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.attributes import OUTBOUND_CHANNELS
from engine.config import Settings
from engine.model import PROBABILITY
from engine.reasons import reason_words
from engine.registry import LoadedModel
from engine.schema import ID, LABEL_COLUMNS, validate_subscribers
from engine.segments import is_prepaid, lifecycle_stage, need_group, risk_grade, value_tier

ProgressFn = Callable[[str, int, int], None]
CHUNK_ROWS = 200_000
STATUS_OFFER, STATUS_NONE, STATUS_OPT_OUT = "offer", "no_offer", "suppressed_opt_out"


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


def score(frame: pd.DataFrame, loaded: LoadedModel, settings: Settings, *,
          progress: ProgressFn | None = None, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """Add derived features, churn probability, reason and segments to validated subscriber rows."""
    model = loaded.model
    parts = []
    total = len(frame)
    for start in range(0, total, chunk_rows):
        chunk = frame.iloc[start:start + chunk_rows]
        feats = model.features(chunk)
        prob = model.predict_proba(chunk, features=feats)
        reasons = model.explain(chunk, features=feats)
        derived = feats[[c for c in model.pipeline.derived_ if c not in chunk.columns]]
        parts.append(pd.concat([chunk, derived, reasons], axis=1).assign(**{PROBABILITY: prob}))
        if progress:
            progress("scoring", min(start + chunk_rows, total), total)
    out = pd.concat(parts) if len(parts) > 1 else parts[0]
    out["risk_grade"] = risk_grade(out[PROBABILITY], settings.risk_grades)
    out["value_tier"] = value_tier(out["arpu_mean_3m"], settings.value_tiers)
    out["lifecycle_stage"] = lifecycle_stage(out["tenure_months"], out["data_change"], out["voice_change"],
                                             settings.lifecycle)
    out["need_group"] = need_group(out["plan"], out["age_group"])
    out["is_prepaid"] = is_prepaid(out["plan"])
    return out


def decide_frame(frame: pd.DataFrame, *, loaded: LoadedModel, policy_engine: Any, settings: Settings,
                 run_id: str | None = None, run_date: dt.date | None = None, source: str = "input",
                 progress: ProgressFn | None = None) -> Decisions:
    """Decide for every subscriber in `frame` (one row or millions)."""
    run_id = run_id or new_run_id()
    run_date = run_date or dt.date.today()
    valid = validate_subscribers(frame, source=source)
    scored = score(valid.drop(columns=[c.name for c in LABEL_COLUMNS if c.name in valid.columns]),
                   loaded, settings, progress=progress)
    if progress:
        progress("policies", 0, 1)
    chosen = policy_engine.decide(scored)
    if progress:
        progress("policies", 1, 1)
    table = _decision_table(scored, chosen, policy_engine, loaded, run_id, run_date)
    orders = work_orders(table, scored, settings, run_id, run_date)
    decisions = Decisions(run_id=run_id, run_date=run_date, table=table, work_orders=orders)
    decisions.summary = summarise(decisions, policy_engine, loaded)
    return decisions


def _decision_table(scored: pd.DataFrame, chosen: pd.DataFrame, policy_engine: Any, loaded: LoadedModel,
                    run_id: str, run_date: dt.date) -> pd.DataFrame:
    offers = policy_engine.policy_set.offers
    offer_id = chosen["offer_id"].astype(object).where(chosen["offer_id"].notna(), None)
    channel = chosen["channel"].astype(object).where(chosen["channel"].notna(), None)
    has_offer = offer_id.notna().to_numpy()
    opted_out = scored["opt_out"].astype(bool).to_numpy() & channel.isin(list(OUTBOUND_CHANNELS)).to_numpy()
    status = np.where(~has_offer, STATUS_NONE, np.where(opted_out, STATUS_OPT_OUT, STATUS_OFFER))
    cost_map = {k: float(o.cost) for k, o in offers.items()}
    keep = [ID, PROBABILITY, "risk_grade", "reason", "reason_share", "reason_signal", "value_tier",
            "lifecycle_stage", "need_group", "is_prepaid"]
    table = scored[keep].copy()
    table["offer_id"] = offer_id.to_numpy()
    table["channel"] = channel.to_numpy()
    table["rule_id"] = chosen["rule_id"].astype(object).where(chosen["rule_id"].notna(), None).to_numpy()
    table["stage"] = chosen["stage"].astype(object).where(chosen["stage"].notna(), None).to_numpy()
    table["priority"] = pd.to_numeric(chosen["priority"], errors="coerce").to_numpy()
    table["matched_rules"] = chosen["matched_rules"].fillna("").to_numpy()
    table["message"] = chosen["message"].astype(object).where(chosen["message"].notna(), None).to_numpy()
    table["status"] = status
    table["offer_cost"] = np.where(status == STATUS_OFFER, offer_id.map(cost_map).fillna(0.0).to_numpy(), 0.0)
    table["policy_hash"] = policy_engine.policy_set.content_hash
    table["model_version"] = loaded.version or loaded.uri
    table["decision_run"] = run_id
    table["decided_on"] = run_date.isoformat()
    return table.reset_index(drop=True)


def due_date(run_date: dt.date, business_days: int = 3) -> dt.date:
    """Operators require follow-up within 3 business days."""
    return np.busday_offset(np.datetime64(run_date), business_days, roll="forward").astype(dt.date)


def work_orders(table: pd.DataFrame, scored: pd.DataFrame, settings: Settings, run_id: str,
                run_date: dt.date) -> dict[str, pd.DataFrame]:
    """One contact list per channel, with the reason in words, the offer and a due date."""
    active = table.index[table["status"] == STATUS_OFFER]
    if len(active) == 0:
        return {}
    rows = table.loc[active]
    attrs = scored.reset_index(drop=True).loc[active]
    words = reason_words(rows["reason"], rows["reason_signal"], attrs, settings.reason_labels)
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
        "message": rows["message"].to_numpy(),
        "rule_id": rows["rule_id"].to_numpy(),
        "due_date": due_date(run_date).isoformat(),
    })
    orders = orders.sort_values(["channel", "priority", "churn_probability"], ascending=[True, False, False],
                                kind="stable")
    return {ch: g.drop(columns=["channel"]).reset_index(drop=True) for ch, g in orders.groupby("channel", sort=True)}


def summarise(decisions: Decisions, policy_engine: Any, loaded: LoadedModel) -> dict[str, Any]:
    t = decisions.table
    offered = t[t["status"] == STATUS_OFFER]
    return {
        "decision_run": decisions.run_id,
        "decided_on": decisions.run_date.isoformat(),
        "subscribers": int(len(t)),
        "model": loaded.uri,
        "model_version": loaded.version,
        "policy_hash": policy_engine.policy_set.content_hash,
        "risk_grades": {g: int(n) for g, n in t["risk_grade"].value_counts().items()},
        "reasons": {r: int(n) for r, n in t.loc[t["risk_grade"] != "low", "reason"].value_counts().items()},
        "status": {s: int(n) for s, n in t["status"].value_counts().items()},
        "offers_per_channel": {c: int(n) for c, n in offered["channel"].value_counts().items()},
        "offers": {o: int(n) for o, n in offered["offer_id"].value_counts().items()},
        "total_offer_cost": round(float(offered["offer_cost"].sum()), 2),
        "mean_churn_probability": round(float(t[PROBABILITY].mean()), 4),
    }
