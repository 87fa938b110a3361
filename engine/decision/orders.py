"""Work orders and the run summary: what a channel acts on, and what a manager reads.

Vectorised throughout: reason words are formatted once per distinct (signal, value), not per order, so a
run with hundreds of thousands of orders spends milliseconds here.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import Settings
from engine.data.frames import column_values, frame_of
from engine.data.schema import ID
from engine.decision.contact import call_window
from engine.model.churn import PROBABILITY
from engine.model.reasons import signal_text
from engine.vocabulary import CALL_CHANNELS, NO_REASON, STATUS_OFFER

NO_DOMINANT_REASON = "no dominant churn reason"
SMALL_COUNT_ROWS = 4096
SMALL_ORDERS = 64


@functools.lru_cache(maxsize=64)
def due_date(run_date: dt.date, business_days: int = 3) -> dt.date:
    """Operators require follow-up within 3 business days. (Remembered: a real-time run asks once per
    channel and call, the same few days all day, and numpy's business-day offset costs ~20 us.)"""
    return np.busday_offset(np.datetime64(run_date), business_days, roll="forward").astype(dt.date)


def reason_text(rows: Mapping[str, Any], labels: Mapping[str, str]) -> np.ndarray:
    """'competitor offer: contacted a competitor' per row (the words of `engine.model.reasons.reason_words`)."""
    reason = np.asarray(rows["reason"], dtype=object)
    signal = np.asarray(rows["reason_signal"], dtype=object)
    out = np.full(len(reason), NO_DOMINANT_REASON, dtype=object)
    has = (reason != NO_REASON) & pd.notna(signal) & (signal != "")
    if not has.any():
        return out
    for sig in pd.unique(signal[has]):
        at = np.flatnonzero(has & (signal == sig))
        if sig in rows:
            codes, uniques = pd.factorize(np.asarray(rows[sig])[at], use_na_sentinel=False)
            words = np.array([signal_text(sig, u) for u in uniques], dtype=object)[codes]
        else:
            words = np.full(len(at), signal_text(sig, None), dtype=object)
        r_codes, r_uniques = pd.factorize(reason[at])
        label = np.array([f"{labels.get(r, r)}: " for r in r_uniques], dtype=object)[r_codes]
        out[at] = label + words
    return out


def order_ids(run_id: str, numbers: np.ndarray) -> np.ndarray:
    """'<run id>-0000042': the run's orders numbered from 1, zero-padded to 7 digits (Arrow's text kernels:
    numpy's per-character string functions cost ~0.3 s per million; for a few orders Python's formatting is
    ~50x cheaper than Arrow's fixed cost)."""
    if len(numbers) <= SMALL_ORDERS:
        return np.array([f"{run_id}-{k:07d}" for k in np.asarray(numbers, dtype=np.int64).tolist()], dtype=object)
    digits = pc.utf8_lpad(pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string()), 7, "0")
    return pc.binary_join_element_wise(f"{run_id}-", digits, "").to_numpy(zero_copy_only=False).astype(object)


def order_rows(rows: Mapping[str, Any], numbers: np.ndarray, run_id: str, run_date: dt.date,
               labels: Mapping[str, str]) -> pd.DataFrame:
    """The columns of a work order for offered rows numbered `numbers` within the run (one place for the
    order's layout: the local engine numbers a run's orders at once, Spark per partition with offsets).
    `rows`: a frame, or column name -> array."""
    return pd.DataFrame(order_columns(rows, numbers, run_id, run_date, labels))


def order_columns(rows: Mapping[str, Any], numbers: np.ndarray, run_id: str, run_date: dt.date,
                  labels: Mapping[str, str]) -> dict[str, np.ndarray | str]:
    """`order_rows` as column name -> values, before any frame is built."""
    def col(name: str) -> np.ndarray:
        return np.asarray(rows[name])

    return {
        "order_id": order_ids(run_id, numbers),
        ID: col(ID),
        "channel": col("channel"),
        "priority": col("priority"),
        "risk_grade": col("risk_grade"),
        "churn_probability": np.round(col(PROBABILITY).astype(float), 4),
        "value_tier": col("value_tier"),
        "reason": col("reason"),
        "reason_text": reason_text(rows, labels),
        "offer_id": col("offer_id"),
        "offer_cost": col("offer_cost"),
        "expected_net_value": np.round(col("net_value").astype(float), 2),
        "message": col("message"),
        "rule_id": col("rule_id"),
        "due_date": due_date(run_date).isoformat(),
    }


