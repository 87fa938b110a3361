"""The T-learner recovers a known effect; thin data stays near the prior; priors without a model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.model.portable.features import FeaturePipeline
from engine.uplift.effect import (
    PRIOR_NOTE,
    effect_note,
    fit_uplift,
    incremental_effect,
    priors_from_offers,
    shrinkage_weight,
)


def synthetic(n: int, seed: int = 0):
    """Offer 'a' removes 0.25 of churn where x2 > 0 (nothing elsewhere); offer 'b' does nothing."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"plan": rng.choice(["p1", "p2"], n), "x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    offer = rng.choice(["a", "b"], n)
    treated = rng.random(n) < 0.5
    p0 = 0.35 + 0.2 * (frame["x1"].to_numpy() > 0)
    tau = np.where((offer == "a") & (frame["x2"].to_numpy() > 0), 0.25, 0.0)
    churned = rng.random(n) < p0 - treated * tau
    return frame, offer, treated, churned.astype(int)


def _pipe():
    return FeaturePipeline(["plan"], ["x1", "x2"], derive=False)


def test_t_learner_recovers_known_effect():
    frame, offer, treated, churned = synthetic(8000)
    model = fit_uplift(frame, offer_id=offer, treated=treated, churned=churned, pipeline=_pipe(),
                       channel=np.full(len(frame), "sms"), prior_strength=0.0, seed=0)
    test, *_ = synthetic(4000, seed=1)
    pos = test["x2"].to_numpy() > 0
    tau_a = model.effect(test, np.full(len(test), "a"))
    tau_b = model.effect(test, np.full(len(test), "b"))
    assert tau_a[pos].mean() == pytest.approx(0.25, abs=0.06)
    assert tau_a[~pos].mean() == pytest.approx(0.0, abs=0.06)
    assert tau_b.mean() == pytest.approx(0.0, abs=0.06)
    assert np.corrcoef(tau_a, pos)[0, 1] > 0.5
    none = model.effect(test.head(3), [None, None, None])
    assert list(none) == [0.0, 0.0, 0.0]
    # the pyfunc entry point: raw rows + offer id
    out = model.predict(None, test.head(5).assign(offer_id="a"))
    assert list(out.columns) == ["tau"] and np.allclose(out["tau"], tau_a[:5])


def test_shrinkage_toward_prior_when_data_is_thin():
    assert shrinkage_weight(50, 50, 200) == pytest.approx(25 / 225)
    n = 1 / (1 / 2000 + 1 / 200)
    assert shrinkage_weight(2000, 200, 200) == pytest.approx(n / (n + 200))
    assert shrinkage_weight(100, 0) == 0.0
    frame, offer, treated, churned = synthetic(260, seed=2)
    priors = {"a": 0.1, "b": 0.02}
    model = fit_uplift(frame, offer_id=offer, treated=treated, churned=churned, pipeline=_pipe(), priors=priors,
                       min_treated=50, seed=0)
    info = model.offers
    for o in ("a", "b"):
        if info[o]["fitted"]:
            w = info[o]["weight"]
            assert w == pytest.approx(shrinkage_weight(info[o]["n_treated"], info[o]["n_control"]))
            assert w < 0.4
            tau = model.effect(frame, np.full(len(frame), o))
            assert np.all(np.abs(tau - priors[o]) <= w * 1.0 + 1e-12)  # |model tau - prior| <= 1
    # too few treated: the prior exactly, and a changed prior is followed
    model = fit_uplift(frame, offer_id=offer, treated=treated, churned=churned, pipeline=_pipe(), priors=priors,
                       min_treated=10_000)
    assert np.allclose(model.effect(frame, np.full(len(frame), "a")), 0.1)
    assert np.allclose(model.effect(frame, np.full(len(frame), "a"), priors={"a": 0.3}), 0.3)
    # an offer it never saw: the pooled effect of all offers on the control group (empirical Bayes)
    pooled = churned[~treated].mean() - churned[treated].mean()
    assert model.spec["pooled_effect"] == pytest.approx(pooled)
    assert np.allclose(model.effect(frame, np.full(len(frame), "new")), pooled)


def test_incremental_effect_without_a_model_uses_priors():
    frame = pd.DataFrame({"x": [1, 2, 3]})
    tau = incremental_effect(None, frame, ["a", None, "zzz"], {"a": 0.05})
    assert list(tau) == [0.05, 0.0, 0.0]
    assert effect_note(None) == PRIOR_NOTE

    class Offer:
        def __init__(self, id, effect=None):
            self.id, self.effect = id, effect

    assert priors_from_offers([Offer("a", 0.05), Offer("b")]) == {"a": 0.05}  # b: the model's pooled prior
    assert priors_from_offers([Offer("a", 0.05), Offer("b")], default=0.0) == {"a": 0.05, "b": 0.0}
    assert priors_from_offers({"a": {"effect": 0.1}, "b": 0.2}) == {"a": 0.1, "b": 0.2}


def test_incremental_net_value_for_arbitration():
    from engine.uplift.effect import incremental_net_value

    frame, offer, treated, churned = synthetic(3000)
    model = fit_uplift(frame, offer_id=offer, treated=treated, churned=churned, pipeline=_pipe(), prior_strength=0)
    cands = pd.DataFrame({"row": [0, 0, 1], "offer_id": ["a", "b", "a"], "channel": "sms", "value_kept": 10.0,
                          "total_cost": 1.0, "net_value": 99.0})
    out = incremental_net_value(cands, frame.iloc[cands["row"]], model, None, 6)
    assert np.allclose(out["tau"], model.effect(frame.iloc[[0, 0, 1]], ["a", "b", "a"], ["sms"] * 3))
    assert np.allclose(out["net_value"], out["tau"] * 60 - 1.0)
    priors_only = incremental_net_value(cands, frame.iloc[cands["row"]], None, {"a": 0.1}, 6)
    assert np.allclose(priors_only["net_value"], [5.0, -1.0, 5.0])
