"""Off-policy evaluation: what a different policy would have achieved, from decisions logged under another.

Every logged row i has the action taken a_i (an action key: "offer_id|channel", or `NO_CONTACT`), the
probability p_i with which the logging policy took it (its propensity: exploration and control group
included), and rewards r_i (here: stayed = 1 - churned, cost, net value). The target policy pi gives each
row an action pi_i (deterministic). With w_i = [a_i = pi_i] / p_i:

- **IPS** (inverse propensity): V = sum_i w_i r_i. Unbiased when every action pi takes has p > 0.
- **SNIPS** (self-normalised): V = n x sum_i w_i r_i / sum_i w_i. A little biased, far less variable.
- **DR** (doubly robust, Dudik et al. 2011): V = sum_i [q(x_i, pi_i) + w_i (r_i - q(x_i, a_i))] with q a
  reward model (e.g. the uplift model's churn under each arm, mean cost per action). Unbiased if either
  the propensities or q are right; variance shrinks as q gets better.

Estimates are totals over the logged rows. Saves are a contrast with sending nobody anything:
saves(pi) = V_stayed(pi) - V_stayed(no contact), estimated with the same estimator on the same rows (rows
where pi gives no contact add exactly 0 to IPS and DR). 95% intervals: percentile bootstrap over rows
(all estimators and components from the same resamples). Effective sample size of the target's weights,
ESS = (sum w)^2 / sum w^2 over the rows where pi contacts someone, says how many logged rows the estimate
effectively rests on.

**Refusal.** An estimate is refused (`OverlapError`, one line) when pi takes an action the logs never took
(zero logged propensity: nothing can be said about it), when a given support mask says pi acts where the
logging policy could not have, or when ESS is below `min_ess`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import RetainError

NO_CONTACT = "none"
ESTIMATORS = ("ips", "snips", "dr")
MIN_ESS = 100.0
BOOTSTRAP_ROUNDS = 500


class OverlapError(RetainError):
    """The logged decisions do not cover what the target policy does well enough to estimate it."""


@dataclass
class Estimate:
    value: float
    ci_low: float
    ci_high: float


@dataclass
class OPEResult:
    """estimates[component][estimator] -> Estimate; totals over `n` logged rows."""

    n: int
    ess: float
    matched: int
    changed: int
    estimates: dict[str, dict[str, Estimate]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "ess": self.ess, "matched": self.matched, "target_contacts": self.changed,
                "estimates": {c: {e: vars(v) for e, v in est.items()} for c, est in self.estimates.items()}}


def action_keys(offer_id: Any, channel: Any) -> np.ndarray:
    """'offer|channel' per row, `NO_CONTACT` where there is no offer."""
    offer = np.asarray(offer_id, dtype=object)
    chan = np.asarray(channel, dtype=object)
    return np.array([f"{o}|{c}" if isinstance(o, str) and o else NO_CONTACT for o, c in zip(offer, chan, strict=True)],
                    dtype=object)


def effective_sample_size(w: np.ndarray) -> float:
    s2 = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / s2) if s2 > 0 else 0.0


def check_overlap(logged: np.ndarray, propensity: np.ndarray, target: np.ndarray, *, min_ess: float = MIN_ESS,
                  support: np.ndarray | None = None) -> float:
    """Raise OverlapError (see the module docs) or return the ESS of the target's contacts."""
    contacts = target != NO_CONTACT
    seen = set(np.unique(logged[propensity > 0]).tolist())
    unseen = sorted(set(np.unique(target[contacts]).tolist()) - seen)
    if unseen:
        n = int(np.isin(target, unseen).sum())
        raise OverlapError(f"overlap too poor: the target policy takes {len(unseen)} action(s) the logged decisions "
                           f"never took (zero logged propensity), for {n:,} subscribers: {', '.join(unseen[:3])}"
                           f"{' ...' if len(unseen) > 3 else ''}",
                           hint="log decisions with exploration (a share chosen at random) before evaluating a "
                                "policy that acts differently")
    if support is not None:
        bad = int((~np.asarray(support, dtype=bool) & contacts).sum())
        if bad:
            raise OverlapError(f"overlap too poor: for {bad:,} subscribers the target policy takes an action the "
                               "logging policy could not have taken (zero propensity)",
                               hint="log decisions with exploration before evaluating this policy")
    w = np.where(logged == target, 1.0 / np.where(propensity > 0, propensity, np.inf), 0.0)
    ess = effective_sample_size(w[contacts])
    if contacts.any() and ess < min_ess:
        raise OverlapError(f"overlap too poor: effective sample size {ess:,.1f} < {min_ess:g} logged decisions "
                           f"agree with the target policy's {int(contacts.sum()):,} contacts",
                           hint="log more decisions, or with more exploration, before evaluating this policy")
    return ess


