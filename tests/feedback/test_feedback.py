"""Closing the loop: the decision store, outcome ingest, measured uplift, learning back.

Unit-level tests build small synthetic decision runs (no model) in real SQLite stores under tmp dirs; the
end-to-end test decides with the session's trained champion, simulates outcomes from the known truth and
checks the measured uplift against it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from engine.errors import DataError
from engine.feedback.ingest import ingest, read_outcomes, record_run, record_run_dir
from engine.feedback.store import SCHEMA_VERSION, StoreError, open_store, store_url

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
RULES = (("rule-a", "offer_a", "sms"), ("rule-b", "offer_b", "outbound_call"))


def synthetic_run(run: str = "R1", n: int = 400, control_every: int = 4, untargeted_every: int = 5,
                  decided_on: str = "2024-03-01") -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """A decision table, summary and orders: rules alternate; every 4th targeted row is control."""
    ids = [f"S{i:05d}" for i in range(n)]
    status, rule, offer, channel = [], [], [], []
    for i in range(n):
        if i % untargeted_every == 0:
            status.append("no_offer")
            rule.append(None), offer.append(None), channel.append(None)
            continue
        r = RULES[i % 2]
        status.append("control" if (i // 2) % control_every == 1 else "offer")
        rule.append(r[0]), offer.append(r[1]), channel.append(r[2])
    table = pd.DataFrame({"subscriber_id": ids, "status": status, "rule_id": rule, "offer_id": offer,
                          "channel": channel, "reason": "price", "risk_grade": "high", "value_tier": "medium",
                          "churn_probability": 0.5, "p_accept": 0.3, "offer_cost": 10.0, "channel_cost": 1.0,
                          "arpu_m0": 40.0, "decision_run": run, "decided_on": decided_on})
    table["control"] = table["status"] == "control"
    table.loc[table["status"] != "offer", ["offer_cost", "channel_cost"]] = 0.0
    offered = table[table["status"] == "offer"]
    due = np.busday_offset(np.datetime64(decided_on), 3, roll="forward").astype(str)
    orders = pd.DataFrame({"order_id": [f"{run}-{k:07d}" for k in range(1, len(offered) + 1)],
                           "subscriber_id": offered["subscriber_id"].to_numpy(),
                           "channel": offered["channel"].to_numpy(), "offer_id": offered["offer_id"].to_numpy(),
                           "rule_id": offered["rule_id"].to_numpy(), "priority": 50, "due_date": str(due)})
    summary = {"decision_run": run, "decided_on": decided_on, "input": None, "model": "models:/churn@champion",
               "model_version": "1", "policy_hash": "x" * 64}
    return table, summary, orders


def outcomes_for(table: pd.DataFrame, orders: pd.DataFrame, churn: np.ndarray, *,
                 by_order: bool = True) -> pd.DataFrame:
    """Outcome rows: treated are contacted; every 3rd contacted accepts; given churn flags."""
    out = table[["subscriber_id", "decision_run", "status"]].copy()
    out = out.merge(orders[["order_id", "subscriber_id"]], on="subscriber_id", how="left")
    treated = out["status"] == "offer"
    out["contacted"] = np.where(treated, "yes", "no")
    out["accepted"] = np.where(treated & (np.arange(len(out)) % 3 == 0), "yes", "no")
    out["churned_30d"] = np.where(churn, "yes", "no")
    out["churned_60d"] = out["churned_30d"]
    out["churned_90d"] = out["churned_30d"]
    out["revenue_after"] = np.where(churn, 0.0, 120.0)
    if by_order:
        out.loc[treated, ["decision_run", "subscriber_id"]] = None  # treated rows named by order id only
    return out.drop(columns=["status"])


@pytest.fixture()
def settings(tmp_path):
    from engine.config import load_settings

    return load_settings(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


@pytest.fixture()
def recorded(settings):
    table, summary, orders = synthetic_run()
    record_run(settings, table, summary, work_orders=orders)
    return table, summary, orders


def _outcome_rows(settings) -> pd.DataFrame:
    return open_store(settings).read(sa.text("SELECT * FROM outcomes ORDER BY decision_run, subscriber_id"))


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------
def test_store_sits_next_to_the_mlflow_store_unless_told_otherwise(tmp_path, monkeypatch, settings):
    monkeypatch.delenv("RETAIN_STORE_URL", raising=False)
    assert store_url(settings) == f"sqlite:///{tmp_path / 'store' / 'retain.db'}"
    assert store_url(settings.model_copy(update={"tracking_uri": "sqlite:///mlruns/mlflow.db"})) == \
        "sqlite:///store/retain.db"
    assert store_url(settings, "sqlite:///elsewhere.db") == "sqlite:///elsewhere.db"
    monkeypatch.setenv("RETAIN_STORE_URL", "postgresql+psycopg://retain@db/retain")
    assert store_url(settings) == "postgresql+psycopg://retain@db/retain"


def test_migrations_apply_in_order_once_and_refuse_a_newer_store(tmp_path, settings):
    from engine.feedback.store import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'm' / 'retain.db'}"
    assert open_store(settings, url=url, create=False) is None  # read-only callers create nothing
    assert not (tmp_path / "m" / "retain.db").exists()
    store = open_store(settings, url=url)
    assert store.version() == SCHEMA_VERSION == len(MIGRATIONS)
    assert store.history()["version"].tolist() == list(range(1, SCHEMA_VERSION + 1))
    assert store.migrate() == []  # reopening applies nothing
    db = sqlite3.connect(tmp_path / "m" / "retain.db")
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "ix_work_orders_due_date" in indexes  # migration 2

    columns = {r[1] for r in db.execute("PRAGMA table_info(decisions)")}
    assert {"propensity", "explored"} <= columns  # migration 3

    # a store at version 1 gets exactly migrations 2 and 3
    db.execute("DELETE FROM schema_version WHERE version >= 2")
    db.execute("DROP INDEX ix_work_orders_due_date")
    db.execute("ALTER TABLE decisions DROP COLUMN propensity")
    db.execute("ALTER TABLE decisions DROP COLUMN explored")
    db.commit()
    assert store.migrate() == [2, 3]
    assert {"propensity", "explored"} <= {r[1] for r in db.execute("PRAGMA table_info(decisions)")}

    db.execute("INSERT INTO schema_version VALUES (99, 'from the future', '2099-01-01')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        store.migrate()


def test_a_locked_store_is_a_one_line_error(settings, tmp_path):
    table, summary, orders = synthetic_run()
    store = open_store(settings)
    path = sa.engine.make_url(store.url).database
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        from engine.feedback import store as store_module

        monkey = sa.create_engine(store.url, connect_args={"timeout": 0.1})
        store_module._ENGINES[store.url] = monkey
        with pytest.raises(StoreError, match="database is locked; nothing was written"):
            record_run(settings, table, summary, work_orders=orders)
    finally:
        blocker.rollback()
        blocker.close()
        store_module._ENGINES.pop(store.url, None)


def test_recording_a_run_twice_changes_nothing(settings):
    table, summary, orders = synthetic_run()
    first = record_run(settings, table, summary, work_orders=orders)
    assert first.recorded and first.decisions == 400 and first.work_orders == len(orders)
    second = record_run(settings, table, summary, work_orders=orders)
    assert not second.recorded
    store = open_store(settings)
    assert store.counts() == {"decision_runs": 1, "decisions": 400, "work_orders": len(orders), "outcomes": 0}
    runs = store.runs()
    assert runs["control"].iloc[0] == int(table["control"].sum())
    assert runs["offers"].iloc[0] == int((table["status"] == "offer").sum())
    again = record_run(settings, table, summary, work_orders=orders, replace=True)
    assert again.recorded and store.counts()["decisions"] == 400


def _postgres_bin() -> Path | None:
    """The server binaries of Debian's `postgresql` package (initdb is not on PATH there), or of any install."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server for this module: initdb + pg_ctl on a Unix socket in a temporary folder.

    Starts in ~2 s. Skipped, with the reason, only when the server binaries (apt-get install postgresql) or
    the psycopg driver (pip install "psycopg[binary]") are not installed: both are outside this project.
    """
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
    folder = Path(tempfile.mkdtemp(prefix="retain-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's `postgres` user
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr or done.stdout}"

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "retain", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "30",
        "-o", f"-k {folder} -c listen_addresses='' -c fsync=off", "start")
    try:
        run(str(bindir / "createdb"), "-h", str(folder), "-U", "retain", "retain")
        yield f"postgresql+psycopg://retain@/retain?host={folder}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_postgresql_store_records_ingests_and_measures(settings, tmp_path, postgres_url):
    """The non-SQLite write path (SQLAlchemy executemany) and the report's SQL, on a real PostgreSQL server."""
    from engine.feedback.learning import acceptance_table, flagged_rules
    from engine.feedback.report import build_report

    store = open_store(settings, url=postgres_url)
    assert not store.is_sqlite and store.version() == SCHEMA_VERSION
    table, summary, orders = synthetic_run("PG1")
    assert record_run(settings, table, summary, work_orders=orders, url=postgres_url).recorded
    assert not record_run(settings, table, summary, work_orders=orders, url=postgres_url).recorded
    assert store.counts() == {"decision_runs": 1, "decisions": 400, "work_orders": len(orders), "outcomes": 0}
    churn = np.where(table["rule_id"] == "rule-a", table["status"] == "control", np.arange(len(table)) % 2 == 0)
    frame = outcomes_for(table, orders, np.zeros(len(table), dtype=bool))
    frame.to_csv(tmp_path / "o.csv", index=False)
    assert ingest(settings, tmp_path / "o.csv", url=postgres_url).inserted == 400
    assert ingest(settings, tmp_path / "o.csv", url=postgres_url).unchanged == 400  # idempotent
    frame = outcomes_for(table, orders, churn)
    frame.to_csv(tmp_path / "o2.csv", index=False)
    assert ingest(settings, tmp_path / "o2.csv", url=postgres_url).updated == int(churn.sum())
    stored = store.read(sa.text("SELECT subscriber_id, churned_90d FROM outcomes ORDER BY subscriber_id"))
    assert stored["churned_90d"].astype(bool).tolist() == churn.tolist()
    report = build_report(settings, "PG1", url=postgres_url)
    rules = report.tables["rule_id"].set_index("rule_id")
    assert rules.loc["rule-a", "uplift"] == 1.0 and rules.loc["rule-a", "verdict"] == "works"
    assert [f.rule_id for f in report.flagged] == [f.rule_id for f in flagged_rules(settings, url=postgres_url)] \
        == ["rule-b"]
    assert set(acceptance_table(settings, url=postgres_url)["offer_id"]) == {"offer_a", "offer_b"}
    again = record_run(settings, table, summary, work_orders=orders, url=postgres_url, replace=True)
    assert again.recorded and store.counts()["outcomes"] == 0  # replacing a run drops its outcomes


