"""Publishing decisions: what is written reads back as what was decided, and a failed run changes nothing."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from engine.decision.publish import DECISIONS_FILE, ORDERS_DIR, SUMMARY_FILE, write_decisions
from engine.vocabulary import CHANNELS


@pytest.fixture(scope="module")
def decisions(trained, month_files):
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.model.registry import load_model

    settings = trained.settings()
    return decide_frame(pd.read_parquet(month_files["same"]).head(1500), loaded=load_model(settings, "champion"),
                        policy_engine=load_policy_engine("policies"), settings=settings, run_id="rt",
                        run_date=dt.date(2026, 11, 23))


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).where(frame.notna(), "").astype(str).reset_index(drop=True)


def test_decisions_and_work_orders_round_trip(decisions, tmp_path):
    assert sum(len(o) for o in decisions.work_orders.values()) > 0
    files = write_decisions(decisions, tmp_path)
    back = pd.read_parquet(files["decisions"])
    pd.testing.assert_frame_equal(back, decisions.table.reset_index(drop=True))
    for channel in CHANNELS:
        path = tmp_path / ORDERS_DIR / f"{channel}.csv"
        assert files[channel] == path and path.exists(), "every channel gets a file (header-only when empty)"
        read = pd.read_csv(path, dtype=str, keep_default_na=False)
        orders = decisions.work_orders.get(channel)
        if orders is None:
            assert len(read) == 0 and "order_id" in read.columns
            continue
        assert list(read.columns) == list(orders.columns)
        pd.testing.assert_frame_equal(read, _as_text(orders))
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["decision_run"] == "rt" and summary["subscribers"] == len(decisions.table)
    assert summary["files"]["decisions"] == str(tmp_path / DECISIONS_FILE)


def test_a_failed_publication_leaves_the_previous_run_untouched(decisions, tmp_path, monkeypatch):
    import engine.decision.publish as publish

    write_decisions(decisions, tmp_path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = publish.write_table
    calls = []

    def failing(df, path):
        calls.append(path)
        if len(calls) == 3:  # two work orders were already staged (and the decisions file is being written)
            raise OSError("disk full")
        return real(df, path)

    monkeypatch.setattr(publish, "write_table", failing)
    other = type(decisions)(run_id="second", run_date=decisions.run_date,
                            table=decisions.table.assign(decision_run="second"), work_orders=decisions.work_orders,
                            summary={**decisions.summary, "decision_run": "second"})
    with pytest.raises(OSError, match="disk full"):
        write_decisions(other, tmp_path)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "nothing of the failed run is visible, nothing of the previous run is lost"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")], "no staging folder is left behind"


def test_a_failed_decisions_table_fails_the_publication(decisions, tmp_path, monkeypatch):
    """The table is written in a second thread: its error is the call's, and nothing is published."""
    import engine.decision.publish as publish

    write_decisions(decisions, tmp_path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def failing(table, path):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(publish, "_write_decisions_table", failing)
    with pytest.raises(OSError, match="disk full"):
        write_decisions(decisions, tmp_path)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.staging")] == []


def test_a_failed_work_order_waits_for_the_table_thread(decisions, tmp_path, monkeypatch):
    """A work order failing while the table is still being written: the call returns only once the thread is
    done, so the staging folder is not removed under it and no file appears after the call."""
    import threading
    import time

    import engine.decision.publish as publish

    done = threading.Event()

    def slow(table, path):
        time.sleep(0.3)
        path.write_bytes(b"table")
        done.set()

    def failing(df, path):
        raise OSError("disk full")

    monkeypatch.setattr(publish, "_write_decisions_table", slow)
    monkeypatch.setattr(publish, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        write_decisions(decisions, tmp_path / "out")
    assert done.is_set(), "the table's thread finished before the call returned"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing published, no staging folder left"


def test_order_ids_are_the_same_for_a_few_orders_and_for_many() -> None:
    """A few orders are numbered in Python, many with Arrow: the same ids either way."""
    import numpy as np

    from engine.decision import orders

    numbers = np.array([1, 42, 9_999_999, 12_345_678])
    few = orders.order_ids("20261124T101500-abc123", numbers)
    many = orders.order_ids("20261124T101500-abc123", np.r_[numbers, np.arange(1, orders.SMALL_ORDERS + 1)])
    assert few.tolist() == many[:4].tolist() == ["20261124T101500-abc123-0000001", "20261124T101500-abc123-0000042",
                                                 "20261124T101500-abc123-9999999", "20261124T101500-abc123-12345678"]
    assert few.dtype == many.dtype == object


def test_summary_counts_are_pandas_value_counts() -> None:
    """Counts of a few rows come from a Counter: the same dict as pandas' value_counts, ties in its order."""
    import numpy as np
    import pandas as pd

    from engine.decision.orders import value_counts

    rng = np.random.default_rng(3)
    words = np.array(["high", "medium", "low", "none", None, "price", "network"] + [f"w{i}" for i in range(30)],
                     dtype=object)
    for _ in range(3000):
        n = int(rng.integers(1, 300))
        values = words[rng.integers(0, int(rng.integers(1, len(words))), n)]
        expected = {str(k): int(v) for k, v in pd.Series(values).value_counts().items()}
        got = value_counts(values)
        assert list(got.items()) == list(expected.items()), values
