"""`retain demo`: the whole loop on built-in data, end to end, on a tiny population."""

from __future__ import annotations

import json

import pandas as pd

from engine.cli.main import app


def test_demo_runs_the_whole_loop(store, runner, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["demo", "--rows", "8000", "--trials", "1", "--out", str(out), *store.args()])
    assert res.exit_code == 0, res.output
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5", "mlflow ui"):
        assert step in res.output
    assert (out / "decisions" / "decisions.parquet").exists()
    assert len(pd.read_parquet(out / "decisions" / "decisions.parquet")) == 8000
    same = json.loads((out / "drift_same_month" / "summary.json").read_text())
    drifted = json.loads((out / "drift_competitor_month" / "summary.json").read_text())
    assert same["status"] == "healthy", same["one_line"]
    assert drifted["status"] == "drift", drifted["one_line"]
    assert "competitor_contact" in drifted["features"]["drifted"]
    assert (out / "drift_competitor_month" / "report.html").stat().st_size > 10_000