def test_ingest_is_idempotent_and_updates_late_columns(settings, recorded, tmp_path):
    table, _, orders = recorded
    churn = np.arange(len(table)) % 4 == 0
    frame = outcomes_for(table, orders, churn)
    frame[["churned_60d", "churned_90d"]] = ""  # the 30-day file: later windows not known yet
    frame.to_csv(tmp_path / "o30.csv", index=False)
    first = ingest(settings, tmp_path / "o30.csv")
    assert (first.inserted, first.updated, first.unchanged, len(first.unknown)) == (400, 0, 0, 0)
    before = _outcome_rows(settings)
    assert before["order_id"].notna().sum() == len(orders)  # order ids attached, also for rows named by subscriber

    second = ingest(settings, tmp_path / "o30.csv")
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 400)
    pd.testing.assert_frame_equal(_outcome_rows(settings), before)  # not a byte changed (ingested_at included)

    full = outcomes_for(table, orders, churn, by_order=False)
    full.to_csv(tmp_path / "o90.csv", index=False)
    third = ingest(settings, tmp_path / "o90.csv")
    assert (third.inserted, third.updated, third.unchanged) == (0, 400, 0)
    assert _outcome_rows(settings)["churned_90d"].notna().all()
    assert ingest(settings, tmp_path / "o90.csv").unchanged == 400


