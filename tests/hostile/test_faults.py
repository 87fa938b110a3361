"""Faults: a run killed at any instant, a disk that fills up, a later file with fewer columns.

Whatever instant a run dies at, the output folder holds one complete run (the old one or the new one,
never a mix), the stores stay whole, and nothing stored is erased by a file that does not carry it.
Kills are real SIGKILLs at named failpoints (RETAIN_FAILPOINT, engine.data.io.failpoint).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from engine.data.io import recover

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("feedback_cases", ROOT / "tests" / "feedback" / "test_feedback.py")
_feedback = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_feedback)
outcomes_for, synthetic_run = _feedback.outcomes_for, _feedback.synthetic_run
RETAIN = str(Path(sys.executable).with_name("retain"))


def _retain(*argv: str, cwd: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RETAIN_"))}
    if failpoint:
        env["RETAIN_FAILPOINT"] = failpoint
    return subprocess.run([RETAIN, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _consistent(out: Path) -> str:
    """The run id of the one complete run `out` holds (summary, decisions and work orders agree)."""
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_parquet(out / "decisions.parquet")
    assert set(table["decision_run"]) == {summary["decision_run"]}
    orders = sum(len(pd.read_csv(f)) for f in (out / "work_orders").glob("*.csv"))
    assert orders == summary["status"].get("offer", 0)
    assert {p.name for p in out.iterdir()} <= {"summary.json", "decisions.parquet", "work_orders"}
    return summary["decision_run"]


@pytest.fixture()
def decide_args(trained, month_files, tmp_path):
    month = tmp_path / "month.parquet"
    pd.read_parquet(month_files["same"]).head(600).to_parquet(month, index=False)
    shutil.copytree(ROOT / "policies", tmp_path / "policies")

    def args(out: Path, *extra: str) -> list[str]:
        return ["decide", "--input", str(month), "--out", str(out), "--policies", str(tmp_path / "policies"),
                "--no-log", "--no-record", *extra, *trained.args()]
    return args


def test_a_kill_at_any_publish_instant_leaves_one_complete_run(decide_args, tmp_path):
    out = tmp_path / "out" / "decisions"
    first = _retain(*decide_args(out, "--date", "2026-12-01"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_a = _consistent(out)

    killed = _retain(*decide_args(out, "--date", "2026-12-02"), cwd=tmp_path, failpoint="publish:staged")
    assert killed.returncode == -9
    assert _consistent(out) == run_a, "killed before the swap: the old run stays"

    killed = _retain(*decide_args(out, "--date", "2026-12-03"), cwd=tmp_path, failpoint="publish:between-renames")
    assert killed.returncode == -9
    assert not out.exists(), "killed between the two renames: the folder is momentarily absent, never mixed"
    recover(out)  # what the next publication into this folder does first
    run_c = _consistent(out)
    assert run_c != run_a, "the complete new run is promoted"
    assert not list(out.parent.glob(".decisions.staging-*"))

    again = _retain(*decide_args(out, "--date", "2026-12-04"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _consistent(out) not in (run_a, run_c)
    assert _consistent(out.parent / ".decisions.previous") == run_c, "the replaced run is kept, not lost"
    assert not list(out.parent.glob(".decisions.staging-*"))


def test_a_run_with_no_offers_leaves_no_stale_work_orders(decide_args, tmp_path):
    out = tmp_path / "out"
    assert _retain(*decide_args(out), cwd=tmp_path).returncode == 0
    assert json.loads((out / "summary.json").read_text())["status"].get("offer", 0) > 0
    rules = tmp_path / "policies" / "rules"
    for f in rules.glob("*.yaml"):
        f.unlink()
    (rules / "nobody.yaml").write_text(
        "rules:\n  - id: nobody\n    description: matches no one\n    priority: 1\n    stage: preventive\n"
        "    when: {tenure_months: {lt: -1}}\n    then: {offer: care_message}\n")
    res = _retain(*decide_args(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert _consistent(out)
    assert json.loads((out / "summary.json").read_text())["status"].get("offer", 0) == 0


def test_a_kill_inside_ingest_stores_nothing_and_a_rerun_stores_all(tmp_path):
    from engine.config import load_settings
    from engine.feedback.ingest import record_run
    from engine.feedback.store import open_store, outcomes

    settings = load_settings(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    table, summary, orders = synthetic_run()
    record_run(settings, table, summary, work_orders=orders, url=url)
    outcomes_for(table, orders, np.zeros(len(table), dtype=bool)).to_csv(tmp_path / "o.csv", index=False)
    args = ("feedback", "ingest", str(tmp_path / "o.csv"), "--store", url, "--tracking-uri", settings.tracking_uri)
    killed = _retain(*args, cwd=tmp_path, failpoint="ingest:in-transaction")
    assert killed.returncode == -9
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM outcomes").fetchone()[0] == 0
    done = _retain(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(open_store(url=url).read_in(outcomes, "decision_run", ["R1"], ["subscriber_id"])) == len(table)


def test_a_later_file_without_90_day_fields_erases_nothing(tmp_path):
    from engine.config import load_settings
    from engine.feedback.ingest import ingest, record_run
    from engine.feedback.store import open_store

    settings = load_settings(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    table, summary, orders = synthetic_run()
    record_run(settings, table, summary, work_orders=orders, url=url)
    full = outcomes_for(table, orders, np.arange(len(table)) % 7 == 0)
    full.to_csv(tmp_path / "full.csv", index=False)
    ingest(settings, tmp_path / "full.csv", url=url)
    query = "SELECT subscriber_id, churned_90d, revenue_after FROM outcomes ORDER BY subscriber_id"
    before = open_store(url=url).read(sa.text(query))
    assert before["churned_90d"].notna().all() and before["revenue_after"].notna().all()
    early = full.drop(columns=["churned_60d", "churned_90d", "revenue_after"])
    early.to_csv(tmp_path / "early.csv", index=False)
    result = ingest(settings, tmp_path / "early.csv", url=url)
    assert result.updated == 0 and result.inserted == 0
    after = open_store(url=url).read(sa.text(query))
    pd.testing.assert_frame_equal(before, after)


def test_a_full_disk_is_one_line_and_publishes_nothing(decide_args, tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:80]}): full-disk case "
                    "not run")
    try:
        out = disk / "out"
        res = _retain(*decide_args(out), cwd=tmp_path)
        assert res.returncode == 2, res.stdout + res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "no space left" in lines[0], res.stderr
        assert "Traceback" not in res.stderr
        assert not out.exists() and not list(disk.glob(".out.staging-*"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_published_run_is_always_in_the_decision_store(trained, month_files, tmp_path):
    month = tmp_path / "month.parquet"
    pd.read_parquet(month_files["same"]).head(300).to_parquet(month, index=False)
    store = tmp_path / "store.db"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(trained.config.read_text() + f"store_url: sqlite:///{store}\n")
    out = tmp_path / "out"

    def decide(*extra: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
        return _retain("decide", "--input", str(month), "--out", str(out), "--policies", str(ROOT / "policies"),
                       "--no-log", "--config", str(cfg), "--tracking-uri", trained.uri, *extra, cwd=tmp_path,
                       failpoint=failpoint)

    def stored_runs() -> set[str]:
        with sqlite3.connect(store) as conn:
            return {r[0] for r in conn.execute("SELECT decision_run FROM decision_runs")}

    assert decide("--date", "2026-12-01").returncode == 0
    first = _consistent(out)
    assert first in stored_runs()
    killed = decide("--date", "2026-12-02", failpoint="decide:recorded")
    assert killed.returncode == -9
    assert _consistent(out) == first and len(stored_runs()) == 2, "recorded first: the unpublished run sent nothing"
    killed = decide("--date", "2026-12-03", failpoint="publish:between-renames")
    assert killed.returncode == -9
    recover(out)
    assert _consistent(out) in stored_runs(), "whatever is published is in the store"
