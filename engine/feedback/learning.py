"""Learning back: measured acceptance rates for arbitration, and the rules that do not earn their keep.

**Acceptance.** Arbitration values an offer by P(churn) x P(accept | offer, reason) x value kept. The
configured P(accept) are priors (a marketer's guess); outcomes measure it: of the subscribers contacted
with offer o whose churn reason was r, how many accepted. Raw rates from thin data would swing the
next run's choices on a handful of calls, so each measured rate is shrunk toward its prior with a
beta-binomial (empirical Bayes) estimate:

    learned = (accepted + k x prior) / (contacted + k)

i.e. the prior counts as ``k`` contacts' worth of evidence (a Beta(k x prior, k x (1 - prior)) prior,
and `learned` is its posterior mean). With the default k = 50, 10 contacts move the rate a sixth of the
way from the prior to the measured rate, 50 contacts halfway, 500 contacts 91% of the way. Pairs with
fewer than `min_n` contacts keep the prior unchanged (they are not returned). The key is the contract
of `engine.config.Arbitration.prior_acceptance`: (offer_id, reason), with reason as the model found it (what
arbitration sees), pooled over segments and runs. Acceptance is measured per *contacted* subscriber: a
channel's reach is not part of it.

**Rules.** `flagged_rules` measures every rule's uplift against its control subscribers (all stored
runs pooled, as `engine.feedback.report` does for one run) and returns those that are not shown to work, for
`retain policy validate` to print next to the policy problems.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from engine.config import Settings
from engine.errors import DataError
from engine.feedback.report import VERDICT_NO_DATA, RuleFlag, newcombe, verdict
from engine.feedback.store import decisions as decisions_table
from engine.feedback.store import open_store
from engine.feedback.store import outcomes as outcomes_table

#: k: how many contacts' worth of evidence the configured prior counts for.
PRIOR_STRENGTH = 50.0
#: Pairs with fewer contacts keep their prior.
MIN_CONTACTS = 10


def _true(col: sa.ColumnElement) -> sa.ColumnElement:
    return sa.func.sum(sa.case((col.is_(True), 1), else_=0))


def acceptance_table(settings: Settings, *, k: float = PRIOR_STRENGTH, url: str | None = None,
                     runs: list[str] | None = None) -> pd.DataFrame:
    """Per (offer_id, reason): contacted, accepted, measured rate, prior, learned rate, weight of the data."""
    if k < 0:
        raise DataError(f"prior strength k must be >= 0, got {k}")
    cols = ["offer_id", "reason", "contacted", "accepted", "measured", "prior", "learned", "data_weight"]
    store = open_store(settings, url=url, create=False)
    if store is None:
        return pd.DataFrame(columns=cols)
    d, o = decisions_table, outcomes_table
    q = (sa.select(d.c.offer_id, d.c.reason, sa.func.count().label("contacted"), _true(o.c.accepted).label("accepted"))
         .select_from(d.join(o, sa.and_(o.c.decision_run == d.c.decision_run,
                                        o.c.subscriber_id == d.c.subscriber_id)))
         .where(d.c.status == "offer", o.c.contacted.is_(True), o.c.accepted.is_not(None), d.c.offer_id.is_not(None))
         .group_by(d.c.offer_id, d.c.reason).order_by(d.c.offer_id, d.c.reason))
    if runs:
        q = q.where(d.c.decision_run.in_(runs))
    t = store.read(q)
    if len(t) == 0:
        return pd.DataFrame(columns=cols)
    t["reason"] = t["reason"].fillna("none")
    t["contacted"] = t["contacted"].astype(int)
    t["accepted"] = t["accepted"].fillna(0).astype(int)
    t["measured"] = t["accepted"] / t["contacted"]
    t["prior"] = settings.arbitration.prior_acceptance(t["offer_id"].to_numpy(dtype=object),
                                                        t["reason"].to_numpy(dtype=object))
    t["learned"] = shrink(t["accepted"].to_numpy(), t["contacted"].to_numpy(), t["prior"].to_numpy(), k)
    t["data_weight"] = t["contacted"] / (t["contacted"] + k)
    return t[cols]


def shrink(accepted: np.ndarray, contacted: np.ndarray, prior: np.ndarray, k: float = PRIOR_STRENGTH) -> np.ndarray:
    """Posterior mean of a Beta(k x prior, k x (1 - prior)) prior after `accepted` of `contacted`."""
    a, n, p = (np.asarray(x, dtype=float) for x in (accepted, contacted, prior))
    if k == 0:
        return np.where(n > 0, a / np.maximum(n, 1), p)
    return (a + k * p) / (n + k)


def learned_acceptance(settings: Settings, *, min_n: int = MIN_CONTACTS, k: float = PRIOR_STRENGTH,
                       url: str | None = None) -> dict[tuple[str, str], float]:
    """{(offer_id, reason): learned P(accept)} for pairs with >= `min_n` contacts; pass it to arbitration.

    Empty when there is no store or no outcome yet, so the configured priors apply unchanged.
    """
    t = acceptance_table(settings, k=k, url=url)
    t = t[t["contacted"] >= min_n]
    return {(str(o), str(r)): float(v) for o, r, v in zip(t["offer_id"], t["reason"], t["learned"], strict=True)}


def rule_uplift(settings: Settings, *, window: int = 90, url: str | None = None,
                runs: list[str] | None = None) -> pd.DataFrame:
    """Per rule, all stored runs pooled: treated/control counts, churn, uplift, Newcombe 95% CI, verdict."""
    cols = ["rule_id", "n_treated", "n_control", "churn_treated", "churn_control", "uplift", "ci_low", "ci_high",
            "verdict"]
    if window not in (30, 60, 90):
        raise DataError(f"window must be 30, 60 or 90 days, got {window}")
    store = open_store(settings, url=url, create=False)
    if store is None:
        return pd.DataFrame(columns=cols)
    d, o = decisions_table, outcomes_table
    churn = o.c[f"churned_{window}d"]
    q = (sa.select(d.c.rule_id, d.c.status, sa.func.count().label("n"), _true(churn).label("churned"))
         .select_from(d.join(o, sa.and_(o.c.decision_run == d.c.decision_run,
                                        o.c.subscriber_id == d.c.subscriber_id)))
         .where(d.c.status.in_(["offer", "control"]), d.c.rule_id.is_not(None), churn.is_not(None))
         .group_by(d.c.rule_id, d.c.status))
    if runs:
        q = q.where(d.c.decision_run.in_(runs))
    t = store.read(q)
    if len(t) == 0:
        return pd.DataFrame(columns=cols)
    wide = t.pivot_table(index="rule_id", columns="status", values=["n", "churned"], aggfunc="sum", fill_value=0)

    def get(measure: str, status: str) -> np.ndarray:
        key = (measure, status)
        return wide[key].to_numpy(dtype=float) if key in wide.columns else np.zeros(len(wide))

    nt, ct, nc, cc = get("n", "offer"), get("churned", "offer"), get("n", "control"), get("churned", "control")
    uplift, low, high = newcombe(cc, nc, ct, nt)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame({"rule_id": wide.index.astype(str), "n_treated": nt.astype(int), "n_control": nc.astype(int),
                            "churn_treated": ct / nt, "churn_control": cc / nc, "uplift": uplift, "ci_low": low,
                            "ci_high": high})
    out["verdict"] = [verdict(u, lo, hi, a, b) for u, lo, hi, a, b in
                      zip(uplift, low, high, out["n_treated"], out["n_control"], strict=True)]
    return out[cols].reset_index(drop=True)


def flagged_rules(settings: Settings, *, window: int = 90, url: str | None = None) -> list[RuleFlag]:
    """Rules with outcomes whose uplift is not shown to be above zero, worst first (empty without a store).

    For `retain policy validate`: print `flag.line()` for each, as warnings (they do not make a policy invalid).
    """
    t = rule_uplift(settings, window=window, url=url)
    t = t[(t["verdict"] != "works") & (t["verdict"] != VERDICT_NO_DATA)].sort_values(["uplift", "rule_id"],
                                                                                      na_position="first")
    return [RuleFlag(r.rule_id, r.verdict, float(r.uplift), float(r.ci_low), float(r.ci_high), int(r.n_treated),
                     int(r.n_control)) for r in t.itertuples()]