def test_unknown_orders_and_subscribers_are_reported_not_dropped(settings, recorded, tmp_path):
    table, _, orders = recorded
    frame = outcomes_for(table, orders, np.zeros(len(table), dtype=bool))
    frame = frame[frame["subscriber_id"] != "S00000"]
    extra = pd.DataFrame([
        {"order_id": "R1-9999999", "contacted": "yes", "accepted": "no", "churned_30d": "no"},
        {"order_id": None, "decision_run": "R1", "subscriber_id": "S99999", "contacted": "no", "accepted": "no",
         "churned_30d": "yes"},
        # a mistyped order id on a row that also names its run and subscriber: stored, and reported
        {"order_id": "typo", "decision_run": "R1", "subscriber_id": "S00000", "contacted": "no", "accepted": "no",
         "churned_30d": "no"},
    ])
    pd.concat([frame, extra], ignore_index=True).to_csv(tmp_path / "o.csv", index=False)
    with pytest.raises(DataError, match="3 row\\(s\\) name unknown orders or subscribers"):
        ingest(settings, tmp_path / "o.csv", strict=True)
    assert open_store(settings).counts()["outcomes"] == 0

    result = ingest(settings, tmp_path / "o.csv")
    assert result.inserted == 400 and len(result.unknown) == 3 and result.not_stored == 2
    problems = dict(zip(result.unknown["problem"], result.unknown["stored"], strict=True))
    assert problems == {"unknown order id": False, "subscriber not in this decision run": False,
                        "unknown order id (stored under its subscriber and run)": True}
    examples = " | ".join(result.unknown_examples())
    assert "R1-9999999" in examples and "S99999" in examples
    assert "2 unknown (not stored); 1 with an unknown order id stored" in result.one_line


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns=["accepted"]), "missing column(s) 'accepted'"),
    (lambda f: f.drop(columns=["order_id", "decision_run"]), "missing column 'order_id' (or both"),
    (lambda f: f.assign(contacted=["maybe"] + ["yes"] * (len(f) - 1)), "column 'contacted' row 2: 'maybe' is not "
                                                                       "yes/no"),
    (lambda f: f.assign(revenue_after=["lots"] + [1.0] * (len(f) - 1)), "column 'revenue_after' row 2: 'lots' is not "
                                                                        "a number"),
    (lambda f: f.assign(revenue_after=-5.0), "column 'revenue_after' row 2: -5.0 is negative"),
    (lambda f: f.assign(contacted="no", accepted="yes"), "accepted is yes but contacted is not yes"),
    (lambda f: f.assign(churned_30d="yes", churned_60d="no"), "column 'churned_60d' row 2"),
    (lambda f: f.assign(order_id=None, decision_run="nope"), "run 'nope' is not in the decision store"),
    (lambda f: f.assign(order_id=None, subscriber_id=None), "row 2: no order_id and no subscriber_id + decision_run"),
    (lambda f: pd.concat([f, f.head(1)]), "are both outcomes of subscriber"),
])
def test_bad_outcome_files_give_one_line_errors(settings, recorded, tmp_path, change, message):
    table, _, orders = recorded
    frame = change(outcomes_for(table, orders, np.zeros(len(table), dtype=bool), by_order=False))
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError) as err:
        ingest(settings, tmp_path / "bad.csv")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert open_store(settings).counts()["outcomes"] == 0  # nothing stored


