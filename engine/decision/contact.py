"""Contact rules: who may be contacted at all, and the control group that measures what offers do.

Why here and not in policies: policies say what *would* suit a subscriber; contact rules say whether
we may reach out now (opt-out, fatigue, cool-down after a refusal, quiet hours). They are operator-wide
law, not marketing choices, so they are configuration applied after the policy, never skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from engine.config import ContactRules, ControlGroup
from engine.data.frames import column_values
from engine.data.io import read_table, write_table
from engine.data.schema import ID
from engine.errors import DataError
from engine.vocabulary import CHANNELS, OUTBOUND_CHANNELS

HISTORY_COLUMNS = (ID, "contacted_on", "channel", "offer_id", "outcome")
OUTCOMES = ("pending", "accepted", "declined", "no_answer")


def control_mask(subscriber_ids: pd.Series, cfg: ControlGroup) -> np.ndarray:
    """Stable hold-out: a subscriber is in control iff hash(salt + id) falls below the share.

    Stable across runs and machines (sha256, not Python's salted hash), so the same subscriber stays in
    control month after month and the control group's churn can be compared with the treated group's.
    """
    if cfg.share <= 0:
        return np.zeros(len(subscriber_ids), dtype=bool)
    salt, sha256 = cfg.salt, hashlib.sha256
    digests = b"".join([sha256((salt + s).encode()).digest()[:8] for s in subscriber_ids.astype(str).tolist()])
    values = np.frombuffer(digests, dtype=">u8").astype(np.uint64)  # the first 8 bytes, big-endian
    return (values / np.float64(2**64)) < cfg.share


def read_history(path: str | Path | None) -> pd.DataFrame:
    """Contact history (subscriber_id, contacted_on, channel, offer_id, outcome); empty when there is none yet."""
    if path is None or not Path(path).exists():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in HISTORY_COLUMNS})
    df = read_table(path, what="contact history") if Path(path).stat().st_size else pd.DataFrame()
    missing = [c for c in HISTORY_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"contact history '{path}': missing column(s) {missing}",
                        hint=f"expected columns: {', '.join(HISTORY_COLUMNS)}")
    dates = pd.to_datetime(df["contacted_on"], errors="coerce")
    if dates.isna().any():
        bad = df.loc[dates.isna(), "contacted_on"].astype(str).unique()[:3]
        raise DataError(f"contact history '{path}': column 'contacted_on': not a date (e.g. {list(bad)})")
    unknown_channels = sorted(set(df["channel"].astype(str)) - set(CHANNELS))
    if unknown_channels:
        raise DataError(f"contact history '{path}': column 'channel': unknown channel(s) {unknown_channels}",
                        hint=f"channels: {', '.join(CHANNELS)}")
    unknown_outcomes = sorted(set(df["outcome"].astype(str)) - set(OUTCOMES))
    if unknown_outcomes:
        raise DataError(f"contact history '{path}': column 'outcome': unknown value(s) {unknown_outcomes}",
                        hint=f"outcomes: {', '.join(OUTCOMES)}")
    out = df[list(HISTORY_COLUMNS)].copy()
    out[ID] = out[ID].astype(str)
    out["contacted_on"] = dates.dt.date
    return out


SAME_DAY_REASON = "already contacted today"


def daily_limit_reason(limit: int) -> str:
    return SAME_DAY_REASON if limit == 1 else f"contact limit ({limit} a day)"


def _days(values: pd.Series) -> np.ndarray:
    """Contact dates as datetime64[D]: date objects directly (the store's and read_history's), else pandas."""
    items = values.tolist()
    if all(type(v) is dt.date for v in items):
        return np.array(items, dtype="datetime64[D]")
    return pd.to_datetime(values).to_numpy(dtype="datetime64[D]")


def blocked_reasons(subscriber_ids: pd.Series, opt_out: pd.Series, history: pd.DataFrame, today: dt.date,
                    rules: ContactRules) -> pd.Series:
    """Why each subscriber may not be contacted by an outbound channel today ('' when they may).

    In order of precedence: opted out; the daily limit (`max_contacts_per_day` contacts today on any channel,
    when set); the 30-day limit of outbound contacts; the cool-down after a declined offer.
    History rows for subscribers outside this population are ignored here (and kept in the file).
    """
    ids = subscriber_ids.astype(str).to_numpy()
    reason = np.full(len(ids), "", dtype=object)
    if len(history):
        h_ids = column_values(history, ID, object)
        age = (np.datetime64(today, "D") - _days(history["contacted_on"])).astype(float)  # days since each contact
        outbound = np.isin(column_values(history, "channel", object), np.array(list(OUTBOUND_CHANNELS), dtype=object))
        recent = Counter(h_ids[(age >= 0) & (age < 30) & outbound].tolist())
        n = np.array([recent.get(i, 0) for i in ids.tolist()], dtype=float)
        reason = np.where(n >= rules.max_contacts_30d, f"contact limit ({rules.max_contacts_30d} in 30 days)", reason)
        declined = (column_values(history, "outcome", object) == "declined") & (age >= 0) & (
            age < rules.cooldown_days_after_decline)
        cooling = set(h_ids[declined].tolist())
        in_cooldown = np.array([i in cooling for i in ids.tolist()], dtype=bool)
        reason = np.where(in_cooldown & (reason == ""), f"cool-down after a declined offer "
                                                        f"({rules.cooldown_days_after_decline} days)", reason)
        if rules.max_contacts_per_day is not None:
            todays = Counter(h_ids[age == 0].tolist())
            k = np.array([todays.get(i, 0) for i in ids.tolist()], dtype=np.int64)
            reason = np.where(k >= rules.max_contacts_per_day, daily_limit_reason(rules.max_contacts_per_day),
                              reason)
    reason = np.where(opt_out.astype(bool).to_numpy(), "opted out", reason)
    return pd.Series(reason, index=subscriber_ids.index, dtype=object)


def append_history(path: str | Path, history: pd.DataFrame, contacts: pd.DataFrame) -> Path:
    """Append this run's outbound and inbound contacts (outcome 'pending') to the history file, atomically."""
    new = contacts[[ID, "channel", "offer_id"]].assign(contacted_on=None, outcome="pending")
    new["contacted_on"] = column_values(contacts, "contacted_on")
    combined = pd.concat([history, new[list(HISTORY_COLUMNS)]], ignore_index=True)
    combined["contacted_on"] = pd.to_datetime(combined["contacted_on"]).dt.date.astype(str)
    return write_table(combined, path)


def call_window(rules: ContactRules) -> str:
    """The hours agents and voice bots may call, the complement of the quiet hours."""
    return f"{rules.quiet_hours_end}-{rules.quiet_hours_start}"
