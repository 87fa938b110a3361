"""`retain decide` end to end: real champion model, real policy set, real outputs."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd

from engine.cli.main import app
from engine.vocabulary import CHANNELS, OUTBOUND_CHANNELS


def test_decide_writes_decisions_and_work_orders(trained, month_files, runner, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["decide", "--input", str(month_files["drifted"]), "--out", str(out), *trained.args()])
    assert res.exit_code == 0, res.output
    assert "risk grade" in res.output and "expected saves" in res.output
    decisions = pd.read_parquet(out / "decisions.parquet")
    source = pd.read_parquet(month_files["drifted"])
    assert len(decisions) == len(source)
    assert decisions["subscriber_id"].tolist() == source["subscriber_id"].tolist()
    assert decisions["churn_probability"].between(0, 1).all()
    assert set(decisions["risk_grade"]) <= {"high", "medium", "low"}
    assert decisions["policy_hash"].nunique() == 1 and len(decisions["policy_hash"].iloc[0]) == 64
    assert (decisions["model_version"] == "1").all()
    summary = json.loads((out / "summary.json").read_text())
    offered = decisions[decisions["status"] == "offer"]
    assert summary["total_offer_cost"] == round(offered["offer_cost"].sum(), 2)
    assert sum(summary["risk_grades"].values()) == len(decisions)
    # one work-order file per channel; orders carry reason words, offer, priority and a due date
    files = {p.stem for p in (out / "work_orders").glob("*.csv")}
    assert files == set(CHANNELS)
    total_orders = 0
    for channel in CHANNELS:
        orders = pd.read_csv(out / "work_orders" / f"{channel}.csv")
        total_orders += len(orders)
        if len(orders):
            assert {"order_id", "subscriber_id", "reason_text", "offer_id", "priority", "due_date"} <= set(orders)
            assert orders["order_id"].is_unique
            due = dt.date.fromisoformat(orders["due_date"].iloc[0])
            today = dt.date.today()  # the run's date; on a weekend or holiday, counting starts the next business day
            start = today if np.is_busday(today) else np.busday_offset(today, 0, roll="forward").astype(dt.date)
            assert np.is_busday(due) and np.busday_count(start, due) == 3, (today, due)
    assert total_orders == len(offered)
    # opted-out subscribers are never on an outbound list
    opted = set(source.loc[source["opt_out"], "subscriber_id"])
    for channel in OUTBOUND_CHANNELS:
        orders = pd.read_csv(out / "work_orders" / f"{channel}.csv")
        assert not opted & set(orders["subscriber_id"])


def test_single_subscriber_goes_through_the_batch_path(trained, month_files):
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.model.registry import load_model

    settings = trained.settings()
    loaded = load_model(settings, "champion")
    engine = load_policy_engine("policies")
    frame = pd.read_parquet(month_files["same"]).head(300)
    batch = decide_frame(frame, loaded=loaded, policy_engine=engine, settings=settings, run_id="r").table
    for i in (0, 17, 123, 299):
        one = decide_frame(frame.iloc[[i]], loaded=loaded, policy_engine=engine, settings=settings, run_id="r").table
        cols = ["churn_probability", "risk_grade", "reason", "value_tier", "offer_id", "channel", "rule_id", "status"]
        assert one[cols].iloc[0].to_dict() == batch[cols].iloc[i].to_dict()


def test_decide_without_champion_says_how_to_create_one(store, month_files, runner, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["decide", "--input", str(month_files["same"]), "--out", str(out), *store.args()])
    assert res.exit_code == 2
    assert "alias 'champion'" in res.output and "retain models promote" in res.output
    assert not out.exists() or not any(out.iterdir())


def test_decide_bad_inputs_leave_no_output(trained, month_files, runner, tmp_path):
    df = pd.read_parquet(month_files["same"])
    cases = {
        "missing.parquet": (df.drop(columns=["arpu_m0"]), "missing column 'arpu_m0'"),
        "wrongtype.csv": (df.assign(complaints_3m="many"), "complaints_3m"),
        "empty.csv": (df.head(0), "no rows"),
    }
    for name, (frame, expected) in cases.items():
        path = tmp_path / name
        frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
        out = tmp_path / f"out-{name}"
        res = runner.invoke(app, ["decide", "--input", str(path), "--out", str(out), "--no-log", *trained.args()])
        assert res.exit_code == 2, (name, res.output)
        assert expected in res.output and "Traceback" not in res.output
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    res = runner.invoke(app, ["decide", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"),
                              *trained.args()])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_decide_refuses_an_invalid_policy_set(trained, month_files, runner, tmp_path):
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "rules.yaml").write_text("rules: [\n")
    res = runner.invoke(app, ["decide", "--input", str(month_files["same"]), "--out", str(tmp_path / "o"),
                              "--policies", str(bad), *trained.args()])
    assert res.exit_code == 2 and "rules.yaml" in res.output
    assert not (tmp_path / "o").exists()


def test_budget_capacity_contact_rules_and_control_hold_in_a_run(trained, month_files, runner, tmp_path):
    import yaml

    cfg = yaml.safe_load(trained.config.read_text())
    cfg.update({"arbitration": {"budget": 1500.0},
                "channels": {"outbound_call": {"cost": 4.0, "daily_capacity": 25},
                             "sms": {"cost": 0.05, "daily_capacity": 0}},
                "control_group": {"share": 0.2, "salt": "t"}})
    config = tmp_path / "retain.yaml"
    config.write_text(yaml.safe_dump(cfg))
    month = pd.read_parquet(month_files["drifted"])
    recent = month["subscriber_id"].iloc[:300]
    history = pd.DataFrame({"subscriber_id": list(recent) * 2, "contacted_on": ["2026-11-20"] * 600,
                            "channel": ["sms"] * 600, "offer_id": ["care_message"] * 600,
                            "outcome": ["pending"] * 600})
    hist_path = tmp_path / "contacts.csv"
    history.to_csv(hist_path, index=False)
    args = ["--config", str(config), "--tracking-uri", trained.uri, "--no-log", "--date", "2026-11-23"]
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        extra = ["--contact-history", str(hist_path)] if i == 0 else []
        res = runner.invoke(app, ["decide", "--input", str(month_files["drifted"]), "--out", str(out), *extra, *args])
        assert res.exit_code == 0, res.output
        outs.append(pd.read_parquet(out / "decisions.parquet"))
    first, second = outs
    offered = first[first["status"] == "offer"]
    assert (offered["offer_cost"] + offered["channel_cost"]).sum() <= 1500.0 + 1e-6
    assert (first["status"] == "over_budget").any()
    assert (offered["channel"] == "outbound_call").sum() <= 25
    assert (offered["channel"] == "sms").sum() == 0, "capacity 0 closes a channel"
    # contact rules: two contacts in the last 30 days block outbound channels for those subscribers
    blocked_ids = set(recent)
    outbound = offered[offered["channel"].isin(list(OUTBOUND_CHANNELS))]
    assert not blocked_ids & set(outbound["subscriber_id"])
    # the run's contacts were appended to the history
    appended = pd.read_csv(hist_path)
    assert len(appended) == 600 + len(offered)
    assert set(appended["outcome"].iloc[600:]) == {"pending"}
    # control: a stable share of the chosen, never contacted, costs nothing, would-be offer on record
    control = first[first["status"] == "control"]
    assert len(control) > 0 and control["offer_id"].notna().all()
    assert (control["offer_cost"] == 0).all()
    chosen = first["status"].isin(["offer", "control"])
    assert 0.1 < len(control) / chosen.sum() < 0.3
    # the same subscriber is control in both runs (stable hash), whatever else changed
    both = set(first.loc[first["control"], "subscriber_id"]) & set(second.loc[second["control"], "subscriber_id"])
    assert len(both) >= 0.8 * min(first["control"].sum(), second["control"].sum())
    assert not set(second.loc[second["control"], "subscriber_id"]) & set(
        second.loc[second["status"] == "offer", "subscriber_id"])
