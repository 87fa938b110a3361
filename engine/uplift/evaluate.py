"""`retain policy evaluate` (alias `retain uplift evaluate`): what a changed policy set (or arbitration mode)
would have achieved on logged runs.

Logged rows come from the decision store with their outcomes and propensities (engine.uplift.data). The
target policy's action per row comes from a callback, `target_actions(frame) -> DataFrame[offer_id, channel]`
(one row per logged row, same order; no offer = no contact). The CLI's default callback
(engine.decision.run.policy_target) runs the shared decide function with the new policy set on the logged
subscribers' raw rows, the action being the policy's choice before the control group is held back. It lives
above engine.decision, not here, because the decision core imports engine.uplift (incremental_effect):
engine.uplift never imports engine.decision.

Rewards per row: stayed (1 - churned within the window), cost (channel cost per contact + offer cost per
acceptance, as the report counts it) and net value = stayed x value - cost with value = arpu x horizon
months (the revenue a stayer brings over the arbitration horizon). Saves and net value are contrasts with
contacting nobody (engine.uplift.ope). The DR reward model: the uplift model when one is given (churn under
no contact from its control arm, minus tau of the action), else the mean outcome of each logged action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.uplift.data import logged_actions, logged_frame
from engine.uplift.ope import BOOTSTRAP_ROUNDS, MIN_ESS, NO_CONTACT, OPEResult, action_keys, estimate

TargetActionsFn = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass
class PolicyEvaluation:
    runs: list[str]
    window: int
    result: OPEResult
    logged: dict[str, float]  # what the logging policy did: saves are not observable, cost and contacts are
    reward_model: str
    propensities: str = "logged"  # where the logged propensities came from (see engine.uplift.data)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "window": self.window, "reward_model": self.reward_model, "logged": self.logged,
                "propensities": self.propensities,
                **self.result.as_dict()}


def _mean_by_action(keys: np.ndarray, values: np.ndarray) -> dict[str, float]:
    s = pd.Series(values).groupby(keys).mean()
    return {str(k): float(v) for k, v in s.items()}


def evaluate_policy(settings: Settings, *, target_actions: TargetActionsFn, runs: list[str] | None = None,
                    uplift: Any = None, window: int = 90, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                    min_ess: float = MIN_ESS, url: str | None = None, frame: pd.DataFrame | None = None
                    ) -> PolicyEvaluation:
    """IPS / SNIPS / DR estimates of saves, cost and net value of the target policy on the logged runs.

    Raises engine.uplift.ope.OverlapError (one line) when the logs cannot support the estimate.
    `frame`: logged rows already read (engine.uplift.data.logged_frame), else read from the store.
    """
    frame = frame if frame is not None else logged_frame(settings, runs, window=window, url=url)
    n = len(frame)
    logged = logged_actions(frame)
    tgt = target_actions(frame)
    if len(tgt) != n:
        raise ValueError(f"target_actions returned {len(tgt)} rows for {n} logged rows")
    target = action_keys(tgt["offer_id"].to_numpy(dtype=object), tgt["channel"].to_numpy(dtype=object))
    stayed = 1.0 - frame["churned"].to_numpy(dtype=float)
    cost = frame["cost"].to_numpy(dtype=float)
    arpu = frame["arpu"] if "arpu" in frame.columns else frame.get("arpu_m0", pd.Series(0.0, index=frame.index))
    value = arpu.fillna(0).to_numpy(dtype=float) * settings.arbitration.horizon_months
    cost_of = _mean_by_action(logged, cost)
    cost_of[NO_CONTACT] = 0.0
    stay_of = _mean_by_action(logged, stayed)

    def q_stay(keys: np.ndarray, offer: np.ndarray | None, channel: np.ndarray | None) -> np.ndarray:
        if model is None or offer is None:
            return np.array([stay_of.get(k, np.nan) for k in keys])
        return 1.0 - (p0 - model.effect(frame, offer, channel))

    model = getattr(uplift, "model", uplift)
    reward_model = "mean outcome per logged action"
    p0 = None
    if model is not None and "control" in getattr(model, "boosters", {}):
        p0 = model.churn_under(frame, [None] * n)
        reward_model = f"uplift model {getattr(uplift, 'uri', '')}".strip()
    else:
        model = None
    sent = frame["treated"].to_numpy(dtype=bool)
    l_offer = np.where(sent, frame["offer_id"].to_numpy(dtype=object), None)
    l_chan = np.where(sent, frame["channel"].to_numpy(dtype=object), None)
    q_l = q_stay(logged, l_offer, l_chan)
    q_t = q_stay(target, tgt["offer_id"].to_numpy(dtype=object), tgt["channel"].to_numpy(dtype=object))
    q_b = q_stay(np.full(n, NO_CONTACT, dtype=object), np.full(n, None, dtype=object), None)
    fill = float(np.nanmean(q_l)) if np.isfinite(q_l).any() else 0.0
    q_l, q_t, q_b = (np.nan_to_num(q, nan=fill) for q in (q_l, q_t, q_b))
    c_l = np.array([cost_of.get(k, 0.0) for k in logged])
    c_t = np.array([cost_of.get(k, 0.0) for k in target])
    result = estimate(logged, frame["propensity"].to_numpy(dtype=float), target,
                      {"stayed": stayed, "cost": cost, "net_value": value * stayed - cost},
                      q_logged={"stayed": q_l, "cost": c_l, "net_value": value * q_l - c_l},
                      q_target={"stayed": q_t, "cost": c_t, "net_value": value * q_t - c_t},
                      q_baseline={"stayed": q_b, "net_value": value * q_b},
                      contrast={"stayed": True, "net_value": True}, rounds=rounds, seed=seed, min_ess=min_ess)
    summary = {"rows": float(n), "contacts": float(sent.sum()), "cost": float(cost.sum()),
               "control": float((frame["status"] == "control").sum())}
    source = frame["propensity_source"] if "propensity_source" in frame.columns else pd.Series(["logged"] * n)
    n_logged = int((source == "logged").sum())
    propensities = ("logged by retain decide" if n_logged == n else
                    "derived from the control-group share (runs recorded before propensities were stored)"
                    if n_logged == 0 else f"logged for {n_logged:,} of {n:,} rows, the rest derived from the "
                                          "control-group share")
    return PolicyEvaluation(runs=sorted(frame["decision_run"].astype(str).unique()), window=window, result=result,
                            logged=summary, reward_model=reward_model, propensities=propensities)
