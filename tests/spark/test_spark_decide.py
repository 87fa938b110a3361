"""`retain decide --engine spark` gives the single-machine answer (issue 15), and `retain score --engine spark`
scores with mlflow's spark_udf alone.

One local[2] Spark session for the module. The comparison uses a config whose budget and channel
capacities bind (several allocation rounds, subscribers refused for budget and for capacity), and three
shuffle partitions, so the running counts and the budget walk cross partition boundaries.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from engine.data.io import write_table
from engine.data.simulator import generate

FAST_TRAINING = {"training": {"trials": 2, "folds": 2, "max_iterations": 120, "early_stopping_rounds": 15}}
ROWS = 6000
RUN_DATE = dt.date(2026, 12, 1)
BINDING = {
    "arbitration": {"budget": 2600.0},
    "risk_grades": {"capacity_high": 400, "capacity_medium": 700},  # grades follow the whole run's ranking
    "channels": {
        "vip_manager": {"cost": 12.0, "daily_capacity": 6},
        "outbound_call": {"cost": 4.0, "daily_capacity": 12},
        "voice_bot": {"cost": 0.40, "daily_capacity": 120},
        "sms": {"cost": 0.05, "daily_capacity": 90},
        "app_popup": {"cost": 0.01, "daily_capacity": 1500},
        "front_desk": {"cost": 0.50, "daily_capacity": 90},
    },
}


@pytest.fixture(scope="module")
def spark():
    with pytest.MonkeyPatch.context() as env:  # executors run this interpreter; restored afterwards
        env.setenv("PYSPARK_PYTHON", sys.executable)
        env.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        from engine.spark.session import spark_session

        session = spark_session("local[2]", app_name="retain-test-spark-decide", shuffle_partitions=3)
        yield session
        session.stop()


@pytest.fixture(scope="module")
def binding(trained, tmp_path_factory):
    from engine.config import load_settings

    folder = tmp_path_factory.mktemp("spark-binding")
    cfg = folder / "retain.yaml"
    cfg.write_text(yaml.safe_dump({**FAST_TRAINING, **BINDING}))
    data = folder / "month.parquet"
    write_table(generate(ROWS, seed=5).drop(columns=["churn", "churn_reason"]), data)
    return load_settings(cfg, tracking_uri=trained.uri), data, folder


def _orders(folder: Path) -> dict[str, str]:
    """Work-order files with the run id taken out of the order ids (each run has its own)."""
    return {p.name: re.sub(r"^[0-9T]+-[0-9a-f]{6}-", "", p.read_text(), flags=re.M)
            for p in sorted((folder / "work_orders").glob("*.csv"))}


def test_spark_decide_equals_the_local_run(binding, spark):
    from engine.decision.run import decide_file
    from engine.spark.decide import decide_spark

    settings, data, folder = binding
    local = decide_file(data, folder / "local", settings=settings, log_run=False, run_date=RUN_DATE)
    dist = decide_spark(data, folder / "spark", settings=settings, spark=spark, log_run=False, run_date=RUN_DATE)

    a = pd.read_parquet(folder / "local" / "decisions.parquet").set_index("subscriber_id").sort_index()
    b = pd.read_parquet(folder / "spark" / "decisions.parquet").set_index("subscriber_id").sort_index()
    assert len(a) == len(b) == ROWS and list(a.index) == list(b.index)
    assert set(a.columns) == set(b.columns)
    statuses = a["status"].value_counts()
    # the constraints bind: some refused for budget, some for capacity, several offers made
    assert statuses.get("over_budget", 0) > 0 and statuses.get("over_capacity", 0) > 0, statuses
    assert statuses.get("offer", 0) > 50, statuses
    assert a["risk_grade"].value_counts().get("high") == 400  # capacity grading over the whole input
    for col in ("offer_id", "channel", "status"):
        assert (a[col].fillna("-").astype(str) == b[col].fillna("-").astype(str)).all(), col
    for col in a.columns:
        if col == "decision_run":
            continue
        x, y = a[col], b[col]
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x.to_numpy(), y.to_numpy(), err_msg=col)
        else:
            assert (x.astype(object).where(x.notna(), None).astype(str)
                    == y.astype(object).where(y.notna(), None).astype(str)).all(), col

    assert _orders(folder / "local") == _orders(folder / "spark")
    assert set(local.summary) == set(dist.summary)
    for key in local.summary:
        if key not in ("decision_run", "files"):
            assert dist.summary[key] == local.summary[key], key
    assert not any(p.name.startswith(".staging") for p in (folder / "spark").iterdir())

    # both runs are in the decision store (recorded by default), with the same rows per subscriber
    import sqlalchemy as sa

    from engine.feedback.store import decision_runs, decisions, open_store, work_orders

    store = open_store(settings)
    stored = {}
    for name, result in (("local", local), ("spark", dist)):
        run = result.summary["decision_run"]
        rows = store.read(sa.select(decisions).where(decisions.c.decision_run == run)).set_index("subscriber_id")
        orders = store.read(sa.select(work_orders).where(work_orders.c.decision_run == run))
        head = store.read(sa.select(decision_runs).where(decision_runs.c.decision_run == run)).iloc[0]
        assert len(rows) == ROWS and head["subscribers"] == ROWS, name
        assert head["offers"] == result.summary["status"]["offer"] == len(orders), name
        stored[name] = (rows.sort_index().drop(columns=["decision_run"]),
                        orders.assign(order_id=orders["order_id"].str.replace(run, "", regex=False))
                        .drop(columns=["decision_run"]).sort_values("order_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(stored["local"][0], stored["spark"][0])
    pd.testing.assert_frame_equal(stored["local"][1], stored["spark"][1])


def test_spark_score_is_the_pyfunc(binding, spark, trained):
    from engine.model.registry import load_model
    from engine.spark.score import score_spark

    settings, data, folder = binding
    result = score_spark(data, folder / "scores", settings=settings, spark=spark)
    got = pd.read_parquet(folder / "scores").set_index("subscriber_id").sort_index()
    frame = pd.read_parquet(data)
    want = pd.Series(load_model(settings).predict_proba(frame), index=frame["subscriber_id"].astype(str)).sort_index()
    assert result.rows == ROWS
    np.testing.assert_allclose(got["churn_probability"].to_numpy(), want.to_numpy(), rtol=1e-9, atol=1e-12)


def test_cli_decide_engine_spark(binding, spark, trained, runner, tmp_path):
    """The command line: same options as the local engine, the outputs named like it; a CSV input is typed
    like the local run's, and the run is recorded in the decision store unless --no-record."""
    from engine.cli.main import app
    from engine.decision.run import decide_file
    from engine.feedback.store import open_store

    settings, data, folder = binding
    small = tmp_path / "small.csv"
    write_table(pd.read_parquet(data).head(800), small)
    res = runner.invoke(app, ["decide", "--engine", "spark", "--input", str(small), "--out", str(tmp_path / "out"),
                              "--no-log", "--date", "2026-12-01", *trained.args()])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    assert (out / "summary.json").exists() and (out / "decisions.parquet").is_dir()
    got = pd.read_parquet(out / "decisions.parquet").set_index("subscriber_id").sort_index()
    assert len(got) == 800
    assert {p.name for p in (out / "work_orders").glob("*.csv")}
    want = decide_file(small, tmp_path / "local", settings=trained.settings(), log_run=False, record=False,
                       run_date=dt.date(2026, 12, 1)).summary
    local = pd.read_parquet(tmp_path / "local" / "decisions.parquet").set_index("subscriber_id").sort_index()
    for col in ("offer_id", "channel", "status"):
        assert (got[col].fillna("-").astype(str) == local[col].fillna("-").astype(str)).all(), col
    run = json.loads((out / "summary.json").read_text())["decision_run"]
    stored = open_store(trained.settings()).runs().set_index("decision_run")
    assert stored.loc[run, "subscribers"] == 800 and stored.loc[run, "offers"] == want["status"]["offer"]

    again = runner.invoke(app, ["decide", "--engine", "spark", "--input", str(small), "--out", str(tmp_path / "o2"),
                                "--no-log", "--no-record", "--date", "2026-12-01", *trained.args()])
    assert again.exit_code == 0, again.output
    assert len(open_store(trained.settings()).runs()) == len(stored)  # --no-record: nothing added


