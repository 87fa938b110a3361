"""`retain decide` end to end: real champion model, real policy set, real outputs."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd

from engine.attributes import CHANNELS, OUTBOUND_CHANNELS
from engine.cli import app


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
            assert np.busday_count(dt.date.today(), due) == 3 or np.is_busday(dt.date.today()) is False
    assert total_orders == len(offered)
    # opted-out subscribers are never on an outbound list
    opted = set(source.loc[source["opt_out"], "subscriber_id"])
    for channel in OUTBOUND_CHANNELS:
        orders = pd.read_csv(out / "work_orders" / f"{channel}.csv")
        assert not opted & set(orders["subscriber_id"])


def test_single_subscriber_goes_through_the_batch_path(trained, month_files):
    from engine.decide import decide_frame
    from engine.registry import load_model
    from engine.service import load_policy_engine

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
