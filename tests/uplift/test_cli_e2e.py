"""retain uplift evaluate / emp against a real churn champion (the session's trained store)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def test_evaluate_decides_the_new_policy_on_logged_rows_and_refuses_poor_overlap(trained, month_files, runner,
                                                                                 tmp_path):
    from engine.cli.main import app
    from engine.data.io import write_table
    from engine.feedback.ingest import ingest, record_run

    settings = trained.settings()
    month = pd.read_parquet(month_files["same"]).head(800)
    ids = month["subscriber_id"].astype(str).to_numpy()
    n = len(month)
    status = np.where(np.arange(n) % 10 == 0, "control", "offer")
    table = pd.DataFrame({"subscriber_id": ids, "status": status, "rule_id": "r", "offer_id": "offer_a",
                          "channel": "sms", "reason": "price", "risk_grade": "high", "value_tier": "medium",
                          "churn_probability": 0.3, "p_accept": 0.3, "offer_cost": 10.0, "channel_cost": 1.0,
                          "arpu_m0": 40.0, "decision_run": "E2E", "decided_on": "2024-03-01",
                          "control": status == "control"})
    sent = status == "offer"
    orders = pd.DataFrame({"order_id": [f"E2E-{i:05d}" for i in range(int(sent.sum()))], "subscriber_id": ids[sent],
                           "channel": "sms", "offer_id": "offer_a", "rule_id": "r", "priority": 50,
                           "due_date": "2024-03-06"})
    record_run(settings, table, {"decision_run": "E2E", "decided_on": "2024-03-01", "input": str(month_files["same"]),
                                 "model": "m", "model_version": "1", "policy_hash": "x" * 64}, work_orders=orders)
    out = table[["subscriber_id"]].assign(decision_run="E2E", contacted=np.where(sent, "yes", "no"), accepted="no",
                                          churned_30d=np.where(month["churn"].to_numpy() > 0.5, "yes", "no"))
    out["churned_60d"] = out["churned_90d"] = out["churned_30d"]
    write_table(out, tmp_path / "outcomes.csv")
    ingest(settings, tmp_path / "outcomes.csv")
    for command in (["policy", "evaluate"], ["uplift", "evaluate"]):  # the name, and its alias
        res = runner.invoke(app, [*command, "--policies", "policies", "--runs", "E2E", *trained.args()])
        assert res.exit_code == 2, res.output
        assert "overlap too poor" in res.output and "never took" in res.output


def test_policy_evaluate_weighs_decisions_by_the_propensities_decide_logged(trained, month_files, runner, tmp_path):
    """A run decided with the sample set's exploration (5%) and recorded; its logged propensities drive the
    estimate of the same policy set decided again without exploration. (The date is the exploration seed: on
    this one every action the target takes was sent to someone; on others a rare action can be explored or
    held out for all its subscribers, and the evaluation then refuses, as it should.)"""
    import datetime as dt
    import shutil

    from engine.cli.main import app
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.feedback.ingest import ingest, record_run
    from engine.model.registry import load_model

    settings = trained.settings().model_copy(update={"store_url": f"sqlite:///{tmp_path / 'retain.db'}"})
    policies = tmp_path / "policies"
    shutil.copytree("policies", policies)
    month = pd.read_parquet(month_files["same"])
    d = decide_frame(month.drop(columns=["churn", "churn_reason"]), loaded=load_model(settings, "champion"),
                     policy_engine=load_policy_engine(policies), settings=settings, run_date=dt.date(2024, 3, 4),
                     run_id="EXPL")
    record_run(settings, d.table, {**d.summary, "input": str(month_files["same"])}, work_orders=d.work_orders)
    churned = np.where(month["churn"].to_numpy() > 0.5, "yes", "no")
    out = pd.DataFrame({"subscriber_id": month["subscriber_id"].astype(str), "decision_run": "EXPL",
                        "contacted": np.where(d.table["status"] == "offer", "yes", "no"), "accepted": "no",
                        "churned_30d": churned, "churned_60d": churned, "churned_90d": churned})
    write_table = __import__("engine.data.io", fromlist=["write_table"]).write_table
    write_table(out, tmp_path / "outcomes.csv")
    ingest(settings, tmp_path / "outcomes.csv")
    res = runner.invoke(app, ["policy", "evaluate", "--policies", str(policies), "--runs", "EXPL", "--min-ess", "5",
                              "--rounds", "50", "--json", "--store", settings.store_url, *trained.args()])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["propensities"] == "logged by retain decide" and result["ess"] > 5
    assert set(result["estimates"]) == {"saves", "cost", "net_value"}


def test_emp_command(trained, month_files, runner):
    from engine.cli.main import app

    res = runner.invoke(app, ["uplift", "emp", "--data", str(month_files["same"]), "--json", *trained.args()])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["result"]["emp"] > 0 and 0 < out["result"]["contact_share"] < 1 and out["rows"] == 3000