def test_no_java_is_one_line_and_exit_2(monkeypatch, runner, tmp_path):
    """Without Java 17/21: one line saying what to install, exit code 2, no traceback."""
    import engine.spark.java as java
    from engine.cli.main import app

    monkeypatch.setattr(java, "_candidates", lambda: [])
    with pytest.raises(java.JavaError, match=r"^Spark needs Java 17 or 21: apt-get install openjdk-17-jre-headless"):
        java.ensure_java()
    monkeypatch.setattr(java, "_candidates", lambda: [("/usr/bin/old-java", None)])
    monkeypatch.setattr(java, "java_version", lambda _exe: 11)
    res = runner.invoke(app, ["score", "--engine", "spark", "--input", str(tmp_path / "x.parquet"),
                              "--out", str(tmp_path / "s"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Spark needs Java 17 or 21" in lines[0] and "Java 11" in lines[0], res.output


def test_java_version_parsing(tmp_path):
    import engine.spark.java as java

    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "1.8.0_392"\' >&2\n')
    fake.chmod(0o755)
    assert java.java_version(str(fake)) == 8
    fake.write_text('#!/bin/sh\necho \'openjdk version "17.0.13" 2024-10-15\' >&2\n')
    assert java.java_version(str(fake)) == 17
    assert java.java_version(str(tmp_path / "missing")) is None
