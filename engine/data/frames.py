"""Reading a frame's columns as arrays, and adding columns to it, at the cost of numpy rather than pandas.

Why: the first read of a column of a frame (`frame[name]`) makes pandas build and cache a Series, about
30 us whatever the frame's length. A decide call for a few subscribers reads a couple of hundred columns
of frames it has just built (the request rows, the scored rows, the candidates, the decision table), so
about a third of a one-subscriber decision went on Series nobody kept. The frame's block manager hands
out the same array in about 1 us. Everything else - extension arrays such as categoricals and nullable
booleans, duplicated column names, a dtype conversion pandas does its own way - goes through pandas'
public path, so the values are always what `frame[name].to_numpy(dtype)` gives (tests/data/test_frames.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def block_values(frame: pd.DataFrame, name: str) -> np.ndarray | None:
    """The column's numpy array as the frame holds it, or None: an extension array (categorical, nullable,
    string), a missing or duplicated name. For callers that handle a Series themselves in those cases."""
    raw = _raw(frame, name)
    return raw if isinstance(raw, np.ndarray) else None


def _raw(frame: pd.DataFrame, name: str) -> Any:
    """The column's backing array (an ndarray or an extension array), or None when the name is not one
    column (missing, duplicated) or the frame's internals are not the ones this was written against."""
    try:
        loc = frame.columns.get_loc(name)
    except KeyError:
        return None
    if not isinstance(loc, int):
        return None
    mgr = getattr(frame, "_mgr", None)
    getter = getattr(mgr, "iget_values", None)
    return getter(loc) if getter is not None else None


def column_values(frame: pd.DataFrame, name: str, dtype: Any = None) -> np.ndarray:
    """`frame[name].to_numpy(dtype=dtype)`: a view of the column where pandas' gives one."""
    raw = _raw(frame, name)
    if isinstance(raw, np.ndarray):
        return raw if dtype is None else np.asarray(raw, dtype=dtype)
    return frame[name].to_numpy(dtype=dtype)


def column_categorical(frame: pd.DataFrame, name: str) -> pd.Categorical:
    """`frame[name].array` of a categorical column: the Categorical itself (codes and categories)."""
    raw = _raw(frame, name)
    return raw if isinstance(raw, pd.Categorical) else frame[name].array


def _plain(values: Any, n: int) -> bool:
    """Whether a column can go into a block as it is: a 1-D numpy array of numbers, booleans or Python
    objects, or a Categorical, of the frame's length."""
    if isinstance(values, np.ndarray):
        return values.ndim == 1 and len(values) == n and values.dtype.kind in "biufO"
    return isinstance(values, pd.Categorical) and len(values) == n


_COLUMN_INDEXES: dict[tuple[str, ...], pd.Index] = {}
COLUMN_INDEXES_KEPT = 1024


def _columns_index(names: list[str]) -> pd.Index:
    """One shared columns Index per list of names. Why: an Index is immutable, and a decide call builds the
    same few frames' columns every call: building the Index (~15 us) and, on the first `get_loc`, its hash
    table cost more than the frame's other parts. Shared, both are made once. (pandas never changes an
    Index in place; `frame.columns.name = ...` would, for every frame sharing it: nothing here does that.)"""
    key = tuple(names)
    index = _COLUMN_INDEXES.get(key)
    if index is None:
        if len(_COLUMN_INDEXES) >= COLUMN_INDEXES_KEPT:
            _COLUMN_INDEXES.clear()
        index = _COLUMN_INDEXES[key] = pd.Index(names, dtype=object)
    return index


