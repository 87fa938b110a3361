"""Arbitration on incremental value and exploration with propensities, inside the one decide function."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

DAY = dt.date(2026, 11, 23)


def _policy_copy(tmp_path, *, arbitration: str | None = None, share: float | None = None):
    from engine.cli.loop_demo import incremental_policies

    folder = incremental_policies(__import__("pathlib").Path("policies"), tmp_path / "policies")
    text = (folder / "policy.yaml").read_text()
    if arbitration is not None:
        text = re.sub(r"(?m)^arbitration:.*$", f"arbitration: {arbitration}", text)
    if share is not None:
        text = re.sub(r"(?m)^  share:.*$", f"  share: {share}", text)
    (folder / "policy.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def parts(trained):
    from engine.model.registry import load_model

    settings = trained.settings()
    return settings, load_model(settings, "champion")


@pytest.fixture(scope="module")
def month():
    from engine.data.simulator import generate

    return generate(6000, seed=21).drop(columns=["churn", "churn_reason"])


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from engine.decision.run import load_policy_engine

    root = tmp_path_factory.mktemp("incremental")
    return {name: load_policy_engine(_policy_copy(root / name, **kw)) for name, kw in {
        "incremental": {}, "first": {"arbitration": "first"}, "first_no_explore": {"arbitration": "first", "share": 0},
        "incremental_no_explore": {"share": 0}, "first_explore_20": {"arbitration": "first", "share": 0.2}}.items()}


def _decide(parts, engine, frame, **kw):
    from engine.decision.decide import decide_frame

    settings, loaded = parts
    return decide_frame(frame, loaded=loaded, policy_engine=engine, settings=settings, run_date=DAY, **kw)


def test_incremental_value_without_an_uplift_model_uses_the_offer_priors_and_says_so(parts, month, engines):
    from engine.uplift.effect import PRIOR_NOTE

    settings, _ = parts
    d = _decide(parts, engines["incremental_no_explore"], month, uplift=None)
    assert d.summary["arbitration"] == "incremental_value" and d.summary["effect"] == PRIOR_NOTE
    t = d.table
    sent = t[t["status"].isin(["offer", "control"])]
    assert len(sent) > 0 and "not_worth_it" in set(t["status"])
    priors = engines["incremental_no_explore"].policy_set.effect_priors
    np.testing.assert_allclose(sent["tau"], sent["offer_id"].map(priors).astype(float))
    value_kept = sent["offer_id"].map({o: x.value_kept for o, x in engines["incremental"].policy_set.offers.items()})
    np.testing.assert_allclose(sent["expected_saved_value"],
                               sent["tau"] * value_kept * settings.arbitration.horizon_months)
    # net value = tau x value kept x horizon - cost, and only positive ones are sent (care_message has effect 0)
    full_cost = sent["expected_saved_value"] - sent["net_value"]
    assert (full_cost > 0).all() and (sent["net_value"] > 0).all()
    assert "care_message" not in set(sent["offer_id"])


def test_incremental_value_with_an_uplift_model_ranks_on_its_effect(parts, month, engines):
    from engine.data.labelled import DatasetConfig
    from engine.data.simulator import generate
    from engine.model.features import FeaturePipeline
    from engine.uplift.effect import fit_uplift

    logged = generate(3000, seed=22)
    rng = np.random.default_rng(0)
    offers = np.array(["service_recovery_call", "plan_rightsize", "family_plan"], dtype=object)
    offer = offers[rng.integers(0, 3, len(logged))]
    treated = rng.random(len(logged)) < 0.7
    churn = logged["churn"].to_numpy() > 0.5
    saved = treated & (offer == "family_plan") & (rng.random(len(logged)) < 0.6)
    cfg = DatasetConfig.builtin()
    model = fit_uplift(logged.drop(columns=["churn", "churn_reason"]), offer_id=offer, treated=treated,
                       churned=(churn & ~saved).astype(int), channel=np.full(len(logged), "sms", dtype=object),
                       pipeline=FeaturePipeline(list(cfg.categorical), list(cfg.numeric), derive=True),
                       params={"iterations": 30}, prior_strength=1.0)
    d = _decide(parts, engines["incremental_no_explore"], month, uplift=model)
    assert d.summary["effect"].startswith("uplift model")
    t = d.table
    sent = t[t["status"].isin(["offer", "control"])]
    rows = month.set_index("subscriber_id").loc[sent["subscriber_id"]].reset_index()
    priors = engines["incremental"].policy_set.effect_priors  # the offers' effect: priors shrink the model's
    np.testing.assert_allclose(sent["tau"], model.effect(rows, sent["offer_id"].to_numpy(dtype=object),
                                                         sent["channel"].to_numpy(dtype=object), priors=priors))
    assert (sent["net_value"] > 0).all()
    priors_only = _decide(parts, engines["incremental_no_explore"], month, uplift=None).table
    assert (priors_only["offer_id"].fillna("-") != t["offer_id"].fillna("-")).any()  # the model changes choices


def test_decide_command_with_incremental_value_says_where_the_effect_came_from(trained, month_files, runner, tmp_path):
    from engine.cli.main import app
    from engine.decision.assess import effect_source
    from engine.uplift.registry import load_uplift

    policies = _policy_copy(tmp_path)
    res = runner.invoke(app, ["decide", "--input", str(month_files["same"]), "--out", str(tmp_path / "out"),
                              "--policies", str(policies), "--no-log", "--no-record", *trained.args()])
    assert res.exit_code == 0, res.output
    expected = effect_source(load_uplift(trained.settings()))
    assert "arbitration incremental_value" in res.output and expected in " ".join(res.output.split())
    summary = __import__("json").loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["effect"] == expected and summary["exploration"]["share"] == 0.05


def test_exploration_share_is_respected_and_recorded(parts, engines):
    from engine.data.simulator import generate

    frame = generate(20_000, seed=23).drop(columns=["churn", "churn_reason"])
    for name, share in (("first", 0.05), ("first_explore_20", 0.2)):
        d = _decide(parts, engines[name], frame)
        t = d.table
        can = t["status"].isin(["offer", "control", "explored_none", "over_budget", "over_capacity"]).to_numpy()
        n = int(can.sum())
        explored = t["explored"].to_numpy(dtype=bool)
        assert not explored[~can].any()
        rate = explored[can].mean()
        assert abs(rate - share) < 4 * np.sqrt(share * (1 - share) / n), (name, rate, n)
        assert d.summary["exploration"] == {"share": share, "seed": DAY.isoformat(), "explored": int(explored.sum())}
        p = t["propensity"].to_numpy(dtype=float)
        assert ((p > 0) & (p <= 1)).all()
        assert (p[t["status"].isin(["no_offer", "suppressed"]).to_numpy()] == 1).all()
        # a greedy (not explored) offer sent: (1 - control share) x ((1 - share) + share / m) >= (1-c)(1-share)
        greedy_sent = (~explored) & (t["status"] == "offer").to_numpy()
        assert (p[greedy_sent] >= (1 - 0.1) * (1 - share) - 1e-12).all()
        # explored subscribers: drawn among no contact and their candidates, so both kinds occur
        assert {"explored_none"} <= set(t.loc[explored, "status"]) and (t.loc[explored, "status"] == "offer").any()


def test_exploration_is_deterministic_per_subscriber_and_seed(parts, engines, month):
    a = _decide(parts, engines["first"], month).table
    b = _decide(parts, engines["first"], month.iloc[::-1].reset_index(drop=True)).table.set_index("subscriber_id")
    b = b.loc[a["subscriber_id"]].reset_index()
    for col in ("explored", "status", "offer_id", "channel", "propensity"):
        assert (a[col].astype(str).to_numpy() == b[col].astype(str).to_numpy()).all(), col
    some = month.iloc[:300]
    alone = _decide(parts, engines["first"], some).table
    pd.testing.assert_series_equal(alone["explored"], a["explored"].iloc[:300], check_names=False)
    ex = a["explored"].iloc[:300].to_numpy(dtype=bool)
    assert (alone["offer_id"][ex].astype(str).to_numpy() == a["offer_id"].iloc[:300][ex].astype(str).to_numpy()).all()
    # another decision date, another draw
    from engine.decision.decide import decide_frame

    settings, loaded = parts
    other = decide_frame(month, loaded=loaded, policy_engine=engines["first"], settings=settings,
                         run_date=DAY + dt.timedelta(days=30)).table
    assert (other["explored"].to_numpy() != a["explored"].to_numpy()).any()


def test_share_zero_is_the_decision_without_exploration_and_control_is_unchanged(parts, engines, month):
    from engine.decision.contact import control_mask

    settings, _ = parts
    off = _decide(parts, engines["first_no_explore"], month).table
    flag_off = _decide(parts, engines["first"], month, explore=False).table
    on = _decide(parts, engines["first"], month).table
    ignore = ["propensity", "policy_hash", "decision_run"]  # the share is part of the policy set's hash
    assert not off["explored"].any() and off.drop(columns=ignore).equals(flag_off.drop(columns=ignore))
    # the control group is the same stable hash share of those a contact was chosen for
    for t in (off, on):
        chosen = t["status"].isin(["offer", "control"]).to_numpy()
        expected = control_mask(t["subscriber_id"][chosen].reset_index(drop=True), settings.control_group)
        assert (t["control"].to_numpy()[chosen] == expected).all()
    same = ~on["explored"].to_numpy()
    assert (on["control"].to_numpy()[same] == off["control"].to_numpy()[same]).all()


def test_propensities_are_stored_and_read_back_for_evaluation(parts, engines, month, tmp_path):
    import sqlalchemy as sa

    from engine.feedback.ingest import ingest, record_run
    from engine.feedback.store import decisions, open_store
    from engine.uplift.data import logged_frame

    settings = parts[0].model_copy(update={"store_url": f"sqlite:///{tmp_path / 'retain.db'}"})
    d = _decide(parts, engines["first"], month, run_id="PROP1")
    record_run(settings, d.table, {**d.summary, "input": None}, work_orders=d.work_orders)
    stored = open_store(settings).read(sa.select(decisions.c.subscriber_id, decisions.c.propensity,
                                                 decisions.c.explored))
    merged = stored.merge(d.table[["subscriber_id", "propensity", "explored"]], on="subscriber_id",
                          suffixes=("_stored", ""))
    assert len(merged) == len(month)
    np.testing.assert_allclose(merged["propensity_stored"], merged["propensity"])
    assert (merged["explored_stored"].astype(bool) == merged["explored"]).all()

    labels = __import__("engine.data.simulator", fromlist=["generate"]).generate(6000, seed=21)
    churned = np.where(labels["churn"].to_numpy() > 0.5, "yes", "no")
    outcomes = pd.DataFrame({"subscriber_id": labels["subscriber_id"].astype(str), "decision_run": "PROP1",
                             "contacted": np.where(d.table["status"] == "offer", "yes", "no"), "accepted": "no",
                             "churned_30d": churned, "churned_60d": churned, "churned_90d": churned})
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
    ingest(settings, tmp_path / "outcomes.csv")
    frame = logged_frame(settings, ["PROP1"], window=90, inputs={"PROP1": month})
    assert (frame["propensity_source"] == "logged").all()
    back = frame.set_index("subscriber_id")["propensity"]
    np.testing.assert_allclose(back.loc[d.table["subscriber_id"]].to_numpy(), d.table["propensity"].to_numpy())

    # retain report: a Qini curve and coefficient per offer, and the cost without a measured effect
    from typer.testing import CliRunner

    from engine.cli.main import app
    from engine.uplift.report import spend_report

    report = spend_report(settings, "PROP1")
    q = report.qini.set_index("offer_id")
    assert len(q) >= 3 and q["qini"].notna().any()
    enough = q[(q["treated"] >= 20) & (q["control"] >= 20)]
    assert enough["qini"].notna().all() and enough["curve_x"].map(len).min() > 2
    assert report.no_effect_cost >= 0 and "cost_without_measured_effect" in report.headline
    res = CliRunner().invoke(app, ["report", "--run", "PROP1", "--no-log", "--out", str(tmp_path / "rep"),
                                   "--store", settings.store_url, "--tracking-uri", settings.tracking_uri],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Qini per offer" in res.output and "indistinguishable from zero" in res.output
    data = __import__("json").loads((tmp_path / "rep" / "report.json").read_text())
    assert data["qini_by_offer"] and "cost_without_measured_effect" in data
    assert (tmp_path / "rep" / "qini_by_offer.png").exists()