def _bootstrap_sums(cols: np.ndarray, rounds: int, seed: int, chunk: int = 25) -> np.ndarray:
    """(rounds, k) column sums over resampled rows (with replacement)."""
    n = cols.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((rounds, cols.shape[1]))
    for start in range(0, rounds, chunk):
        r = min(chunk, rounds - start)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(r)]).astype(float)
        out[start:start + r] = counts @ cols
    return out


def estimate(logged: Any, propensity: Any, target: Any, rewards: Mapping[str, Any], *,
             q_logged: Mapping[str, Any] | None = None, q_target: Mapping[str, Any] | None = None,
             q_baseline: Mapping[str, Any] | None = None, contrast: Mapping[str, bool] | None = None,
             rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0, min_ess: float = MIN_ESS,
             support: Any = None, alpha: float = 0.05) -> OPEResult:
    """IPS, SNIPS and DR totals of each reward component under the target policy (see the module docs).

    `logged`, `target`: action keys per row; `propensity`: P(logged action) per row; `rewards`: component ->
    per-row values. `q_logged` / `q_target` / `q_baseline`: component -> reward model at the logged action,
    the target action and no contact (DR; 0 when missing, which makes DR = IPS). `contrast`: component ->
    True to estimate V(target) - V(no contact) (default: only 'stayed', reported as 'saves').
    """
    a = np.asarray(logged, dtype=object)
    p = np.asarray(propensity, dtype=float)
    pi = np.asarray(target, dtype=object)
    n = len(a)
    if not (len(p) == len(pi) == n):
        raise ValueError("logged, propensity and target need one entry per row")
    ess = check_overlap(a, p, pi, min_ess=min_ess, support=support)
    inv = 1.0 / np.where(p > 0, p, np.inf)
    w_t = np.where(a == pi, inv, 0.0)
    w_b = np.where(a == NO_CONTACT, inv, 0.0)
    contrast = dict(contrast or {"stayed": True})
    cols, spec = [], []  # spec: (component, estimator, column indices)
    for comp, r in rewards.items():
        r = np.asarray(r, dtype=float)
        ql = np.asarray((q_logged or {}).get(comp, np.zeros(n)), dtype=float)
        qt = np.asarray((q_target or {}).get(comp, np.zeros(n)), dtype=float)
        qb = np.asarray((q_baseline or {}).get(comp, np.zeros(n)), dtype=float)
        diff = contrast.get(comp, False)
        base = len(cols)
        cols += [w_t * r, w_t, qt + w_t * (r - ql)]
        if diff:
            cols += [w_b * r, w_b, qb + w_b * (r - ql)]
        spec.append((comp, diff, base))
    mat = np.column_stack(cols)
    full = mat.sum(axis=0)
    boot = _bootstrap_sums(mat, rounds, seed)

    def values(s: np.ndarray, comp_base: int, diff: bool) -> dict[str, np.ndarray]:
        b = comp_base
        with np.errstate(divide="ignore", invalid="ignore"):
            v = {"ips": s[..., b], "snips": n * s[..., b] / s[..., b + 1], "dr": s[..., b + 2]}
            if diff:
                v = {"ips": v["ips"] - s[..., b + 3], "snips": v["snips"] - n * s[..., b + 3] / s[..., b + 4],
                     "dr": v["dr"] - s[..., b + 5]}
        return v

    result = OPEResult(n=n, ess=ess, matched=int(((a == pi) & (pi != NO_CONTACT)).sum()),
                       changed=int((pi != NO_CONTACT).sum()))
    for comp, diff, b in spec:
        point, dist = values(full, b, diff), values(boot, b, diff)
        name = "saves" if comp == "stayed" and diff else comp
        result.estimates[name] = {
            e: Estimate(float(point[e]), float(np.nanquantile(dist[e], alpha / 2)),
                        float(np.nanquantile(dist[e], 1 - alpha / 2))) for e in ESTIMATORS}
    return result
