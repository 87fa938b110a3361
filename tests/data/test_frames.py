"""engine.data.frames reads the same values as pandas' public path, for every kind of column we hold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandas.core.dtypes.missing import array_equivalent

from engine.data.frames import column_categorical, column_values


@pytest.fixture
def frame() -> pd.DataFrame:
    df = pd.DataFrame({
        "f": [1.5, np.nan, 3.0], "i": [1, 2, 3], "b": [True, False, True], "o": ["a", None, "c"],
        "cat": pd.Categorical(["x", "y", "x"]), "nb": pd.array([True, None, False], dtype="boolean"),
        "s": pd.array(["p", None, "r"], dtype="string"), "dt": pd.to_datetime(["2026-01-01"] * 3),
    })
    df["late"] = np.arange(3)  # a second int block
    return df


@pytest.mark.parametrize("dtype", [None, object, float])
def test_values_equal_to_numpy(frame: pd.DataFrame, dtype) -> None:
    for name in frame.columns:
        try:
            expected = frame[name].to_numpy(dtype=dtype)
        except (TypeError, ValueError):
            with pytest.raises((TypeError, ValueError)):
                column_values(frame, name, dtype)
            continue
        got = column_values(frame, name, dtype)
        assert got.dtype == expected.dtype, name
        assert array_equivalent(got, expected)


def test_values_is_a_view_of_numpy_columns(frame: pd.DataFrame) -> None:
    assert np.shares_memory(column_values(frame, "f"), frame["f"].to_numpy())


def test_duplicated_and_missing_names_behave_as_pandas(frame: pd.DataFrame) -> None:
    dup = pd.concat([frame[["i"]], frame[["i"]]], axis=1)
    assert array_equivalent(column_values(dup, "i"), dup["i"].to_numpy())  # both columns, as pandas'
    with pytest.raises(KeyError):
        column_values(frame, "nope")


def test_categorical_is_the_column_categorical(frame: pd.DataFrame) -> None:
    cat = column_categorical(frame, "cat")
    assert cat is frame["cat"].array
    assert list(cat.categories) == ["x", "y"] and cat.codes.tolist() == [0, 1, 0]


@pytest.mark.parametrize("rows", [1, 8, 20])
def test_with_columns_equals_inserting_each_column(frame: pd.DataFrame, rows: int) -> None:
    from engine.data.frames import with_columns

    base = pd.concat([frame] * 7, ignore_index=True).iloc[:rows].reset_index(drop=True)
    new = {"p": np.linspace(0, 1, rows), "status": np.array(["offer"] * rows, dtype=object),
           "flag": np.ones(rows, bool), "k": np.arange(rows), "run": "20261124T1015-x",
           "i": np.arange(rows) * 10,  # replaces a column
           "cat2": pd.Categorical(["a"] * rows)}
    expected = base.copy()
    for name, v in new.items():
        expected[name] = v
    got = with_columns(base, new, insert_rows=10)
    pd.testing.assert_frame_equal(got, expected)
    assert list(base.columns) == list(frame.columns)  # the input frame is not changed
    assert np.shares_memory(column_values(got, "f"), column_values(base, "f"))  # nor copied


def test_records_frame_is_the_constructor_s_frame() -> None:
    """Request rows of every kind a JSON body can carry: the frame pd.DataFrame(records) builds, dtypes included."""
    from engine.data.frames import records_frame

    rng = np.random.default_rng(7)
    kinds = {
        "text": lambda: str(rng.integers(5)), "text_or_none": lambda: None if rng.random() < 0.4 else "x",
        "int": lambda: int(rng.integers(-5, 5)), "float": lambda: float(rng.normal()),
        "int_or_none": lambda: None if rng.random() < 0.4 else int(rng.integers(9)),
        "number": lambda: float(rng.normal()) if rng.random() < 0.5 else int(rng.integers(9)),
        "nan": lambda: float("nan"), "bool": lambda: bool(rng.random() < 0.5),
        "bool_or_none": lambda: None if rng.random() < 0.4 else True, "none": lambda: None,
        "mixed": lambda: 1 if rng.random() < 0.5 else True, "huge": lambda: 2 ** 70,
        "nested": lambda: {"size": 3},
    }
    for trial in range(300):
        names = list(rng.choice(list(kinds), size=int(rng.integers(1, 6)), replace=False))
        rows = [{name: kinds[name]() for name in names} for _ in range(int(rng.integers(1, 9)))]
        if trial % 10 == 0 and len(rows) > 1:
            rows[-1]["extra"] = 1  # a key some rows lack: NaN in the others
        expected = pd.DataFrame(rows)
        pd.testing.assert_frame_equal(records_frame(rows), expected, check_exact=True)
    pd.testing.assert_frame_equal(records_frame([]), pd.DataFrame([]))


def test_frames_with_the_same_columns_share_one_columns_index_and_changing_one_leaves_the_other() -> None:
    from engine.data.frames import frame_of

    a = frame_of({"x": np.arange(3), "y": np.array(["p", "q", "r"], dtype=object)})
    b = frame_of({"x": np.arange(2), "y": np.array(["s", "t"], dtype=object)})
    assert a.columns is b.columns, "built once, shared"
    a["z"] = 1.0
    a = a.rename(columns={"x": "w"})
    c = b.copy()
    c.insert(0, "first", 0)
    assert list(b.columns) == ["x", "y"] and b["y"].tolist() == ["s", "t"]
    assert list(frame_of({"x": np.arange(1), "y": np.array(["u"], dtype=object)}).columns) == ["x", "y"]
    pd.testing.assert_frame_equal(b, pd.DataFrame({"x": np.arange(2), "y": ["s", "t"]}))
