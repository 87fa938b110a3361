"""Qini / AUUC / uplift@k on known rankings; EMP on known cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import beta as beta_dist

from engine.uplift.emp import emp, roc_convex_hull
from engine.uplift.metrics import auuc, qini_coefficient, qini_curve, uplift_at_k, uplift_metrics


def _known():
    # 4 groups of 100: treated/control x responsive (tau = +0.6) / not (tau = 0); y = stayed.
    rng = np.random.default_rng(0)
    n = 4000
    responsive = np.arange(n) < n // 2
    t = rng.random(n) < 0.5
    p = 0.3 + 0.6 * (responsive & t)
    y = (rng.random(n) < p).astype(float)
    return y, t.astype(float), responsive


def test_qini_perfect_random_reversed():
    y, t, responsive = _known()
    good = qini_coefficient(y, t, responsive.astype(float))
    bad = qini_coefficient(y, t, -responsive.astype(float))
    rand = np.mean([qini_coefficient(y, t, np.random.default_rng(s).random(len(y))) for s in range(20)])
    # the "perfect" ranking of realised binary outcomes is far above any real score: 0.2 is a right ranking here
    assert good > 0.15 and bad < -0.15 and abs(rand) < 0.06
    oracle = qini_coefficient(y, t, y * t - y * (1 - t))
    assert oracle == pytest.approx(1.0)


def test_qini_curve_by_hand():
    # scores 3,2,1: treated stayer, control leaver, control stayer
    x, q = qini_curve([1, 0, 1], [1, 0, 0], [3, 2, 1])
    assert list(x) == [0, 1, 2, 3]
    assert q[1] == 1  # no control yet: Y_t
    assert q[2] == pytest.approx(1 - 0 * 1 / 1)
    assert q[3] == pytest.approx(1 - 1 * 1 / 2)


def test_auuc_and_uplift_at_k():
    y, t, responsive = _known()
    assert auuc(y, t, responsive.astype(float)) > auuc(y, t, -responsive.astype(float))
    assert uplift_at_k(y, t, responsive.astype(float), 0.5) == pytest.approx(0.6, abs=0.06)
    assert uplift_at_k(y, t, -responsive.astype(float), 0.5) == pytest.approx(0.0, abs=0.06)
    m = uplift_metrics(y, t, responsive.astype(float))
    assert set(m) >= {"qini", "auuc", "uplift_at_10", "uplift_at_30"}


def _emp_brute(y, s, clv, d, f, a, b):
    """E_gamma[max over every cut-off of profit] by numerical integration (no hull, no closed form)."""
    y = np.asarray(y, float)
    order = np.argsort(-s)
    f0 = np.r_[0, np.cumsum(y[order])] / y.sum()
    f1 = np.r_[0, np.cumsum(1 - y[order])] / (1 - y).sum()
    pi0 = y.mean()
    delta, phi = d / clv, f / clv

    def best(g):
        return (clv * ((g * (1 - delta) - phi) * pi0 * f0 - (delta + phi) * (1 - pi0) * f1)).max()

    return integrate.quad(lambda g: best(g) * beta_dist.pdf(g, a, b), 0, 1, limit=400)[0]


def test_emp_perfect_classifier_closed_form():
    y = np.r_[np.ones(20), np.zeros(80)]
    s = y.copy()
    r = emp(y, s)
    # perfect: contact exactly the churners when gamma > phi / (1 - delta); profit CLV (gamma (1-delta) - phi) pi0
    clv, delta, phi, pi0 = 200, 0.05, 0.005, 0.2
    g0 = phi / (1 - delta)
    expected = integrate.quad(lambda g: clv * (g * (1 - delta) - phi) * pi0 * beta_dist.pdf(g, 6, 14), g0, 1)[0]
    assert r.emp == pytest.approx(expected, rel=1e-6)
    assert r.contact_share == pytest.approx(0.2 * (1 - beta_dist.cdf(g0, 6, 14)), rel=1e-6)
    assert r.threshold == 1.0


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # the brute force's kinks, not EMP's
def test_emp_matches_brute_force_and_random_is_worth_little():
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.2).astype(float)
    s = y * 0.8 + rng.normal(0, 0.5, len(y))
    r = emp(y, s)
    assert r.emp == pytest.approx(_emp_brute(y, s, 200, 10, 1, 6, 14), rel=1e-3)
    assert 0 < r.contact_share < 1
    rand = emp(y, rng.random(len(y)))
    assert rand.emp < 0.5 * r.emp  # random scores: only the contact-everyone vertex pays
    f0, f1 = roc_convex_hull(y, s)
    assert f0[0] == 0 and f1[-1] == 1 and np.all(np.diff(f0) >= 0)


def test_emp_refuses_one_class():
    with pytest.raises(ValueError):
        emp(np.ones(10), np.arange(10.0))


def test_churn_model_emp_uses_the_operator_figures():
    import pandas as pd

    from engine.config import load_settings
    from engine.uplift.emp import churn_model_emp

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"churn": (rng.random(2000) < 0.25).astype(int), "arpu_m0": 40.0})
    scores = frame["churn"].to_numpy() * 0.5 + rng.random(len(frame)) * 0.6

    class Model:  # anything with predict_proba
        def predict_proba(self, df):
            return scores

    settings = load_settings()
    out = churn_model_emp(settings, Model(), frame, incentive=10.0, contact=1.0)
    assert out.clv == pytest.approx(40.0 * settings.arbitration.horizon_months)
    direct = emp(frame["churn"], Model().predict_proba(frame), clv=out.clv, incentive=10.0, contact=1.0)
    assert out.result.emp == pytest.approx(direct.emp) and out.incentive == 10.0 and out.contact == 1.0
    assert out.result.emp > 0 and 0 < out.result.contact_share < 1


def test_risk_grades_mode_emp_takes_the_high_cut_off_from_the_model_version(trained, month_files):
    import datetime as dt

    import pandas as pd
    import pytest

    from engine.config import Settings
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine, resolve_risk_grades
    from engine.errors import ConfigError
    from engine.model.registry import LoadedModel, load_model

    settings = trained.settings()
    loaded = load_model(settings, "champion")
    threshold = float(loaded.tags["emp_threshold"])  # measured on the hold-out by retain train
    assert 0 < threshold < 1 and 0 < float(loaded.tags["emp_contact_share"]) < 1
    assert resolve_risk_grades(settings, loaded) is settings  # mode thresholds: unchanged
    emp_settings = settings.model_copy(update={"risk_grades": settings.risk_grades.model_copy(update={"mode": "emp"})})
    graded = resolve_risk_grades(emp_settings, loaded)
    assert graded.risk_grades.high == threshold and graded.risk_grades.medium < threshold
    frame = pd.read_parquet(month_files["same"]).head(2000)
    t = decide_frame(frame, loaded=loaded, policy_engine=load_policy_engine("policies"), settings=graded,
                     run_date=dt.date(2026, 11, 23)).table
    assert ((t["churn_probability"] >= threshold) == (t["risk_grade"] == "high")).all()
    with pytest.raises(ConfigError) as err:
        resolve_risk_grades(emp_settings, LoadedModel(uri="models:/churn/9", name="churn", version="9", run_id=None,
                                                      model=None))
    assert "model version 9 carries no EMP threshold" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError):
        Settings(risk_grades={"mode": "emp", "capacity_high": 100})
