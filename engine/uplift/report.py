"""What `retain report` can add from the uplift side: Qini per offer, and cost spent without a measured effect.

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

from engine.config import Settings
from engine.uplift.metrics import uplift_metrics
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
