"""What `retain report` adds from the uplift side: Qini per offer, and cost spent without a measured effect.

- `spend_report(settings, run, ...)`: engine.feedback.report.build_report plus the two figures below, what
  `retain report` runs (the measurement lives in engine.feedback; this package reads it, never the reverse).
- `qini_by_offer(store, runs, window)`: per offer, from the store alone (decisions, outcomes, control group),
  the Qini curve and coefficient of the decisions' own expected saved value (engine/feedback/report.py docs).

- `qini_per_offer(settings, runs, loaded_uplift)`: per offer, on logged rows with an outcome, how well the
  uplift model's tau ranks that offer's treated vs control subscribers (Qini coefficient, AUUC, uplift@k),
  with treated/control counts, the mean tau and the observed uplift (stayed rates, treated - control).
  The curves themselves: engine.uplift.metrics.qini_curve on the same arrays.
- `cost_without_effect(table)`: from the report's per-offer (or per-rule) table - columns uplift, ci_low,
  ci_high, cost - the cost spent on groups whose 95% interval includes 0 ("cost spent where the measured
  effect is indistinguishable from zero"), in total and per group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from engine.config import Settings
from engine.uplift.metrics import qini_curve, uplift_metrics
from engine.uplift.portable.model import CHANNEL, OFFER

#: Per-offer metrics need this many rows in each arm.
MIN_EVAL = 20


def qini_per_offer(settings: Settings, runs: list[str] | None, loaded_uplift: Any, *, window: int = 90,
                   url: str | None = None, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per offer: treated, control, mean_tau, observed_uplift, qini, auuc, uplift_at_10, uplift_at_30."""
    from engine.uplift.data import logged_frame

    model = getattr(loaded_uplift, "model", loaded_uplift)
    frame = frame if frame is not None else logged_frame(settings, runs, window=window, url=url)
    _, per_offer = evaluate_uplift(model, frame)
    return pd.DataFrame(per_offer)


def evaluate_uplift(model: Any, frame: pd.DataFrame) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Qini, AUUC and uplift@k on logged rows with an offer (treated and control), overall and per offer."""
    rows = frame[frame[OFFER].notna() & frame["status"].isin(["offer", "control"])]
    if len(rows) == 0:
        return {}, []
    tau = model.effect(rows, rows[OFFER].to_numpy(dtype=object), rows[CHANNEL].to_numpy(dtype=object))
    y = 1 - rows["churned"].to_numpy()
    t = rows["treated"].to_numpy(dtype=float)
    overall = uplift_metrics(y, t, tau)
    per_offer = []
    offer = rows[OFFER].to_numpy(dtype=object)
    for o in sorted(set(offer)):
        m = offer == o
        n_t, n_c = int(t[m].sum()), int(m.sum() - t[m].sum())
        entry: dict[str, Any] = {"offer_id": o, "treated": n_t, "control": n_c, "mean_tau": float(tau[m].mean()),
                                 "observed_uplift": float(y[m][t[m] == 1].mean() - y[m][t[m] == 0].mean())
                                 if n_t and n_c else float("nan")}
        if n_t >= MIN_EVAL and n_c >= MIN_EVAL:
            entry.update({k: v for k, v in uplift_metrics(y[m], t[m], tau[m]).items()
                          if k not in ("n", "treated", "control")})
        per_offer.append(entry)
    return overall, per_offer


def cost_without_effect(table: pd.DataFrame, key: str = "offer_id") -> tuple[float, pd.DataFrame]:
    """(total cost, the groups) where the measured uplift's 95% interval includes 0."""
    t = table.dropna(subset=["ci_low", "ci_high"])
    zero = t[(t["ci_low"].to_numpy() <= 0) & (t["ci_high"].to_numpy() >= 0)]
    cols = [c for c in (key, "uplift", "ci_low", "ci_high", "cost") if c in zero.columns]
    return float(np.nansum(zero["cost"].to_numpy(dtype=float))), zero[cols].reset_index(drop=True)


def spend_report(settings: Settings, run: str | None = None, *, window: int = 90, overdue: bool = False,
                 today: Any = None, url: str | None = None) -> Any:
    """`retain report`: the measurement report (engine.feedback.report.build_report) with the Qini per offer
    and the cost spent where the measured effect is indistinguishable from zero."""
    from engine.feedback.report import build_report
    from engine.feedback.store import open_store

    report = build_report(settings, run, window=window, overdue=overdue, today=today, url=url)
    report.no_effect_cost, report.no_effect = cost_without_effect(report.tables["offer_id"])
    report.headline["cost_without_measured_effect"] = report.no_effect_cost
    report.qini = qini_by_offer(open_store(settings, url=url), report.runs, window)
    return report


QINI_POINTS = 50


def qini_by_offer(store: Any, runs: list[str], window: int) -> pd.DataFrame:
    """Per offer (module docs): treated, control, qini, auuc, uplift_at_30 and the Qini curve as `curve_x`
    (share of the offer's subscribers targeted) and `curve_y` (extra stayers), at most QINI_POINTS points."""
    from engine.feedback.store import decisions as d
    from engine.feedback.store import outcomes as o

    churn = o.c[f"churned_{window}d"]
    q = (sa.select(d.c.offer_id, d.c.status, d.c.expected_saved_value, churn.label("churned"))
         .select_from(d.join(o, sa.and_(o.c.decision_run == d.c.decision_run,
                                        o.c.subscriber_id == d.c.subscriber_id)))
         .where(d.c.status.in_(["offer", "control"]), d.c.decision_run.in_(runs), churn.is_not(None),
                d.c.offer_id.is_not(None)))
    rows = store.read(q)
    columns = ["offer_id", "treated", "control", "qini", "auuc", "uplift_at_30", "curve_x", "curve_y"]
    out = []
    for offer, g in rows.groupby("offer_id", sort=True):
        t = (g["status"] == "offer").to_numpy(dtype=float)
        y = 1.0 - g["churned"].astype(bool).to_numpy(dtype=float)
        score = pd.to_numeric(g["expected_saved_value"], errors="coerce").fillna(0.0).to_numpy(dtype=float)
        entry: dict[str, Any] = {"offer_id": str(offer), "treated": int(t.sum()), "control": int(len(t) - t.sum()),
                                 "qini": float("nan"), "auuc": float("nan"), "uplift_at_30": float("nan"),
                                 "curve_x": [], "curve_y": []}
        if entry["treated"] >= MIN_EVAL and entry["control"] >= MIN_EVAL:
            m = uplift_metrics(y, t, score, ks=(0.3,))
            x, qv = qini_curve(y, t, score)
            keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), QINI_POINTS)).round().astype(int))
            entry.update(qini=m["qini"], auuc=m["auuc"], uplift_at_30=m["uplift_at_30"],
                         curve_x=[round(float(v), 4) for v in x[keep] / max(x[-1], 1)],
                         curve_y=[round(float(v), 3) for v in qv[keep]])
        out.append(entry)
    return pd.DataFrame(out, columns=columns)
