"""Work-order CSVs are formatted by Arrow kernels, not pandas; a spreadsheet, the outcome ingest and every
earlier file must see exactly the bytes pandas wrote (formula cells neutralised)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from engine.data.csvtext import csv_bytes, neutralise_formulas
from engine.data.io import read_table, restore_formulas, write_table

PIECES = ["", "a", "Z", "ü", "中", ",", '"', "\n", "\r", "\t", " ", "=", "+", "-", "@", "'", "1", "0.5", ";"]


def pandas_bytes(df: pd.DataFrame, header: bool = True) -> bytes:
    return neutralise_formulas(df).to_csv(index=False, header=header).encode()


def random_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    def text() -> str | None:
        if rng.random() < 0.1:
            return None
        return "".join(rng.choice(PIECES, size=int(rng.integers(0, 5))))

    floats = rng.choice([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-5, 1e16, 3.0, 0.1 + 0.2, -2.5], size=n)
    floats = np.where(rng.random(n) < 0.5, floats, np.round(rng.normal(0, 100, n), int(rng.integers(0, 6))))
    return pd.DataFrame({
        "text": [text() for _ in range(n)],
        "repeated": rng.choice(["=SUM(A1)", "plain", "with, comma", 'a "quote"', "-1"], size=n).astype(object),
        "amount": floats,
        "count": rng.integers(-5, 10**9, size=n),
        "flag": rng.random(n) < 0.5,
        "id": [f"S{i:07d}" for i in range(n)],
    })


@pytest.mark.parametrize("seed", range(6))
def test_the_bytes_pandas_wrote_on_hostile_frames(seed):
    df = random_frame(np.random.default_rng(seed), 400)
    assert csv_bytes(df) == pandas_bytes(df)
    assert csv_bytes(df, header=False) == pandas_bytes(df, header=False)


def test_edge_shapes_and_types_fall_back_or_match():
    rng = np.random.default_rng(7)
    df = random_frame(rng, 50)
    assert csv_bytes(df.iloc[0:0]) == pandas_bytes(df.iloc[0:0])  # header only
    assert csv_bytes(df[["text"]]) == pandas_bytes(df[["text"]])  # one column: pandas quotes empty rows
    odd = df.assign(when=pd.Timestamp("2026-11-24"), tier=pd.Categorical(["a", "b"] * 25),
                    mixed=[1, "=x"] * 25, day=[dt.date(2026, 11, 24)] * 50)
    assert csv_bytes(odd) == pandas_bytes(odd)
    header = pd.DataFrame({"a,b": [1.0], 'q"': ["x"], "=f": ["=y"]})
    assert csv_bytes(header) == pandas_bytes(header)


def test_write_table_round_trip_restores_the_text(tmp_path):
    # (a carriage return inside a cell is left unquoted, as pandas leaves it, and reads back as a line break)
    df = random_frame(np.random.default_rng(3), 200)
    df["text"] = df["text"].str.replace("\r", "", regex=False)
    path = write_table(df, tmp_path / "orders.csv")
    assert path.read_bytes() == pandas_bytes(df)
    back = restore_formulas(read_table(path))
    assert back["repeated"].tolist() == df["repeated"].tolist()
    assert back["id"].tolist() == df["id"].tolist()