def work_orders(table: pd.DataFrame, settings: Settings, run_id: str, run_date: dt.date, *,
                labels: Mapping[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """One contact list per channel, with the reason in words, the offer and a due date; each list in the
    order agents work it (highest priority, then highest expected net value; ties in decision order).

    `labels`: reason family -> words (the model's; settings.reason_labels when not given or empty).
    Why sorted as positions first: with hundreds of thousands of orders, taking each column once in its
    final order costs a fraction of sorting and splitting a frame of Python strings.
    """
    offered = np.flatnonzero(column_values(table, "status", object) == STATUS_OFFER)
    if len(offered) == 0:
        return {}
    wanted = [ID, "channel", "priority", "risk_grade", PROBABILITY, "value_tier", "reason", "reason_signal",
              "offer_id", "offer_cost", "net_value", "message", "rule_id"]
    signals = [s for s in pd.unique(column_values(table, "reason_signal", object)[offered])
               if isinstance(s, str) and s in table.columns and s not in wanted]
    channel_codes, channels = pd.factorize(column_values(table, "channel", object)[offered], sort=True)
    priority = column_values(table, "priority")[offered]
    net = np.round(column_values(table, "net_value", float)[offered], 2)
    order = np.lexsort((-net, -priority, channel_codes))  # stable: equal keys keep the decision order
    at = offered[order]
    columns_of = {c: column_values(table, c) for c in wanted + signals}  # views; taken one channel at a time
    numbers = order + 1
    ends = np.searchsorted(channel_codes[order], np.arange(len(channels)), side="right")
    window = call_window(settings.contact)
    out, lo = {}, 0
    for ch, hi in zip(channels, ends, strict=True):
        take = at[lo:hi]
        columns = order_columns({c: v[take] for c, v in columns_of.items()}, numbers[lo:hi], run_id, run_date,
                                labels or settings.reason_labels)
        del columns["channel"]
        if ch in CALL_CHANNELS:
            columns["call_window"] = window
        out[str(ch)] = _frame(columns, hi - lo)
        lo = hi
    return out


#: From this many orders a channel's frame is built column by column (see `_frame`).
INSERT_ROWS = 10_000


def _frame(columns: Mapping[str, Any], n: int) -> pd.DataFrame:
    """A frame holding `columns`. Large: inserted one by one as they are, not stacked into one block of
    Python objects (the stacking copies every text column of half a million orders once more). Small: one
    constructor call (each insert costs ~0.2 ms whatever the length, which a one-subscriber run would feel)."""
    if n < INSERT_ROWS:  # the arrays are this frame's own: not copied nor stacked into blocks
        return frame_of(columns)
    frame = pd.DataFrame(index=pd.RangeIndex(n))
    for name, values in columns.items():
        frame[name] = values
    return frame


def value_counts(values: np.ndarray) -> dict[str, int]:
    """`pd.Series(values).value_counts()` as a dict (by count descending, missing values left out).

    For a few rows (a real-time run) the same dict in a tenth of the time: a Counter, whose keys come in
    order of first appearance as pandas' hash table gives them, then ordered by count the way pandas sorts
    descending (reverse, numpy quicksort ascending, reverse), so tied counts come out in pandas' order too
    (tests/decision/test_publish.py compares the two).
    """
    if len(values) <= SMALL_COUNT_ROWS:
        found = Counter(v for v in values.tolist() if not (v is None or v != v))
        keys = list(found)
        counts = np.fromiter(found.values(), dtype=np.int64, count=len(keys))
        order = np.arange(len(keys))[::-1][counts[::-1].argsort(kind="quicksort")][::-1]
        return {str(keys[i]): int(counts[i]) for i in order.tolist()}
    return {str(k): int(v) for k, v in pd.Series(values).value_counts().items()}


def summarise(table: pd.DataFrame, *, run_id: str, run_date: dt.date, policy_hash: str, model_uri: str,
              model_version: Any, budget: float | None) -> dict[str, Any]:
    t = table
    arrays = {c: column_values(t, c) for c in ("status", "risk_grade", "value_tier", "reason", "blocked_reason",
                                                "channel", "offer_id", "offer_cost", "channel_cost", PROBABILITY,
                                                "p_accept", "expected_saved_value", "net_value")}
    offered = arrays["status"] == STATUS_OFFER

    def counts(name: str, rows: np.ndarray | None = None) -> dict[str, int]:
        return value_counts(arrays[name] if rows is None else arrays[name][rows])

    def total(values: np.ndarray) -> float:
        """`pd.Series(values).sum()` (missing values skipped) without a Series: ~30 us each on a small run."""
        return float(np.nansum(np.asarray(values, dtype=float)))

    offer_cost = arrays["offer_cost"][offered].astype(float)
    channel_cost = arrays["channel_cost"][offered].astype(float)
    spent = total(offer_cost + channel_cost)
    saves = arrays[PROBABILITY][offered].astype(float) * arrays["p_accept"][offered].astype(float)
    return {
        "decision_run": run_id,
        "decided_on": run_date.isoformat(),
        "subscribers": int(len(t)),
        "model": model_uri,
        "model_version": model_version,
        "policy_hash": policy_hash,
        "risk_grades": counts("risk_grade"),
        "value_tiers": counts("value_tier"),
        "reasons": counts("reason", arrays["reason"] != NO_REASON),
        "status": counts("status"),
        "blocked": counts("blocked_reason", arrays["blocked_reason"] != ""),
        "offers_per_channel": counts("channel", offered),
        "offers": counts("offer_id", offered),
        "control_group": int(np.count_nonzero(column_values(t, "control", bool))),
        "total_offer_cost": round(total(offer_cost), 2),
        "total_channel_cost": round(total(channel_cost), 2),
        "budget": budget,
        "budget_used": round(spent, 2),
        "expected_saves": round(total(saves), 1),
        "expected_saved_value": round(total(arrays["expected_saved_value"][offered]), 2),
        "expected_net_value": round(total(arrays["net_value"][offered]), 2),
        "mean_churn_probability": round(float(np.nanmean(arrays[PROBABILITY].astype(float))), 4),
    }
