"""The service records many decide calls in one transaction: the stored rows must be exactly the rows
`retain feedback record` (engine.feedback.ingest.record_run) stores for the same runs one by one."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa

from engine.data.io import read_table


def _table(store, name: str, order: list[str]) -> pd.DataFrame:
    with store.engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {name}"), conn)
    return frame.drop(columns=[c for c in ("recorded_at",) if c in frame.columns]).sort_values(order) \
        .reset_index(drop=True)


def test_batched_recording_equals_record_run(trained, month_files, tmp_path):
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.feedback.ingest import record_run
    from engine.feedback.store import open_store
    from engine.model.registry import load_model
    from engine.serve.decider import record_runs, run_rows, serving_settings

    settings = serving_settings(trained.settings())
    loaded = load_model(settings, "champion")
    engine = load_policy_engine("policies")
    rows = read_table(month_files["same"]).drop(columns=["churn", "churn_reason"]).iloc[:40]
    # runs of 1, 3, 7 and 29 subscribers; the first subscriber is decided in two runs (allowed across runs)
    frames = [rows.iloc[[0]], rows.iloc[0:3], rows.iloc[3:10], rows.iloc[10:39]]
    runs = [decide_frame(f.reset_index(drop=True), loaded=loaded, policy_engine=engine, settings=settings,
                         run_id=f"run-{i}", run_date=dt.date(2026, 11, 24), source="request")
            for i, f in enumerate(frames)]
    assert sum(len(d.work_orders.get(ch, [])) for d in runs for ch in d.work_orders) > 0, "no orders to compare"

    batched = open_store(url=f"sqlite:///{tmp_path / 'batched.db'}")
    with batched.transaction() as conn:
        record_runs(batched, conn, [run_rows(d) for d in runs])
    one_by_one = f"sqlite:///{tmp_path / 'single.db'}"
    for d in runs:
        record_run(settings, d.table, d.summary, work_orders=d.work_orders, url=one_by_one)
    single = open_store(url=one_by_one)

    for name, order in (("decision_runs", ["decision_run"]), ("decisions", ["decision_run", "subscriber_id"]),
                        ("work_orders", ["order_id"])):
        got, want = _table(batched, name, order), _table(single, name, order)
        assert len(want) > 0
        pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_a_run_that_cannot_become_rows_is_reported_and_the_others_are_recorded(trained, month_files, tmp_path,
                                                                               caplog):
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.feedback.store import open_store
    from engine.model.registry import load_model
    from engine.serve.decider import Recorder, serving_settings
    from engine.serve.ledger import Ledger

    settings = serving_settings(trained.settings())
    loaded = load_model(settings, "champion")
    rows = read_table(month_files["same"]).drop(columns=["churn", "churn_reason"]).iloc[:6].reset_index(drop=True)
    good, bad = (decide_frame(rows, loaded=loaded, policy_engine=load_policy_engine("policies"), settings=settings,
                              run_id=f"run-{name}", run_date=dt.date(2026, 11, 24), source="request")
                 for name in ("good", "bad"))
    bad.table["subscriber_id"] = bad.table["subscriber_id"].iloc[0]  # one subscriber twice: not storable
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(settings, url=url)
    recorder = Recorder(settings, Ledger(store, None, {}), flush_seconds=0.05, store_url=url)
    recorder.submit(bad, {}, [])
    recorder.submit(good, {}, [])
    recorder.close()
    assert recorder.unrecorded_runs == 1
    assert any("run-bad could not be recorded" in r.getMessage() and "duplicate subscriber_id" in r.getMessage()
               for r in caplog.records)
    assert recorder.written_runs == 1 and recorder.written_decisions == 6
    assert _table(store, "decision_runs", ["decision_run"])["decision_run"].tolist() == ["run-good"]


def test_a_failed_write_keeps_the_runs_rows_and_writes_them_once_the_store_is_back(trained, month_files, tmp_path):
    import time

    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.feedback.store import open_store
    from engine.model.registry import load_model
    from engine.serve.decider import Recorder, serving_settings
    from engine.serve.ledger import Ledger

    settings = serving_settings(trained.settings())
    loaded = load_model(settings, "champion")
    rows = read_table(month_files["same"]).drop(columns=["churn", "churn_reason"]).iloc[:5].reset_index(drop=True)
    run = decide_frame(rows, loaded=loaded, policy_engine=load_policy_engine("policies"), settings=settings,
                       run_id="run-late", run_date=dt.date(2026, 11, 24), source="request")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(settings, url=url)
    with store.engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE decisions RENAME TO decisions_away")
    recorder = Recorder(settings, Ledger(store, None, {}), flush_seconds=0.05, store_url=url)
    recorder.submit(run, {}, [])
    deadline = time.monotonic() + 30
    while recorder.failures < 4 and time.monotonic() < deadline:  # a flush and its 3 retries: queued again
        time.sleep(0.02)
    assert recorder.failures >= 4 and recorder.written_runs == 0 and "decisions" in recorder.last_error
    with store.engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE decisions_away RENAME TO decisions")
    recorder.close()
    assert recorder.written_runs == 1 and recorder.written_decisions == 5 and recorder.unrecorded_runs == 0
    assert len(_table(store, "decisions", ["subscriber_id"])) == 5
