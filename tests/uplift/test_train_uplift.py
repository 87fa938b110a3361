"""retain uplift train on a logged run in a real store: fit, hold-out metrics, registered pyfunc, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

N = 3000
OFFERS = (("offer_a", "sms"), ("offer_b", "outbound_call"))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A simulated month, decided at random between two offers (a third held back as control); offer_a removes
    0.3 of churn for price churners, offer_b nothing; recorded and outcomes ingested in a fresh store."""
    from engine.config import load_settings
    from engine.data.io import write_table
    from engine.data.simulator import generate
    from engine.feedback.ingest import ingest, record_run

    root = tmp_path_factory.mktemp("uplift")
    settings = load_settings(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    month = generate(N, seed=5)
    path = root / "month.parquet"
    write_table(month, path)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, 2, N)
    status = np.where(rng.random(N) < 0.33, "control", "offer")
    offer = np.array([OFFERS[k][0] for k in pick], dtype=object)
    channel = np.array([OFFERS[k][1] for k in pick], dtype=object)
    ids = month["subscriber_id"].astype(str).to_numpy()
    table = pd.DataFrame({"subscriber_id": ids, "status": status, "rule_id": "r", "offer_id": offer,
                          "channel": channel, "reason": "price", "risk_grade": "high", "value_tier": "medium",
                          "churn_probability": 0.3, "p_accept": 0.3, "offer_cost": 10.0, "channel_cost": 1.0,
                          "arpu_m0": 40.0, "decision_run": "RUN1", "decided_on": "2024-03-01",
                          "control": status == "control"})
    orders = pd.DataFrame({"order_id": [f"RUN1-{i:06d}" for i in range(int((status == 'offer').sum()))],
                           "subscriber_id": ids[status == "offer"], "channel": channel[status == "offer"],
                           "offer_id": offer[status == "offer"], "rule_id": "r", "priority": 50,
                           "due_date": "2024-03-06"})
    summary = {"decision_run": "RUN1", "decided_on": "2024-03-01", "input": str(path), "model": "m",
               "model_version": "1", "policy_hash": "x" * 64}
    record_run(settings, table, summary, work_orders=orders)
    churn = month["churn"].to_numpy(dtype=float) > 0.5
    price = (month["churn_reason"].astype(object) == "price").to_numpy()
    saved = (status == "offer") & (offer == "offer_a") & price & (rng.random(N) < 0.9)
    churned = churn & ~saved
    out = table[["subscriber_id"]].assign(decision_run="RUN1", contacted=np.where(status == "offer", "yes", "no"),
                                          accepted="no", churned_30d=np.where(churned, "yes", "no"))
    out["churned_60d"] = out["churned_30d"]
    out["churned_90d"] = out["churned_30d"]
    write_table(out, root / "outcomes.csv")
    ingest(settings, root / "outcomes.csv")
    return settings, root, month


@pytest.fixture(scope="module")
def uplift_v1(logged):
    """The first uplift model of the store, trained once for every test that needs one (in any order)."""
    from engine.uplift.registry import load_uplift
    from training.uplift import train_uplift

    settings, _root, _month = logged
    assert load_uplift(settings) is None  # nothing registered yet: arbitration falls back to the priors
    return train_uplift(settings, runs=["RUN1"], seed=0, threads=1, prior_strength=50)