def test_outcome_values_accept_common_spellings(tmp_path):
    frame = pd.DataFrame({"order_id": ["a", "b", "c", "d"], "contacted": ["Yes", "TRUE", "0", ""],
                          "accepted": ["y", "no", "false", None], "churned_30d": [1, 0, 0, 1]})
    frame.to_csv(tmp_path / "o.csv", index=False)
    parsed = read_outcomes(tmp_path / "o.csv")
    assert parsed["contacted"].tolist()[:3] == [True, True, False] and pd.isna(parsed["contacted"].iloc[3])
    assert parsed["accepted"].tolist()[:3] == [True, False, False]
    assert parsed["churned_30d"].tolist() == [True, False, False, True]
    assert parsed["churned_90d"].isna().all() and parsed["revenue_after"].isna().all()


# ---------------------------------------------------------------------------------------------
# measuring: control-group accounting, intervals, flags, overdue
# ---------------------------------------------------------------------------------------------
def test_newcombe_interval_matches_the_published_example():
    from engine.feedback.report import newcombe

    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80 -> 0.2000 (0.0524, 0.3339)
    d, low, high = newcombe(np.array([56]), np.array([70]), np.array([48]), np.array([80]))
    assert d[0] == pytest.approx(0.2)
    assert low[0] == pytest.approx(0.0524, abs=1e-4) and high[0] == pytest.approx(0.3339, abs=1e-4)


def test_control_subscribers_are_never_counted_as_treated(settings, recorded, tmp_path):
    from engine.feedback.report import build_report

    table, _, orders = recorded
    # rule-a: treated churn 0, its control all churn; rule-b: both churn alike; untargeted all churn
    churn = np.where(table["status"] == "no_offer", True,
                     np.where(table["rule_id"] == "rule-a", table["status"] == "control",
                              np.arange(len(table)) % 2 == 0))
    frame = outcomes_for(table, orders, churn, by_order=False)
    frame.loc[table["status"].to_numpy() == "control", "contacted"] = "yes"  # a mistake in the field...
    frame.to_csv(tmp_path / "o.csv", index=False)
    result = ingest(settings, tmp_path / "o.csv")
    assert any("control-group subscriber(s) reported as contacted" in w for w in result.warnings)

    report = build_report(settings, "R1")
    rules = report.tables["rule_id"].set_index("rule_id")
    for rule in ("rule-a", "rule-b"):
        mine = table[table["rule_id"] == rule]
        assert rules.loc[rule, "treated"] == (mine["status"] == "offer").sum()
        assert rules.loc[rule, "control"] == (mine["status"] == "control").sum()  # still control, contacted or not
        assert rules.loc[rule, "contacted"] == (mine["status"] == "offer").sum()  # only treated contacts count
    assert rules.loc["rule-a", "churn_treated"] == 0 and rules.loc["rule-a", "churn_control"] == 1
    assert rules.loc["rule-a", "uplift"] == 1.0 and rules.loc["rule-a", "verdict"] == "works"
    b = table[table["rule_id"] == "rule-b"]
    b_churn = churn[table["rule_id"] == "rule-b"]
    expected = (b_churn[(b["status"] == "control").to_numpy()].mean()
                - b_churn[(b["status"] == "offer").to_numpy()].mean())
    assert rules.loc["rule-b", "uplift"] == pytest.approx(expected)
    assert rules.loc["rule-b", "flagged"]
    overall = report.tables["overall"].iloc[0]
    targeted = table["status"].isin(["offer", "control"]).to_numpy()
    assert overall["treated"] + overall["control"] == targeted.sum()  # untargeted subscribers in neither group
    assert report.headline["churn_not_targeted"] == 1.0
    # cost: channel cost per contact + offer cost per acceptance, treated only
    treated_rows = frame[table["status"].to_numpy() == "offer"]
    assert overall["cost"] == pytest.approx(1.0 * len(treated_rows) + 10.0 * (treated_rows["accepted"] == "yes").sum())
    assert [f.rule_id for f in report.flagged] == ["rule-b"]


