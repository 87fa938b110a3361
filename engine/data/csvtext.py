"""CSV text for the files people open: work orders, exports, outcome templates.

Why not `DataFrame.to_csv`: a million work orders took pandas ~8 s to format and another ~5 s to
neutralise formula cells, the biggest stage of a decision run. Here each column becomes text in Arrow's
compute kernels (text columns) or once per distinct value (numbers: a probability rounded to 4 places has
at most 10,001 of them), and rows are joined without a Python loop. The bytes are pandas' own, byte for
byte (tests compare them on hostile frames): floats as Python writes them (`5.0`, `1e-05`), missing as an
empty field, quotes only where the csv module puts them (a comma, a double quote or a line feed), and text
a spreadsheet would run as a formula prefixed with `'` (see `engine.data.io.neutralise_formulas`).
Frames with other column types (dates, categories, mixed objects) are written by pandas, unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: A text cell starting with one of these would run as a formula in a spreadsheet.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula, prefixed with ' so they show as text.

    Why: work orders are opened in a spreadsheet by call-centre staff; a subscriber id or message starting
    with '=' must not run. Only text columns change; numbers (a negative amount) stay numbers.
    """
    out = df
    for col in df.columns:
        if df[col].dtype == object or isinstance(df[col].dtype, pd.StringDtype):
            text = df[col]
            risky = text.astype("string").str.startswith(FORMULA_START).fillna(False).to_numpy(dtype=bool)
            if risky.any():
                if out is df:
                    out = df.copy()
                out[col] = text.where(~risky, "'" + text.astype("string"))
    return out


def _text_column(values: pd.Series) -> pa.Array | None:
    """A text column as CSV fields (neutralised, quoted where needed); None when it holds anything but text.

    Repetitive columns (grades, offers, messages) are processed once per distinct value: a column whose first
    rows repeat is factorised first (hashing Python strings is cheaper than copying each into Arrow)."""
    raw = values.to_numpy(dtype=object)
    head = raw[:1000]
    distinct_head = len(pd.unique(head))
    if len(raw) > 1000 and distinct_head * 10 < len(head):
        codes, uniques = pd.factorize(raw, use_na_sentinel=True)
        dictionary = _strings(np.asarray(uniques, dtype=object))
        if dictionary is None:
            return None
        return pc.take(_as_fields(dictionary), pa.array(codes, mask=codes < 0))
    arr = _strings(raw)
    if arr is None:
        return None
    if distinct_head * 2 > len(head):  # ids: every value its own
        return _as_fields(arr)
    encoded = pc.dictionary_encode(arr)
    if len(encoded.dictionary) * 4 < len(arr):
        return pc.take(_as_fields(encoded.dictionary), encoded.indices)
    return _as_fields(arr)


def _strings(raw: np.ndarray) -> pa.Array | None:
    try:
        return pa.array(raw, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _as_fields(arr: pa.Array) -> pa.Array:
    first = pc.utf8_slice_codeunits(arr, 0, 1)
    risky = pc.fill_null(pc.is_in(first, value_set=pa.array(FORMULA_START)), False)
    if pc.any(risky).as_py():
        arr = pc.if_else(risky, pc.binary_join_element_wise("'", arr, ""), arr)
    quoted = pc.fill_null(pc.or_(pc.or_(pc.match_substring(arr, ","), pc.match_substring(arr, '"')),
                                 pc.match_substring(arr, "\n")), False)
    if not pc.any(quoted).as_py():
        return arr
    escaped = pc.binary_join_element_wise('"', pc.replace_substring(arr, '"', '""'), '"', "")
    return pc.if_else(quoted, escaped, arr)


def _by_distinct_value(values: np.ndarray, text: type[str] | None = None) -> pa.Array:
    """Format each distinct value once (as pandas would: repr for floats, str otherwise); missing -> null."""
    if text is None:  # floats by bit pattern: -0.0 is written as pandas writes it, not as 0.0
        missing = np.isnan(values)
        codes, uniques = pd.factorize(values.view(np.int64))
        words = [repr(float(u)) for u in uniques.view(np.float64)]
    else:
        missing = pd.isna(values)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        words = [text(u) for u in uniques]
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=missing | (codes < 0)),
                                          pa.array(words, type=pa.string())).cast(pa.string())


def _fields(values: pd.Series) -> pa.Array | None:
    """One column as CSV fields (large strings: ten million rows of text pass 2 GiB), or None when only
    pandas knows how it would be written."""
    out = _plain_fields(values)
    return None if out is None else out.cast(pa.large_string())


def _plain_fields(values: pd.Series) -> pa.Array | None:
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype):
        return _text_column(values)
    if not isinstance(dtype, np.dtype):  # categories, nullable and timezone-aware types: pandas' own text
        return None
    if dtype.kind == "O":
        return _text_column(values)
    if dtype == np.float64:
        return _by_distinct_value(values.to_numpy())
    if dtype.kind in "iu":
        return pc.cast(pa.array(values.to_numpy()), pa.string())
    if dtype.kind == "b":
        return _by_distinct_value(values.to_numpy(), str)
    return None


def _header(names: list[str]) -> str:
    out = []
    for name in names:
        text = str(name)
        out.append('"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text)
    return ",".join(out) + "\n"


def csv_bytes(df: pd.DataFrame, *, header: bool = True) -> bytes:
    """The CSV file pandas would write for `neutralise_formulas(df).to_csv(index=False)` (UTF-8)."""
    columns = [_fields(df[c]) for c in df.columns] if df.shape[1] and df.columns.is_unique else [None]
    if any(c is None for c in columns) or df.shape[1] == 1:  # (one column: pandas quotes empty rows)
        return neutralise_formulas(df).to_csv(index=False, header=header).encode()
    head = _header([str(c) for c in df.columns]).encode() if header else b""
    if len(df) == 0:
        return head
    comma, newline, empty = (pa.scalar(t, pa.large_string()) for t in (",", "\n", ""))
    lines = pc.binary_join_element_wise(*columns, comma, null_handling="replace", null_replacement="")
    lines = pc.binary_join_element_wise(lines, newline, empty)
    return head + _values_buffer(lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines)


def _values_buffer(lines: pa.Array) -> bytes:
    """The concatenated UTF-8 of a large-string array's values: its data buffer between the first and the
    last offset, copied once."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1, offset=lines.offset * 8)
    data = lines.buffers()[2]
    return bytes(memoryview(data)[offsets[0]:offsets[-1]]) if data is not None else b""
