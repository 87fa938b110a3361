"""Exports opened in a spreadsheet: no cell of a work-order CSV can run as a formula."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from engine.cli.main import app
from engine.data.io import FORMULA_START, neutralise_formulas, read_table, restore_formulas

ROOT = Path(__file__).resolve().parents[2]


def _number(cell: str) -> bool:
    """A negative amount (-3.5) is a number to a spreadsheet, not a formula."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_work_orders_neutralise_formula_cells(trained, month_files, tmp_path):
    month = pd.read_parquet(month_files["same"]).head(400)
    month["subscriber_id"] = [("=HYPERLINK(\"x\")" if i % 3 == 0 else "@SUM(1)" if i % 3 == 1 else "+1") + f"{i}"
                              for i in range(len(month))]
    month.to_parquet(tmp_path / "in.parquet", index=False)
    res = CliRunner().invoke(app, ["decide", "--input", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "out"),
                                   "--policies", str(ROOT / "policies"), "--no-log", "--no-record",
                                   *trained.args()])
    assert res.exit_code == 0, res.output
    cells = 0
    for f in (tmp_path / "out" / "work_orders").glob("*.csv"):
        with f.open(newline="") as fh:
            for row in csv.reader(fh):
                cells += len(row)
                assert not any(c.startswith(FORMULA_START) and not _number(c) for c in row), (f.name, row)
    assert cells > 0
    orders = pd.concat([read_table(f) for f in (tmp_path / "out" / "work_orders").glob("*.csv") if f.stat().st_size
                        and len(pd.read_csv(f))])
    assert orders["subscriber_id"].str.startswith("'").all()
    assert set(restore_formulas(orders)["subscriber_id"]) <= set(month["subscriber_id"])


def test_numbers_stay_numbers_and_the_round_trip_is_exact():
    df = pd.DataFrame({"id": ["=1+1", "@x", "ok", "-2", None], "amount": [-1.5, 2, 3, 4, 5]})
    safe = neutralise_formulas(df)
    assert safe["id"].tolist() == ["'=1+1", "'@x", "ok", "'-2", None]
    assert safe["amount"].tolist() == df["amount"].tolist()
    pd.testing.assert_frame_equal(restore_formulas(safe), df)