def test_cells_in_memory_and_in_the_database_agree(settings, recorded, tmp_path):
    from engine.feedback.ingest import stored_outcomes
    from engine.feedback.report import _cells_sql, cells

    table, _, orders = recorded
    frame = outcomes_for(table, orders, np.arange(len(table)) % 3 == 0)
    frame.loc[::7, ["churned_30d", "churned_60d", "churned_90d", "revenue_after"]] = None  # some still pending
    frame.to_csv(tmp_path / "o.csv", index=False)
    ingest(settings, tmp_path / "o.csv")
    rows = stored_outcomes(settings, "R1")
    assert len(rows) == 400 and rows["has_outcome"].all()
    for window in (30, 90):
        sql = _cells_sql(open_store(settings), ["R1"], window)
        pd.testing.assert_frame_equal(cells(rows, window), sql, check_dtype=False)


def test_flagged_rules_and_reports_without_data(settings, recorded, tmp_path):
    from engine.feedback.learning import flagged_rules

    assert flagged_rules(settings.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path}/x/mlruns/m.db"})) == []
    assert flagged_rules(settings) == []  # no outcomes yet: nothing to say
    table, _, orders = recorded
    churn = np.where(table["rule_id"] == "rule-a", table["status"] == "control", np.arange(len(table)) % 2 == 0)
    outcomes_for(table, orders, churn).to_csv(tmp_path / "o.csv", index=False)
    ingest(settings, tmp_path / "o.csv")
    flags = flagged_rules(settings)
    assert [f.rule_id for f in flags] == ["rule-b"]
    # one computation, one filter: policy validate's warnings are exactly the report's flagged rules
    from engine.feedback.report import build_report

    assert [f.as_dict() for f in build_report(settings, "all").flagged] == [f.as_dict() for f in flags]
    assert "rule 'rule-b': uplift" in flags[0].line() and "95% CI" in flags[0].line()


