"""Work orders and the run summary: what a channel acts on, and what a manager reads.

Vectorised throughout: reason words are formatted once per distinct (signal, value), not per order, so a
run with hundreds of thousands of orders spends milliseconds here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.data.schema import ID
from engine.decision.contact import call_window
from engine.model.churn import PROBABILITY
from engine.model.reasons import signal_text
from engine.vocabulary import CALL_CHANNELS, NO_REASON, STATUS_OFFER

NO_DOMINANT_REASON = "no dominant churn reason"


def due_date(run_date: dt.date, business_days: int = 3) -> dt.date:
    """Operators require follow-up within 3 business days."""
    return np.busday_offset(np.datetime64(run_date), business_days, roll="forward").astype(dt.date)


def reason_text(rows: pd.DataFrame, labels: Mapping[str, str]) -> np.ndarray:
    """'competitor offer: contacted a competitor' per row (the words of `engine.model.reasons.reason_words`)."""
    reason = rows["reason"].to_numpy(dtype=object)
    signal = rows["reason_signal"].to_numpy(dtype=object)
    out = np.full(len(rows), NO_DOMINANT_REASON, dtype=object)
    has = (reason != NO_REASON) & pd.notna(signal) & (signal != "")
    if not has.any():
        return out
    for sig in pd.unique(signal[has]):
        at = np.flatnonzero(has & (signal == sig))
        if sig in rows.columns:
            codes, uniques = pd.factorize(rows[sig].to_numpy()[at], use_na_sentinel=False)
            words = np.array([signal_text(sig, u) for u in uniques], dtype=object)[codes]
        else:
            words = np.full(len(at), signal_text(sig, None), dtype=object)
        r_codes, r_uniques = pd.factorize(reason[at])
        label = np.array([f"{labels.get(r, r)}: " for r in r_uniques], dtype=object)[r_codes]
        out[at] = label + words
    return out


def order_rows(rows: pd.DataFrame, numbers: np.ndarray, run_id: str, run_date: dt.date,
               labels: Mapping[str, str]) -> pd.DataFrame:
    """The columns of a work order for offered rows numbered `numbers` within the run (one place for the
    order's layout: the local engine numbers a run's orders at once, Spark per partition with offsets)."""
    return pd.DataFrame({
        "order_id": np.char.add(f"{run_id}-", np.char.zfill(np.asarray(numbers).astype(str), 7)).astype(object),
        ID: rows[ID].to_numpy(),
        "channel": rows["channel"].to_numpy(),
        "priority": rows["priority"].to_numpy(),
        "risk_grade": rows["risk_grade"].to_numpy(),
        "churn_probability": rows[PROBABILITY].round(4).to_numpy(),
        "value_tier": rows["value_tier"].to_numpy(),
        "reason": rows["reason"].to_numpy(),
        "reason_text": reason_text(rows, labels),
        "offer_id": rows["offer_id"].to_numpy(),
        "offer_cost": rows["offer_cost"].to_numpy(),
        "expected_net_value": rows["net_value"].round(2).to_numpy(),
        "message": rows["message"].to_numpy(),
        "rule_id": rows["rule_id"].to_numpy(),
        "due_date": due_date(run_date).isoformat(),
    })


def work_orders(table: pd.DataFrame, settings: Settings, run_id: str, run_date: dt.date, *,
                labels: Mapping[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """One contact list per channel, with the reason in words, the offer and a due date.

    `labels`: reason family -> words (the model's; settings.reason_labels when not given or empty).
    """
    offered = np.flatnonzero(table["status"].to_numpy(dtype=object) == STATUS_OFFER)
    if len(offered) == 0:
        return {}
    wanted = [ID, "channel", "priority", "risk_grade", PROBABILITY, "value_tier", "reason", "reason_signal",
              "offer_id", "offer_cost", "net_value", "message", "rule_id"]
    signals = [s for s in pd.unique(table["reason_signal"].to_numpy(dtype=object)[offered])
               if isinstance(s, str) and s in table.columns and s not in wanted]
    rows = table[wanted + signals].iloc[offered]  # only the columns an order needs, not the whole table
    n = len(rows)
    orders = order_rows(rows, np.arange(1, n + 1), run_id, run_date, labels or settings.reason_labels)
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


def summarise(table: pd.DataFrame, *, run_id: str, run_date: dt.date, policy_hash: str, model_uri: str,
              model_version: Any, budget: float | None) -> dict[str, Any]:
    t = table
    offered = t[t["status"] == STATUS_OFFER]

    def counts(s: pd.Series) -> dict[str, int]:
        return {str(k): int(v) for k, v in s.value_counts().items()}

    spent = float((offered["offer_cost"] + offered["channel_cost"]).sum())
    return {
        "decision_run": run_id,
        "decided_on": run_date.isoformat(),
        "subscribers": int(len(t)),
        "model": model_uri,
        "model_version": model_version,
        "policy_hash": policy_hash,
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
