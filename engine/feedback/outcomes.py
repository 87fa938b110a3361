"""Simulated contact outcomes from a known truth, so the whole loop can be run and its measurements checked.

Why a simulator of outcomes: a measured uplift is only worth trusting if, where the truth is known, it
lands within its confidence interval of that truth. The simulated month carries each subscriber's true
`churn` (would they leave this month without intervention) and true `churn_reason`; this module adds
what the retention team would report back, from a small causal story with every number in `Truth`:

1. **Contact.** Only treated subscribers (status ``offer``) are contacted, each with its channel's reach
   (an agent reaches 70%, an app pop-up is seen by 50%, a front-desk prompt needs a store visit: 30%).
   Control subscribers carry the offer they would have had, but nobody contacts them.
2. **Acceptance.** A contacted subscriber accepts with ``accept_match`` when the offer answers their
   TRUE reason, else ``accept_other``. Which reasons an offer answers comes from the configured
   acceptance priors: the reasons listed with a rate above that offer's default (``discount_15``
   answers price and competitor). Stayers have no true reason: every offer is a non-match for them.
3. **Saving.** Accepting prevents this month's churn with ``save_match`` (offer answers the reason)
   or ``save_other``. A save only matters for a true churner.
4. **Later months.** Everyone still there churns with ``later_churn`` per month in months 2 and 3
   (treated or not), so churn within 60 and 90 days is churn within 30 days plus that.
5. **Revenue after.** 3-month revenue: ARPU x months still active x lognormal noise.

So for a treated subscriber with true label c the expected churn reduction within 30 days is
``c x reach x P(accept) x P(save)``, and within 60/90 days that times ``(1 - later_churn)`` per later
month. `true_effects` averages it over the treated and control subscribers of each rule (offer,
channel, ...): since the control group is a random share of the same subscribers, that is exactly
what control churn minus treated churn estimates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.data.io import read_table
from engine.errors import DataError

WINDOWS = (30, 60, 90)


@dataclass(frozen=True)
class Truth:
    """The simulated world's rules. Defaults are plausible operator figures, not measurements."""

    reach: Mapping[str, float] = field(default_factory=lambda: {
        "vip_manager": 0.95, "outbound_call": 0.70, "voice_bot": 0.60, "sms": 0.90, "app_popup": 0.50,
        "front_desk": 0.30})
    reach_default: float = 0.7
    accept_match: float = 0.55
    accept_other: float = 0.10
    save_match: float = 0.60
    save_other: float = 0.15
    later_churn: float = 0.03
    revenue_noise: float = 0.10


TRUTH = Truth()


def answered_reasons(settings: Settings) -> dict[str, frozenset[str]]:
    """offer -> the churn reasons it answers: those whose configured acceptance beats the offer's default."""
    cfg = settings.arbitration
    out = {}
    for offer, rates in cfg.acceptance.items():
        base = rates.get("default", cfg.acceptance_default)
        out[offer] = frozenset(r for r, rate in rates.items() if r != "default" and rate > base)
    return out


