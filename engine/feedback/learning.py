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

**Rules.** `flagged_rules` measures every rule's uplift against its control subscribers with the report's
own computation (`engine.feedback.report.rule_uplift`, all stored runs pooled) and returns the rows the
report flags, for `retain policy validate` to print next to the policy problems.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from engine.config import Settings, offer_prior_acceptance
from engine.errors import DataError, PolicyError
from engine.feedback.report import RuleFlag, check_window, flags_from
from engine.feedback.report import rule_uplift as report_rule_uplift
from engine.feedback.store import decisions as decisions_table
from engine.feedback.store import open_store
from engine.feedback.store import outcomes as outcomes_table
from engine.policy.loader import load_policy_set

#: k: how many contacts' worth of evidence the configured prior counts for.
PRIOR_STRENGTH = 50.0
#: Pairs with fewer contacts keep their prior.
MIN_CONTACTS = 10


def _true(col: sa.ColumnElement) -> sa.ColumnElement:
    return sa.func.sum(sa.case((col.is_(True), 1), else_=0))


def offer_priors(settings: Settings, policies: str | Path | None = None) -> dict[str, dict[str, float]] | None:
    """The acceptance priors of the policy set decide uses (`acceptance:` in offers.yaml), or None when there
    is no usable policy set here (then the settings' table stands in)."""
    folder = Path(policies or settings.policy_dir)
    if not folder.exists():
        return None
    try:
        return load_policy_set(folder).acceptance_priors
    except PolicyError:
        return None


def acceptance_table(settings: Settings, *, k: float = PRIOR_STRENGTH, url: str | None = None,
                     runs: list[str] | None = None, policies: str | Path | None = None) -> pd.DataFrame:
    """Per (offer_id, reason): contacted, accepted, measured rate, prior, learned rate, weight of the data.

    The prior is the offer's own in the policy set (`policies`, default the configured folder), the one
    arbitration uses, so measured rates are shrunk toward what decide would otherwise assume.
    """
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
    offers, reasons = t["offer_id"].to_numpy(dtype=object), t["reason"].to_numpy(dtype=object)
    priors = offer_priors(settings, policies)
    t["prior"] = (settings.arbitration.prior_acceptance(offers, reasons) if priors is None else
                  offer_prior_acceptance(offers, reasons, priors, settings.arbitration.acceptance_default))
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
                       url: str | None = None, policies: str | Path | None = None) -> dict[tuple[str, str], float]:
    """{(offer_id, reason): learned P(accept)} for pairs with >= `min_n` contacts; pass it to arbitration.

    Empty when there is no store or no outcome yet, so the configured priors apply unchanged.
    """
    t = acceptance_table(settings, k=k, url=url, policies=policies)
    t = t[t["contacted"] >= min_n]
    return {(str(o), str(r)): float(v) for o, r, v in zip(t["offer_id"], t["reason"], t["learned"], strict=True)}


def rule_uplift(settings: Settings, *, window: int = 90, url: str | None = None,
                runs: list[str] | None = None) -> pd.DataFrame:
    """Per rule, the stored runs (all, or `runs`) pooled: `engine.feedback.report.rule_uplift`, the report's table.

    Empty (with the report's columns) when there is no store or no run yet.
    """
    check_window(window)
    store = open_store(settings, url=url, create=False)
    chosen = [] if store is None else list(runs or store.runs()["decision_run"])
    if not chosen:
        return pd.DataFrame(columns=["rule_id", "n_treated", "n_control", "churn_treated", "churn_control", "uplift",
                                     "ci_low", "ci_high", "verdict", "flagged"])
    return report_rule_uplift(store, chosen, window)


def flagged_rules(settings: Settings, *, window: int = 90, url: str | None = None) -> list[RuleFlag]:
    """Rules not shown to work (`engine.feedback.report.FLAGGED_VERDICTS`), all stored runs pooled, worst first.

    The same rows the report flags (empty without a store or outcomes). For `retain policy validate`: print
    `flag.line()` for each, as warnings (they do not make a policy invalid).
    """
    return flags_from(rule_uplift(settings, window=window, url=url))
