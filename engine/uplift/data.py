"""Logged decisions, their outcomes and the rows they were decided on, from the decision store.

The store keeps key columns per decision (status, offer, channel, costs, churn probability, ...) but not the
subscriber's raw inputs; each run names the table it decided on (`decision_runs.input`). The uplift model
learns from those raw rows, so this reads them back and joins them by subscriber_id. A run whose input is
gone cannot be learned from: it is named in the error (keep inputs, or decide again).

Propensity: P(logged action) per row, from the `propensity` column of `decisions` (store migration 3: what
`retain decide` records, exploration and control group included), else - for rows recorded before it - from
the control group alone: a subscriber the arbitration chose was sent its offer with probability 1 - share and
held back with probability share; everyone else had no contact with probability 1 (the logging policy was
deterministic for them). `propensity_source` says which per row ('logged' or 'derived').
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from engine.config import Settings
from engine.data.io import read_table
from engine.errors import DataError
from engine.feedback.store import decision_runs, decisions, open_store, outcomes
from engine.vocabulary import STATUS_CONTROL, STATUS_OFFER

WINDOWS = (30, 60, 90)


def logged_runs(settings: Settings, runs: list[str] | None = None, *, url: str | None = None) -> pd.DataFrame:
    """decision_run, decided_on, input of the stored runs (all, or those named), oldest first."""
    store = open_store(settings, url=url, create=False)
    if store is None:
        raise DataError("the decision store is empty: no logged decisions to learn from",
                        hint="decide with --record and ingest outcomes first (retain feedback ingest)")
    q = sa.select(decision_runs.c.decision_run, decision_runs.c.decided_on, decision_runs.c.input,
                  decision_runs.c.summary).order_by(decision_runs.c.decided_on)
    if runs:
        q = q.where(decision_runs.c.decision_run.in_(runs))
    found = store.read(q)
    missing = sorted(set(runs or []) - set(found["decision_run"]))
    if missing:
        raise DataError(f"decision run(s) not in the store: {', '.join(missing[:5])}", hint="see retain feedback runs")
    return found


def logged_frame(settings: Settings, runs: list[str] | None = None, *, window: int = 90, url: str | None = None,
                 inputs: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per logged decision with an outcome for `window`: the raw input columns, the stored decision
    columns, outcomes, `treated`, `churned`, `cost` (channel cost per contact + offer cost per acceptance) and
    `propensity` (see the module docs). `inputs`: run -> raw rows, instead of reading each run's input file."""
    if window not in WINDOWS:
        raise DataError(f"window must be one of {', '.join(map(str, WINDOWS))} days, got {window}")
    store = open_store(settings, url=url, create=False)
    meta = logged_runs(settings, runs, url=url)
    share = settings.control_group.share
    parts = []
    for run in meta.itertuples():
        d = store.read(sa.select(decisions).where(decisions.c.decision_run == run.decision_run))
        o = store.read(sa.select(outcomes).where(outcomes.c.decision_run == run.decision_run))
        if len(o) == 0:
            continue
        o = o.drop(columns=[c for c in ("order_id", "source", "ingested_at") if c in o.columns])
        rows = d.merge(o, on=["decision_run", "subscriber_id"], how="inner")
        rows = rows[rows[f"churned_{window}d"].notna()]
        if len(rows) == 0:
            continue
        raw = (inputs or {}).get(run.decision_run)
        if raw is None:
            if not run.input:
                raise DataError(f"run {run.decision_run} does not name the table it decided on",
                                hint="decide again with this version of retain")
            raw = read_table(run.input, what=f"input of run {run.decision_run}")
        raw = raw.assign(subscriber_id=raw["subscriber_id"].astype(str))
        raw = raw[[c for c in raw.columns if c not in rows.columns or c == "subscriber_id"]]
        rows = rows.assign(subscriber_id=rows["subscriber_id"].astype(str)).merge(raw, on="subscriber_id", how="inner")
        parts.append(rows)
    if not parts:
        raise DataError("no logged decision has an outcome for the "
                        f"{window}-day window yet", hint="ingest outcomes first (retain feedback ingest)")
    frame = pd.concat(parts, ignore_index=True)
    frame["treated"] = (frame["status"] == STATUS_OFFER).to_numpy()
    frame["churned"] = frame[f"churned_{window}d"].astype(bool).astype(int)
    contacted = frame["contacted"].fillna(False).astype(bool).to_numpy()
    accepted = frame["accepted"].fillna(False).astype(bool).to_numpy()
    frame["cost"] = (frame["channel_cost"].fillna(0).to_numpy() * contacted
                     + frame["offer_cost"].fillna(0).to_numpy() * accepted)
    status = frame["status"].to_numpy(dtype=object)
    derived = np.where(status == STATUS_OFFER, 1 - share, np.where(status == STATUS_CONTROL, share, 1.0))
    logged = (pd.to_numeric(frame["propensity"], errors="coerce").to_numpy(dtype=float)
              if "propensity" in frame.columns else np.full(len(frame), np.nan))
    has = np.isfinite(logged) & (logged > 0)
    frame["propensity"] = np.where(has, logged, derived)
    frame["propensity_source"] = np.where(has, "logged", "derived")
    return frame


def logged_actions(frame: pd.DataFrame) -> np.ndarray:
    """Action key per logged row: 'offer|channel' when it was sent, `NO_CONTACT` otherwise (control included)."""
    from engine.uplift.ope import NO_CONTACT, action_keys

    keys = action_keys(frame["offer_id"].to_numpy(dtype=object), frame["channel"].to_numpy(dtype=object))
    return np.where(frame["treated"].to_numpy(dtype=bool), keys, NO_CONTACT)


def training_arrays(frame: pd.DataFrame) -> dict[str, Any]:
    """fit_uplift's keyword arrays from a logged frame (randomised control = the control group)."""
    return {"offer_id": frame["offer_id"].to_numpy(dtype=object), "treated": frame["treated"].to_numpy(dtype=bool),
            "churned": frame["churned"].to_numpy(), "channel": frame["channel"].to_numpy(dtype=object),
            "randomised_control": (frame["status"] == STATUS_CONTROL).to_numpy()}
