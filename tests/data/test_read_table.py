"""Reading tables: a folder of Parquet files (what Spark writes) is one table; a folder of anything else is
refused in one line."""

from __future__ import annotations

import pandas as pd
import pytest

from engine.data.io import read_table
from engine.errors import DataError


def test_a_parquet_folder_is_one_table(tmp_path):
    folder = tmp_path / "decisions.parquet"
    folder.mkdir()
    pd.DataFrame({"subscriber_id": ["a", "b"], "x": [1.0, 2.0]}).to_parquet(folder / "part-0000.parquet")
    pd.DataFrame({"subscriber_id": ["c"], "x": [3.0]}).to_parquet(folder / "part-0001.parquet")
    (folder / "_SUCCESS").write_text("")
    got = read_table(folder)
    assert sorted(got["subscriber_id"]) == ["a", "b", "c"] and got["x"].sum() == 6.0


def test_a_folder_without_parquet_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="directory without Parquet files"):
        read_table(tmp_path)