def test_overdue_lists_orders_past_due_without_outcome(settings, recorded, tmp_path):
    from engine.feedback.report import overdue_orders

    table, _, orders = recorded
    frame = outcomes_for(table, orders, np.zeros(len(table), dtype=bool), by_order=False)
    half = orders["subscriber_id"].iloc[: len(orders) // 2]
    frame[~frame["subscriber_id"].isin(half)].to_csv(tmp_path / "o.csv", index=False)
    ingest(settings, tmp_path / "o.csv")
    due = dt.date.fromisoformat(orders["due_date"].iloc[0])
    assert len(overdue_orders(settings, today=due)) == 0  # due today is not overdue
    late = overdue_orders(settings, today=due + dt.timedelta(days=7))
    assert sorted(late["order_id"]) == sorted(orders["order_id"].iloc[: len(orders) // 2])
    # and listed oldest first, then by channel, highest priority first, order id (what a call centre works down)
    expected = late.sort_values(["due_date", "channel", "priority", "order_id"], ascending=[True, True, False, True])
    assert late["order_id"].tolist() == expected["order_id"].tolist()
    assert (late["business_days_overdue"] == 5).all()


# ---------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------
def test_shrinkage_keeps_thin_data_near_the_prior_and_follows_plenty():
    from engine.feedback.learning import PRIOR_STRENGTH, shrink

    thin = shrink(np.array([3]), np.array([3]), np.array([0.1]))[0]  # 3 of 3 accepted
    assert abs(thin - 0.1) < 0.06
    plenty = shrink(np.array([2500]), np.array([5000]), np.array([0.1]))[0]
    assert abs(plenty - 0.5) < 0.01
    halfway = shrink(np.array([PRIOR_STRENGTH]), np.array([PRIOR_STRENGTH]), np.array([0.2]))[0]
    assert halfway == pytest.approx(0.6)  # k contacts move the rate halfway to the measured one
    assert shrink(np.array([0]), np.array([0]), np.array([0.3]))[0] == pytest.approx(0.3)


def test_learned_acceptance_from_the_store(settings, recorded, tmp_path):
    from engine.decision.arbitration import acceptance_rate
    from engine.feedback.learning import acceptance_table, learned_acceptance

    assert learned_acceptance(settings) == {}  # no outcomes: the priors apply
    table, _, orders = recorded
    outcomes_for(table, orders, np.zeros(len(table), dtype=bool)).to_csv(tmp_path / "o.csv", index=False)
    ingest(settings, tmp_path / "o.csv")
    t = acceptance_table(settings).set_index("offer_id")
    for offer in ("offer_a", "offer_b"):
        mine = table[(table["offer_id"] == offer) & (table["status"] == "offer")]
        assert t.loc[offer, "contacted"] == len(mine)  # control subscribers never count
    learned = learned_acceptance(settings, min_n=10)
    assert set(learned) == {("offer_a", "price"), ("offer_b", "price")}
    prior = acceptance_rate(np.array(["offer_a"], dtype=object), np.array(["price"], dtype=object),
                            settings.arbitration)[0]
    row = t.loc["offer_a"]
    assert learned[("offer_a", "price")] == pytest.approx((row["accepted"] + 50 * prior) / (row["contacted"] + 50))
    assert learned_acceptance(settings, min_n=10_000) == {}
    # the contract arbitration consumes
    rates = acceptance_rate(np.array(["offer_a"], dtype=object), np.array(["price"], dtype=object),
                            settings.arbitration, learned)
    assert rates[0] == pytest.approx(learned[("offer_a", "price")])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _cli():
    from engine.cli.common import ErrorGroup
    from engine.cli.feedback import app, outcomes_command, report_command

    root = typer.Typer(cls=ErrorGroup)
    root.add_typer(app, name="feedback")
    root.command("report")(report_command)
    root.command("outcomes")(outcomes_command)
    return root


def test_cli_ingest_runs_store_and_report(settings, recorded, tmp_path):
    table, _, orders = recorded
    churn = np.where(table["rule_id"] == "rule-a", table["status"] == "control", False)
    outcomes_for(table, orders, churn).to_csv(tmp_path / "o.csv", index=False)
    pd.DataFrame({"order_id": ["nope"], "contacted": ["yes"], "accepted": ["no"], "churned_30d": ["no"]}).to_csv(
        tmp_path / "unknown.csv", index=False)
    cli, runner = _cli(), CliRunner()
    args = ["--tracking-uri", settings.tracking_uri]
    res = runner.invoke(cli, ["feedback", "ingest", str(tmp_path / "o.csv"), *args])
    assert res.exit_code == 0, res.output
    assert "400 new" in res.output
    res = runner.invoke(cli, ["feedback", "ingest", str(tmp_path / "o.csv"), *args])
    assert "0 new, 0 updated, 400 unchanged" in res.output
    res = runner.invoke(cli, ["feedback", "ingest", str(tmp_path / "unknown.csv"), "--rejects",
                              str(tmp_path / "rejects.csv"), *args])
    assert res.exit_code == 0 and "1 unknown" in res.output and "unknown order id" in res.output
    assert pd.read_csv(tmp_path / "rejects.csv")["order_id"].tolist() == ["nope"]
    res = runner.invoke(cli, ["feedback", "ingest", str(tmp_path / "missing.csv"), *args])
    assert res.exit_code == 2 and "error:" in res.output and "does not exist" in res.output
    res = runner.invoke(cli, ["feedback", "runs", *args])
    assert res.exit_code == 0 and "R1" in res.output
    res = runner.invoke(cli, ["feedback", "store", *args])
    assert res.exit_code == 0 and f"migration {SCHEMA_VERSION}" in res.output
    res = runner.invoke(cli, ["feedback", "acceptance", *args])
    assert res.exit_code == 0 and "offer_a" in res.output
    res = runner.invoke(cli, ["report", "--out", str(tmp_path / "rep"), "--overdue", "--no-log", *args])
    assert res.exit_code == 0, res.output
    assert "rule-a" in res.output and "overdue" in res.output and "flagged" in res.output
    assert (tmp_path / "rep" / "report.html").read_text().count("data:image/png;base64") >= 2
    assert (tmp_path / "rep" / "report.json").exists() and (tmp_path / "rep" / "overdue.csv").exists()
    res = runner.invoke(cli, ["report", "--run", "nope", "--no-log", *args])
    assert res.exit_code == 2 and "decision run 'nope' is not in the decision store" in res.output
    res = runner.invoke(cli, ["report", "--window", "45", "--no-log", *args])
    assert res.exit_code == 2 and "30, 60, 90" in res.output
    for command in (["feedback", "--help"], ["feedback", "ingest", "--help"], ["report", "--help"],
                    ["outcomes", "--help"], ["feedback", "runs", "--help"], ["feedback", "record", "--help"]):
        assert runner.invoke(cli, command).exit_code == 0


# ---------------------------------------------------------------------------------------------
# end to end against the simulator's truth
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decided_run(trained, tmp_path_factory):
    """A run on 6,000 simulated subscribers with half the eligible ones held out as control."""
    from engine.data.io import write_table
    from engine.data.simulator import generate
    from engine.decision.run import decide_file

    folder = tmp_path_factory.mktemp("loop")
    month = folder / "month.parquet"
    write_table(generate(6000, seed=21), month)
    base = trained.settings()
    settings = base.model_copy(update={"control_group": base.control_group.model_copy(update={"share": 0.5})})
    decide_file(month, folder / "decisions", settings=settings, model="champion", log_run=False)
    return settings, folder


def test_record_run_takes_a_decisions_object_as_decide_file_has_it(trained, month_files, tmp_path):
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.model.registry import load_model

    settings = trained.settings()
    decisions = decide_frame(pd.read_parquet(month_files["same"]).head(600), loaded=load_model(settings, "champion"),
                             policy_engine=load_policy_engine("policies"), settings=settings)
    url = f"sqlite:///{tmp_path / 'retain.db'}"
    result = record_run(settings, decisions.table, decisions.summary, work_orders=decisions.work_orders, url=url)
    n_orders = sum(len(o) for o in decisions.work_orders.values())
    assert result.recorded and result.decisions == 600 and result.work_orders == n_orders
    store = open_store(url=url)
    stored = store.read(sa.text("SELECT order_id, subscriber_id, channel, due_date FROM work_orders ORDER BY order_id"))
    published = pd.concat([o.assign(channel=ch) for ch, o in decisions.work_orders.items()])
    assert sorted(stored["order_id"]) == sorted(published["order_id"])
    row = store.runs().iloc[0]
    assert row["decision_run"] == decisions.run_id and row["model_version"] == "1"
    assert row["control"] == int(decisions.table["control"].sum())


def test_measured_uplift_lands_within_its_ci_of_the_true_effect(decided_run, tmp_path):
    from engine.cli.loop_demo import measured_vs_true
    from engine.feedback.outcomes import simulate_outcomes, true_effects
    from engine.feedback.report import build_report, log_report, write_report

    settings, folder = decided_run
    url = f"sqlite:///{tmp_path / 'retain.db'}"
    recorded = record_run_dir(settings, folder / "decisions", url=url)
    assert recorded.recorded and recorded.decisions == 6000
    outcomes = simulate_outcomes(folder / "decisions", seed=3, settings=settings)
    decisions = pd.read_parquet(folder / "decisions" / "decisions.parquet")
    control = decisions["status"].to_numpy() == "control"
    assert not outcomes.loc[control, "contacted"].any()  # the control group gets nothing
    assert not outcomes.loc[decisions["status"].to_numpy() != "offer", "accepted"].any()
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
    result = ingest(settings, tmp_path / "outcomes.csv", url=url)
    assert result.inserted == 6000 and len(result.unknown) == 0

    report = build_report(settings, window=90, url=url)
    overall = measured_vs_true(report.tables["overall"].rename(columns={"group": "rule_id"}),
                               true_effects(folder / "decisions", by=None, settings=settings)
                               .rename(columns={"group": "rule_id"}), "rule_id").iloc[0]
    assert overall["n_control"] > 500
    assert overall["within_ci"], overall
    assert overall["ci_low"] > 0  # treating works in this world, and the measurement shows it
    for key in ("rule_id", "offer_id"):
        rows = measured_vs_true(report.tables[key], true_effects(folder / "decisions", by=key, settings=settings), key)
        testable = rows[rows["n_control"] >= 20]
        assert len(testable) >= 4
        assert testable["within_ci"].mean() >= 0.8, testable  # 95% intervals: an odd miss is expected
    for window in (30, 60):
        r = build_report(settings, window=window, url=url)
        t = true_effects(folder / "decisions", by=None, window=window, settings=settings)["true_uplift"].iloc[0]
        assert r.headline["ci_low"] <= t <= r.headline["ci_high"]

    files = write_report(report, tmp_path / "report")
    assert files["html"].stat().st_size > 20_000
    run_id = log_report(settings, report, files)
    from engine.model.registry import connect

    client = connect(settings)
    run = client.get_run(run_id)
    assert run.data.tags["retain.kind"] == "report" and "uplift" in run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name == "churn-reports"


def test_simulated_outcomes_follow_the_declared_truth(decided_run):
    from engine.feedback.outcomes import TRUTH, answered_reasons, load_run, simulate_outcomes

    settings, folder = decided_run
    answers = answered_reasons(settings)
    assert answers["discount_15"] == {"price", "competitor"} and answers["care_message"] == frozenset()
    frame, _ = load_run(folder / "decisions")
    outcomes = simulate_outcomes(folder / "decisions", seed=5, settings=settings)
    pd.testing.assert_frame_equal(outcomes, simulate_outcomes(folder / "decisions", seed=5, settings=settings))
    contacted = outcomes["contacted"].to_numpy()
    match = np.array([isinstance(r, str) and r in answers.get(o, ()) for o, r in
                      zip(frame["offer_id"], frame["churn_reason"], strict=True)])
    for is_match, rate in ((True, TRUTH.accept_match), (False, TRUTH.accept_other)):
        sel = contacted & (match == is_match)
        assert sel.sum() > 100
        assert abs(outcomes.loc[sel, "accepted"].mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / sel.sum())
    assert (outcomes["churned_30d"] <= outcomes["churned_60d"]).all()
    assert (outcomes["churned_60d"] <= outcomes["churned_90d"]).all()
    assert (outcomes.loc[outcomes["churned_30d"], "revenue_after"] == 0).all()


def test_outcomes_command_writes_an_ingestable_file(decided_run, tmp_path):
    settings, folder = decided_run
    cli, runner = _cli(), CliRunner()
    res = runner.invoke(cli, ["outcomes", "--decisions", str(folder / "decisions"), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 0, res.output
    assert "6,000 outcomes" in res.output
    assert len(read_outcomes(tmp_path / "o.csv")) == 6000
    res = runner.invoke(cli, ["outcomes", "--decisions", str(tmp_path), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "error:" in res.output


def test_loop_demo_runs_two_cycles(trained, tmp_path, monkeypatch):
    from rich.console import Console

    from engine.cli.loop_demo import run_loop_demo

    monkeypatch.setenv("RETAIN_STORE_URL", f"sqlite:///{tmp_path / 'retain.db'}")
    console = Console(record=True, width=160)
    result = run_loop_demo(trained.settings(), rows=5000, trials=1, out=tmp_path / "out", console=console)
    text = console.export_text()
    assert "cycle 2/2" in text and "value of learning" in text and "idempotent" in text
    first, second = result["cycles"]
    assert first["overall_within_ci"]
    # Cycle 2 decides with an uplift model whose hold-out is keyed by cycle 1's run id (random), so its 95%
    # interval misses the truth about one run in twenty by design; the truth must lie within 99.9% (3.29 SE).
    lo, hi = second["overall_ci"]
    measured, truth = second["overall_uplift"], second["overall_true_uplift"]
    side = (hi - measured) if truth > measured else (measured - lo)
    assert abs(truth - measured) <= side * 3.29 / 1.96, second
    assert result["learned_rates"] > 0
    assert open_store(url=f"sqlite:///{tmp_path / 'retain.db'}").counts()["decision_runs"] == 2


def test_insert_frame_writes_every_kind_of_column_as_stored_values(tmp_path):
    """Columns of each kind a decision table holds reach the store as Python values, None for missing."""
    store = open_store(url=f"sqlite:///{tmp_path / 'kinds.db'}")
    table = sa.Table("kinds", sa.MetaData(), *(sa.Column(c, sa.String if c in ("o", "cat", "s") else sa.Float)
                                               for c in ("f", "i", "b", "o", "nb", "ni", "cat", "s")))
    table.create(store.engine)
    frame = pd.DataFrame({
        "f": [1.5, np.nan, 3.0], "i": [1, 2, 3], "b": [True, False, True], "o": ["a", None, np.nan],
        "nb": pd.array([True, None, False], dtype="boolean"), "ni": pd.array([4, None, 6], dtype="Int64"),
        "cat": pd.Categorical(["x", None, "y"]), "s": pd.array(["p", None, "r"], dtype="string"),
    })
    with store.transaction() as conn:
        assert store.insert_frame(conn, table, frame) == 3
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(table)).all()]
    assert [r[:3] for r in rows] == [(1.5, 1.0, 1.0), (None, 2.0, 0.0), (3.0, 3.0, 1.0)]
    assert [r[3] for r in rows] == ["a", None, None]
    assert [r[4] for r in rows] == [1.0, None, 0.0] and [r[5] for r in rows] == [4.0, None, 6.0]
    assert [r[6] for r in rows] == ["x", None, "y"] and [r[7] for r in rows] == ["p", None, "r"]