def frame_of(columns: Mapping[str, Any], index: pd.Index | None = None, *, consolidate: bool = False) -> pd.DataFrame:
    """`pd.DataFrame(columns, index=index, copy=False)`: the arrays are the frame's, not copied; a scalar
    (a run id, a date) is broadcast as a column of Python objects. `consolidate=True` copies columns of one
    type into one block, as the constructor does: for a frame whose columns are read many times over.

    Plain arrays (`_plain`) become one block each directly, without the constructor's per-column checks
    (~5 us a column); anything else - lists, other arrays - goes through the constructor.
    """
    names = list(columns)
    lengths = [len(v) for v in columns.values() if np.ndim(v)]
    n = len(index) if index is not None else (lengths[0] if lengths else 0)
    arrays = [np.full(n, v, dtype=object) if np.ndim(v) == 0 else v for v in columns.values()]
    index = pd.RangeIndex(n) if index is None else index
    if arrays and all(_plain(a, n) for a in arrays):
        try:
            from pandas.core.internals.managers import create_block_manager_from_column_arrays
        except ImportError:  # other internals: the constructor
            pass
        else:
            mgr = create_block_manager_from_column_arrays(arrays, [_columns_index(names), index],
                                                          consolidate=consolidate, refs=[None] * len(arrays))
            return pd.DataFrame._from_mgr(mgr, axes=mgr.axes)
    return pd.DataFrame(dict(zip(names, arrays, strict=True)), index=index, copy=False)


def with_columns(frame: pd.DataFrame, columns: dict[str, Any], *, insert_rows: int = 10_000) -> pd.DataFrame:
    """`frame` with `columns` added (or replaced in place, keeping their position), as repeated
    `frame[name] = values` would give; columns of `frame` are not copied, scalars are broadcast.

    Why not the inserts: each costs ~0.15 ms whatever the frame's length, which a one-subscriber decision
    would pay dozens of times. Why not `pd.concat`: its checks cost ~0.3 ms a call on a few rows; new
    columns that are plain numpy arrays (numbers, booleans, Python objects) are put beside the frame's
    blocks as they are. Above `insert_rows` rows columns are inserted one by one: a concat of two wide
    frames would copy the whole table (~0.8 GiB at a million rows) where inserts cost nothing per row.
    """
    out = frame.copy(deep=False)
    columns = dict(columns)
    n = len(frame)
    for name in [c for c in columns if c in out.columns or n > insert_rows]:
        out[name] = columns.pop(name)
    if not columns:
        return out
    added = frame_of(columns, frame.index)
    mgr_type = type(getattr(out, "_mgr", None))
    concat = getattr(mgr_type, "concat_horizontal", None)
    if concat is None or type(getattr(added, "_mgr", None)) is not mgr_type:
        return pd.concat([out, added], axis=1, copy=False)
    mgr = concat([out._mgr, added._mgr], axes=[out.columns.append(added.columns), out.index])
    return pd.DataFrame._from_mgr(mgr, axes=mgr.axes)


def _record_column(values: list[Any]) -> np.ndarray | None:
    """One column of `records_frame`, or None when pandas' own inference must decide it."""
    kinds = {type(v) for v in values}
    if kinds <= {str, type(None)}:  # text (and all-missing): objects, None kept
        return np.array(values, dtype=object)
    if kinds == {bool}:
        return np.array(values, dtype=bool)
    if kinds <= {int, float, type(None)}:  # numbers: float64 with NaN for None, int64 when all are ints
        if kinds == {int}:
            try:
                return np.array(values, dtype=np.int64)
            except OverflowError:  # beyond int64: pandas keeps Python ints
                return None
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return None


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """`pd.DataFrame(records)` for records of plain scalars (a request's rows), with the same columns (in
    order of first appearance), dtypes and values, at about two thirds of the cost.

    Why: the constructor infers every column's type from its Python objects, ~0.4 ms for eight request rows
    of the subscriber schema. Columns of text, booleans or numbers (None as a missing value) are typed here
    from the values' Python types; anything else (a key some record lacks, mixed kinds, nested values)
    goes through the constructor for the whole frame, so the result is always the constructor's.
    """
    columns = list(dict.fromkeys(k for r in records for k in r))
    if not records or any(len(r) != len(columns) for r in records):
        return pd.DataFrame(records)
    arrays = {}
    for name in columns:
        values = _record_column([r[name] for r in records])
        if values is None:
            return pd.DataFrame(records)
        arrays[name] = values
    # consolidated as the constructor's: a decide call reads its input's columns many times over, and one
    # block per column made that call ~0.2 ms slower on eight rows, undoing most of what typing them here saves
    return frame_of(arrays, consolidate=True)