def test_train_registers_a_pyfunc_that_ranks_the_known_effect(logged, uplift_v1):
    from engine.uplift.effect import incremental_effect
    from engine.uplift.registry import load_uplift

    settings, root, month = logged
    result = uplift_v1
    assert result.model_version == "1" and result.alias == "champion"
    assert result.holdout_rows > 500 and set(result.metrics) >= {"qini", "auuc", "uplift_at_10"}
    per = {r["offer_id"]: r for r in result.per_offer}
    assert per["offer_a"]["mean_tau"] > per["offer_b"]["mean_tau"]
    loaded = load_uplift(settings)
    assert loaded is not None and loaded.version == "1"
    price = (month["churn_reason"].astype(object) == "price").to_numpy()
    tau = incremental_effect(loaded, month, np.full(N, "offer_a"), channels=np.full(N, "sms"))
    assert tau[price].mean() > tau[~price].mean() + 0.05
    assert np.all(incremental_effect(loaded, month.head(3), [None] * 3) == 0)
    # the registered artefact loads and predicts in a fresh process (its own code, no engine cache)
    code = ("import mlflow.pyfunc, pandas as pd, sys; mlflow.set_registry_uri(sys.argv[1]); "
            "m = mlflow.pyfunc.load_model('models:/uplift@champion'); "
            "df = pd.read_parquet(sys.argv[2]).head(4).assign(offer_id='offer_a', channel='sms'); "
            "print(type(m.unwrap_python_model()).__module__, list(m.predict(df)['tau'].round(6)))")
    done = subprocess.run([sys.executable, "-c", code, settings.tracking_uri, str(root / "month.parquet")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    module, values = done.stdout.strip().split(" ", 1)
    assert module.startswith("retain_uplift_")
    assert np.allclose(json.loads(values), tau[:4], atol=1e-6)


def test_evaluate_a_policy_on_logged_decisions_and_refuse_poor_overlap(logged):
    from engine.uplift.evaluate import evaluate_policy
    from engine.uplift.ope import OverlapError
    from engine.uplift.registry import load_uplift

    settings, root, month = logged
    # the logging policy held back a third at random: that is the propensity of its actions
    settings = settings.model_copy(update={"control_group": settings.control_group.model_copy(update={"share": 0.33})})

    def keep_offer_a(frame):  # a simple target: offer_a on sms where it was the logged offer, nobody else
        a = (frame["offer_id"] == "offer_a").to_numpy()
        return pd.DataFrame({"offer_id": np.where(a, "offer_a", None), "channel": np.where(a, "sms", None)})

    ev = evaluate_policy(settings, target_actions=keep_offer_a, runs=["RUN1"], uplift=load_uplift(settings),
                         rounds=200)
    frame_ids = month.set_index(month["subscriber_id"].astype(str))
    churn = frame_ids["churn"].to_numpy(dtype=float) > 0.5
    price = (frame_ids["churn_reason"].astype(object) == "price").to_numpy()
    from engine.uplift.data import logged_frame

    frame = logged_frame(settings, ["RUN1"])
    joined = frame[["subscriber_id", "offer_id"]].merge(
        pd.DataFrame({"subscriber_id": frame_ids.index, "churn": churn, "price": price}), on="subscriber_id")
    truth = float((0.9 * (joined["churn"] & joined["price"] & (joined["offer_id"] == "offer_a"))).sum())
    for e in ("ips", "snips", "dr"):
        est = ev.result.estimates["saves"][e]
        assert est.ci_low <= truth <= est.ci_high, (e, est, truth)
    assert ev.result.estimates["cost"]["ips"].value > 0 and ev.result.ess > 100

    def everyone_offer_b_on_sms(frame):
        return pd.DataFrame({"offer_id": ["offer_b"] * len(frame), "channel": ["sms"] * len(frame)})

    with pytest.raises(OverlapError, match="overlap too poor"):
        evaluate_policy(settings, target_actions=everyone_offer_b_on_sms, runs=["RUN1"])


def test_report_helpers_qini_per_offer_and_cost_without_effect(logged):
    from engine.uplift.registry import load_uplift
    from engine.uplift.report import cost_without_effect, qini_per_offer

    settings, _, _ = logged
    table = qini_per_offer(settings, ["RUN1"], load_uplift(settings))
    assert set(table["offer_id"]) == {"offer_a", "offer_b"}
    a = table.set_index("offer_id")
    assert a.loc["offer_a", "observed_uplift"] > a.loc["offer_b", "observed_uplift"]
    assert a.loc["offer_a", "qini"] == a.loc["offer_a", "qini"]  # computed (enough rows in both arms)
    report = pd.DataFrame({"offer_id": ["x", "y", "z"], "uplift": [0.1, 0.0, -0.01], "ci_low": [0.05, -0.02, -0.03],
                           "ci_high": [0.15, 0.03, 0.01], "cost": [100.0, 40.0, 2.5]})
    total, groups = cost_without_effect(report)
    assert total == 42.5 and list(groups["offer_id"]) == ["y", "z"]


def test_cli_uplift_train_and_evaluate_errors(logged, uplift_v1, runner):
    from engine.cli.main import app

    settings, root, _ = logged
    res = runner.invoke(app, ["uplift", "train", "--runs", "RUN1", "--json", "--tracking-uri", settings.tracking_uri])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["model_version"] == str(int(uplift_v1.model_version) + 1)
    res = runner.invoke(app, ["uplift", "evaluate", "--runs", "NOPE", "--policies", "policies",
                              "--tracking-uri", settings.tracking_uri])
    assert res.exit_code == 2 and "error:" in res.output and "NOPE" in res.output


def incremental_policies(folder):
    """The sample policy set ranking on incremental value, with two offers renamed to the ones the logged run
    (and so the uplift model) knows."""
    import shutil
    from pathlib import Path

    policies = folder / "policies"
    shutil.copytree(Path(__file__).resolve().parents[2] / "policies", policies)
    for f in policies.rglob("*.yaml"):
        f.write_text(f.read_text().replace("discount_15", "offer_a").replace("plan_rightsize", "offer_b")
                     .replace("arbitration: first", "arbitration: incremental_value"))
    return policies


def test_what_ifs_follow_the_uplift_champion(logged, uplift_v1, tmp_path, monkeypatch):
    """A long-running process (the workbench) decides what-ifs with the uplift model the alias names now:
    cached between clicks, re-checked in the registry every UPLIFT_CHECK_SECONDS."""
    import datetime as dt

    from engine.decision import whatif
    from engine.decision.run import load_policy_engine
    from engine.uplift.registry import uplift_version
    from training.uplift import train_uplift

    settings, _root, month = logged
    engine = load_policy_engine(incremental_policies(tmp_path))
    scored = month.drop(columns=["churn", "churn_reason"]).head(300).assign(
        churn_probability=0.4, risk_grade="high", value_tier="medium", reason="price", is_prepaid=False,
        need_group="family")

    def effect() -> str:
        return whatif.decide_scored(engine, scored, settings=settings, on=dt.date(2026, 12, 1)).summary["effect"]

    now = uplift_version(settings).version  # (other tests of the module may have trained more)
    first = effect()
    assert f"(version {now})" in first
    newer = train_uplift(settings, runs=["RUN1"], seed=1, threads=1, prior_strength=20)
    assert newer.alias == "champion" and newer.model_version != str(now)
    assert effect() == first, "cached between clicks"
    monkeypatch.setattr(whatif, "UPLIFT_CHECK_SECONDS", 0.0)
    assert f"(version {newer.model_version})" in effect(), "the moved alias is followed without a restart"


def test_spark_ranks_on_the_registered_uplift_model_like_the_local_engine(logged, uplift_v1, tmp_path):
    """`arbitration: incremental_value` with a registered uplift model: the executors load the shipped uplift
    model and decide exactly as the local engine does (offer, channel, status, tau per subscriber)."""
    import datetime as dt

    import yaml

    from engine.config import load_settings
    from engine.data.io import write_table
    from engine.data.simulator import generate
    from engine.decision.run import decide_file
    from engine.model.governance import promote
    from engine.spark.decide import decide_spark
    from engine.spark.session import spark_session
    from training.train import train

    settings, root, month = logged
    cfg = tmp_path / "retain.yaml"  # a churn model in the same store, trained small
    cfg.write_text(yaml.safe_dump({"training": {"trials": 2, "folds": 2, "max_iterations": 120,
                                                "early_stopping_rounds": 15, "reference_sample_rows": 500}}))
    settings = load_settings(cfg, tracking_uri=settings.tracking_uri)
    result = train(str(root / "month.parquet"), settings=settings, trials=2)
    promote(settings, str(result.model_version), "champion", reason="test")
    policies = incremental_policies(tmp_path)
    data = tmp_path / "decide.parquet"
    write_table(generate(1500, seed=8).drop(columns=["churn", "churn_reason"]), data)
    day = dt.date(2026, 12, 1)

    local = decide_file(data, tmp_path / "local", settings=settings, policy_dir=policies, log_run=False,
                        record=False, run_date=day)
    with pytest.MonkeyPatch.context() as env:  # executors run this interpreter
        env.setenv("PYSPARK_PYTHON", sys.executable)
        env.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        spark = spark_session("local[2]", app_name="retain-test-spark-uplift", shuffle_partitions=2)
        try:
            dist = decide_spark(data, tmp_path / "spark", settings=settings, policy_dir=policies, spark=spark,
                                log_run=False, record=False, run_date=day)
        finally:
            spark.stop()
    assert "uplift model" in local.summary["effect"] and dist.summary["effect"] == local.summary["effect"]
    a = pd.read_parquet(tmp_path / "local" / "decisions.parquet").set_index("subscriber_id").sort_index()
    b = pd.read_parquet(tmp_path / "spark" / "decisions.parquet").set_index("subscriber_id").sort_index()
    by_model = a["offer_id"].isin(["offer_a", "offer_b"]) & (a["status"] == "offer")
    assert by_model.sum() > 20 and a.loc[by_model, "tau"].nunique() > 10, "offers ranked on the model's effects"
    for col in ("offer_id", "channel", "status"):
        assert (a[col].fillna("-").astype(str) == b[col].fillna("-").astype(str)).all(), col
    np.testing.assert_array_equal(a["tau"].to_numpy(), b["tau"].to_numpy())
    np.testing.assert_array_equal(a["net_value"].to_numpy(), b["net_value"].to_numpy())
