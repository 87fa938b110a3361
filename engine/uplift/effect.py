"""The incremental effect of an offer, tau(x, offer) = P(churn | no contact, x) - P(churn | offer, x).

**Learning (T-learner on CatBoost).** From logged decisions and outcomes: one classifier of churn for the
no-contact arm, fitted on every logged subscriber nobody contacted on purpose (the control group, plus by
default the subscribers the policies or arbitration left alone: their decision is a function of the same
observed rows, so given x their churn is the no-contact churn), and one classifier per offer fitted on the
subscribers treated with that offer (by original assignment, like the report's uplift; the channel is a
feature, reach differs by channel). tau is the difference of the two predictions.

**Shrinkage toward a prior effect per offer.** A per-offer model fitted on a few hundred rows is mostly
noise, so each offer's model effect is pulled toward a prior effect:

    tau(x, o) = w_o x tau_model(x, o) + (1 - w_o) x prior_o,    w_o = n_o / (n_o + k)

with n_o = 1 / (1 / treated_o + 1 / control_o) the effective size of the randomised comparison behind
offer o (treated_o: subscribers treated with o, control_o: control-group subscribers who would have had
o; the variance of a difference of two rates scales with 1 / treated + 1 / control). This is the posterior
mean of a normal prior around prior_o: k = sigma^2 / s^2 with sigma^2 ~ 0.2 the variance of a churn outcome
and s = 0.05 the prior's standard deviation (an offer's effect is believed within about +-0.1 of its
prior), so k = 80 (`PRIOR_STRENGTH`, in subscribers). With k = 80: 50 treated vs 50 control (n = 25) keep
76% of the prior; 2,000 vs 200 (n = 182) 31%; 20,000 vs 2,000 (n = 1,818) 4%.

prior_o is the offer's configured effect (offers.yaml `effect:`) when it has one, else the pooled effect of
all offers measured on the control group (control churn - treated churn over every logged offer: empirical
Bayes, an unknown offer is taken to work like the average one), else `DEFAULT_PRIOR_EFFECT` (0). Offers
with fewer than `MIN_TREATED` treated subscribers or no control subscriber get no model (w = 0: the prior
alone), as does everything when the no-contact arm has fewer than `MIN_CONTROL` rows.

**Using it.** `incremental_effect(loaded_or_None, frame, offer_ids, priors)` gives tau per candidate row;
with no uplift model it returns the priors, and `effect_note(None)` is the line the output should carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

from engine.data.frames import column_values
from engine.model.portable.features import FeaturePipeline
from engine.uplift.portable.model import CHANNEL_FEATURE, UpliftModel

#: k: how many subscribers' worth of evidence an offer's prior effect counts for.
PRIOR_STRENGTH = 80.0
#: An offer needs this many treated subscribers (and one control subscriber) for a model of its own.
MIN_TREATED = 50
#: The no-contact arm needs this many rows, else every offer gets its prior.
MIN_CONTROL = 50
#: Prior effect of an offer whose catalogue entry has none: no evidence, no spend.
DEFAULT_PRIOR_EFFECT = 0.0
#: The line decisions and reports carry when tau comes from the priors alone.
PRIOR_NOTE = "prior effects used: no uplift model"
CATBOOST_PARAMS = {"iterations": 300, "depth": 4, "learning_rate": 0.05, "l2_leaf_reg": 10.0}


def shrinkage_weight(treated: float, control: float, k: float = PRIOR_STRENGTH) -> float:
    """w = n / (n + k) with n = 1 / (1 / treated + 1 / control); 0 without treated or control rows."""
    if treated <= 0 or control <= 0:
        return 0.0
    n = 1.0 / (1.0 / treated + 1.0 / control)
    return float(n / (n + k)) if k > 0 else 1.0


def priors_from_offers(offers: Iterable[Any] | Mapping[str, Any], default: float | None = None
                       ) -> dict[str, float]:
    """offer id -> prior effect, from the policy set's offers (`effect:` in offers.yaml). Offers without one
    are left out (the model's pooled prior applies to them), or get `default` when it is given.

    Accepts offer objects (attributes `id`, `effect`), a mapping id -> offer, or id -> number.
    """
    items = offers.items() if isinstance(offers, Mapping) else ((getattr(o, "id", None), o) for o in offers)
    out = {}
    for oid, o in items:
        value = o if isinstance(o, int | float) else getattr(o, "effect", None)
        if isinstance(o, Mapping):
            value = o.get("effect")
        if value is None and default is None:
            continue
        out[str(oid)] = float(default if value is None else value)
    return out


def _booster(seed: int, threads: int, params: Mapping[str, Any] | None) -> CatBoostClassifier:
    return CatBoostClassifier(**{**CATBOOST_PARAMS, **(params or {})}, random_seed=seed, thread_count=threads,
                              verbose=False, allow_writing_files=False)


def fit_uplift(frame: pd.DataFrame, *, offer_id: Any, treated: Any, churned: Any, pipeline: FeaturePipeline,
               channel: Any = None, randomised_control: Any = None, priors: Mapping[str, float] | None = None,
               prior_default: float | None = None, prior_strength: float = PRIOR_STRENGTH,
               min_treated: int = MIN_TREATED, min_control: int = MIN_CONTROL, seed: int = 0, threads: int = 1,
               params: Mapping[str, Any] | None = None, extra_spec: Mapping[str, Any] | None = None) -> UpliftModel:
    """Fit the T-learner of the module docs on logged rows.

    `frame`: raw subscriber rows (what `pipeline` takes); per row `offer_id` (the offer given, or that a
    control subscriber would have had; None for no offer), `treated` (sent the offer), `churned` (0/1 within
    the chosen window), `channel` (of the offer). `randomised_control`: rows held back at random (the control
    group; default: untreated rows that carry an offer id) - they size the shrinkage. Every untreated row
    trains the no-contact arm. `pipeline` may be unfitted (it is fitted on `frame`).
    """
    offer = np.array([o if isinstance(o, str) and o else None for o in np.asarray(offer_id, dtype=object)],
                     dtype=object)
    t = np.asarray(treated, dtype=bool)
    y = np.asarray(churned, dtype=float).astype(int)
    chan = (np.full(len(frame), "__missing__", dtype=object) if channel is None else
            np.array([c if isinstance(c, str) else "__missing__" for c in np.asarray(channel, dtype=object)],
                     dtype=object))
    has_offer = np.array([o is not None for o in offer])
    ctrl = (~t & has_offer) if randomised_control is None else np.asarray(randomised_control, dtype=bool)
    if not hasattr(pipeline, "feature_names_"):
        pipeline.fit(frame)
    feats = pipeline.transform(frame)
    cat = list(pipeline.categorical_features_)
    boosters: dict[str, CatBoostClassifier] = {}
    no_contact = np.flatnonzero(~t)
    control_ok = len(no_contact) >= min_control and len(np.unique(y[no_contact])) == 2
    if control_ok:
        b = _booster(seed, threads, params)
        b.fit(Pool(feats.iloc[no_contact], y[no_contact], cat_features=cat))
        boosters["control"] = b
    prior_of = dict(priors or {})
    pooled = pooled_effect(y, t, ctrl, has_offer)
    if prior_default is None:
        prior_default = pooled if pooled is not None else DEFAULT_PRIOR_EFFECT
    offers: dict[str, dict[str, Any]] = {}
    for o in sorted(set(offer[has_offer])):
        rows = np.flatnonzero(t & (offer == o))
        n_t, n_c = len(rows), int((ctrl & (offer == o)).sum())
        fitted = control_ok and n_t >= min_treated and n_c > 0 and len(np.unique(y[rows])) == 2
        if fitted:
            b = _booster(seed, threads, params)
            b.fit(Pool(feats.iloc[rows].assign(**{CHANNEL_FEATURE: chan[rows]}), y[rows],
                       cat_features=[*cat, CHANNEL_FEATURE]))
            boosters[o] = b
        channels = pd.Series(chan[rows]).value_counts() if n_t else pd.Series(dtype=int)
        offers[o] = {"fitted": bool(fitted), "weight": shrinkage_weight(n_t, n_c, prior_strength) if fitted else 0.0,
                     "prior": float(prior_of.get(o, prior_default)), "n_treated": n_t, "n_control": n_c,
                     "default_channel": str(channels.index[0]) if len(channels) else None,
                     "channels": [str(c) for c in channels.index]}
    for o, p in prior_of.items():  # offers in the catalogue but never logged: their prior
        offers.setdefault(o, {"fitted": False, "weight": 0.0, "prior": float(p), "n_treated": 0, "n_control": 0,
                              "default_channel": None, "channels": []})
    spec = {"offers": offers, "prior_default": float(prior_default), "pooled_effect": pooled,
            "prior_strength": float(prior_strength),
            "min_treated": min_treated, "min_control": min_control, "no_contact_rows": int(len(no_contact)),
            "control_fitted": bool(control_ok), "thread_count": threads, **(extra_spec or {})}
    return UpliftModel.from_parts(pipeline, boosters, spec)


def pooled_effect(churned: np.ndarray, treated: np.ndarray, control: np.ndarray, has_offer: np.ndarray,
                  min_rows: int = 20) -> float | None:
    """Control churn - treated churn over every logged offer (None with fewer than `min_rows` in an arm)."""
    t = treated & has_offer
    c = control & has_offer
    if t.sum() < min_rows or c.sum() < min_rows:
        return None
    return float(churned[c].mean() - churned[t].mean())


def _model_of(loaded: Any) -> UpliftModel | None:
    if loaded is None:
        return None
    inner = getattr(loaded, "model", loaded)
    return inner if getattr(type(inner), "retain_model", None) == "uplift" else None


def incremental_effect(loaded: Any, frame: pd.DataFrame, offer_ids: Any, priors: Mapping[str, float] | None = None,
                       *, channels: Any = None, default: float = DEFAULT_PRIOR_EFFECT) -> np.ndarray:
    """tau per candidate row: the uplift model's (shrunk toward `priors`) or, with `loaded` None, the priors.

    `loaded`: a `LoadedUplift` (engine.uplift.registry.load_uplift), a bare UpliftModel, or None.
    `frame`: raw subscriber rows, one per candidate (same length as `offer_ids`); `channels` optional.
    Rows without an offer get 0. Say `effect_note(loaded)` in the output when it is not None.
    """
    offer = np.asarray(offer_ids, dtype=object).reshape(-1)
    model = _model_of(loaded)
    if model is None:
        prior_of = dict(priors or {})
        return np.array([float(prior_of.get(o, default)) if isinstance(o, str) and o else 0.0 for o in offer])
    return model.effect(frame, offer, channels, priors=dict(priors) if priors else None)


def effect_note(loaded: Any) -> str | None:
    """`PRIOR_NOTE` when there is no uplift model to use, else None."""
    return PRIOR_NOTE if _model_of(loaded) is None else None


def incremental_net_value(cands: pd.DataFrame, rows: pd.DataFrame, loaded: Any,
                          priors: Mapping[str, float] | None, horizon_months: float) -> pd.DataFrame:
    """A candidates frame valued on its incremental effect, for `arbitration: incremental_value`.

    `cands`: the output of arbitration's `expected_net_value` (needs offer_id, channel, value_kept,
    total_cost); `rows`: the raw subscriber row of each candidate, aligned with `cands` (e.g.
    `scored.iloc[cands['row']]`). Returns a copy with `tau`, `expected_saved_value` = tau x value kept x
    horizon and `net_value` = expected_saved_value - total_cost (the acceptance-based columns are replaced).
    """
    out = cands.copy()
    tau = incremental_effect(loaded, rows.reset_index(drop=True), column_values(out, "offer_id", object), priors,
                             channels=column_values(out, "channel", object))
    out["tau"] = tau
    out["expected_saved_value"] = tau * column_values(out, "value_kept", float) * horizon_months
    out["net_value"] = out["expected_saved_value"] - column_values(out, "total_cost", float)
    return out