def load_run(decisions_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The decision table of a decisions folder joined with the true `churn` and `churn_reason` of its input."""
    folder = Path(decisions_dir)
    table = read_table(folder / "decisions.parquet", what="decisions")
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        raise DataError(f"'{folder}' has no summary.json; is it a decisions folder written by `retain decide`?")
    summary = json.loads(summary_path.read_text())
    source = summary.get("input")
    if not source:
        raise DataError(f"'{summary_path}' does not name the input the run decided on ('input')",
                        hint="decide again with this version of retain")
    month = read_table(source, what="decided-on input")
    if "churn" not in month.columns:
        raise DataError(f"input '{source}' has no 'churn' column: outcomes can only be simulated for a simulated "
                        "month (retain data generate)")
    labels = month[["subscriber_id", "churn"] + (["churn_reason"] if "churn_reason" in month else [])].copy()
    labels["subscriber_id"] = labels["subscriber_id"].astype(str)
    table = table.assign(subscriber_id=table["subscriber_id"].astype(str))
    merged = table.merge(labels, on="subscriber_id", how="left", validate="one_to_one")
    if merged["churn"].isna().any():
        n = int(merged["churn"].isna().sum())
        raise DataError(f"{n:,} decided subscribers are not in input '{source}'; was the input changed after "
                        "the run?")
    if "churn_reason" not in merged:
        merged["churn_reason"] = None
    orders_dir = folder / "work_orders"
    orders = [pd.read_csv(f, usecols=["order_id", "subscriber_id"], dtype=str)
              for f in sorted(orders_dir.glob("*.csv"))] if orders_dir.is_dir() else []
    orders = [o for o in orders if len(o)]
    if orders:
        merged = merged.merge(pd.concat(orders, ignore_index=True), on="subscriber_id", how="left")
    else:
        merged["order_id"] = None
    return merged, summary


def _effect_parts(frame: pd.DataFrame, settings: Settings, truth: Truth) -> pd.DataFrame:
    """Per subscriber: reach, P(accept | contacted), P(save | accepted) of the offer it has (or would have)."""
    answers = answered_reasons(settings)
    offer = frame["offer_id"].astype(object).to_numpy()
    reason = frame["churn_reason"].astype(object).to_numpy()
    match = np.array([isinstance(o, str) and isinstance(r, str) and r in answers.get(o, ())
                      for o, r in zip(offer, reason, strict=True)], dtype=bool)
    reach = frame["channel"].map(dict(truth.reach)).fillna(truth.reach_default).to_numpy(dtype=float)
    return pd.DataFrame({
        "match": match,
        "reach": reach,
        "p_accept": np.where(match, truth.accept_match, truth.accept_other),
        "p_save": np.where(match, truth.save_match, truth.save_other),
    }, index=frame.index)


def simulate_outcomes(decisions_dir: str | Path, seed: int = 0, *, settings: Settings | None = None,
                      truth: Truth = TRUTH) -> pd.DataFrame:
    """One outcome row per decided subscriber, drawn from `truth` (deterministic for a seed).

    Columns: order_id (treated only), decision_run, subscriber_id, contacted, accepted, churned_30d,
    churned_60d, churned_90d, revenue_after: the file `retain feedback ingest` takes.
    """
    if settings is None:
        from engine.config import load_settings

        settings = load_settings()
    frame, summary = load_run(decisions_dir)
    parts = _effect_parts(frame, settings, truth)
    n = len(frame)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    u = rng.random((5, n))
    treated = (frame["status"] == "offer").to_numpy()
    churn = frame["churn"].to_numpy(dtype=float) > 0.5
    contacted = treated & (u[0] < parts["reach"].to_numpy())
    accepted = contacted & (u[1] < parts["p_accept"].to_numpy())
    saved = churn & accepted & (u[2] < parts["p_save"].to_numpy())
    churned_30 = churn & ~saved
    churned_60 = churned_30 | (u[3] < truth.later_churn)
    churned_90 = churned_60 | (u[4] < truth.later_churn)
    months = np.where(churned_30, 0, np.where(churned_60, 1, np.where(churned_90, 2, 3)))
    arpu = frame["arpu_m0"].to_numpy(dtype=float) if "arpu_m0" in frame else np.zeros(n)
    noise = np.exp(truth.revenue_noise * rng.standard_normal(n))
    revenue = np.round(arpu * months * noise, 2)
    order = frame["order_id"].astype(object).where(frame["order_id"].notna(), None) if "order_id" in frame \
        else pd.Series(None, index=frame.index, dtype=object)
    return pd.DataFrame({
        "order_id": order.to_numpy(),
        "decision_run": str(summary.get("decision_run") or frame["decision_run"].iloc[0]),
        "subscriber_id": frame["subscriber_id"].to_numpy(),
        "contacted": contacted,
        "accepted": accepted,
        "churned_30d": churned_30,
        "churned_60d": churned_60,
        "churned_90d": churned_90,
        "revenue_after": revenue,
    })


def subscriber_effects(frame: pd.DataFrame, settings: Settings, *, window: int = 90,
                       truth: Truth = TRUTH) -> np.ndarray:
    """Per row: the expected churn reduction (within `window` days) if the row's offer_id/channel is sent.

    `frame` needs offer_id, channel, churn and churn_reason (a decision table joined with the truth, as
    `load_run` returns it). Rows without an offer get their offer's non-match effect (0 without offer_id).
    """
    parts = _effect_parts(frame, settings, truth)
    later = (1 - truth.later_churn) ** WINDOWS.index(window)
    has_offer = frame["offer_id"].notna().to_numpy()
    return np.where(has_offer, frame["churn"].to_numpy(dtype=float) * parts["reach"].to_numpy()
                    * parts["p_accept"].to_numpy() * parts["p_save"].to_numpy() * later, 0.0)


def true_effects(decisions_dir: str | Path, *, by: str | None = "rule_id", window: int = 90,
                 settings: Settings | None = None, truth: Truth = TRUTH) -> pd.DataFrame:
    """The expected churn reduction per treated subscriber (uplift), per group, under `truth`.

    Averaged over the group's treated and control subscribers (its would-be recipients), as the measured
    uplift (control churn - treated churn) estimates it. `by=None` gives one overall row.
    """
    if window not in WINDOWS:
        raise DataError(f"window must be one of {', '.join(map(str, WINDOWS))} days, got {window}")
    if settings is None:
        from engine.config import load_settings

        settings = load_settings()
    frame, _ = load_run(decisions_dir)
    frame = frame[frame["status"].isin(["offer", "control"])]
    effect = subscriber_effects(frame, settings, window=window, truth=truth)
    data = pd.DataFrame({"group": frame[by].to_numpy() if by else "all", "effect": effect,
                         "treated": (frame["status"] == "offer").to_numpy()})
    out = data.groupby("group", sort=True).agg(subscribers=("effect", "size"), treated=("treated", "sum"),
                                               true_uplift=("effect", "mean")).reset_index()
    return out.rename(columns={"group": by or "group"})

