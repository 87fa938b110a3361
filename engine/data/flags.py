"""Yes/no columns: one parser for every table that holds a flag (outcomes, drift labels, training targets).

Why one: an outcome file, a labelled month for the drift check and a training table are written by the
same people with the same spreadsheets. A column that one stage reads as "yes" must not be refused (or,
worse, read as "no") by another. The words are `engine.vocabulary.TRUE_WORDS` / `FALSE_WORDS`; a caller
that knows more words for its column (the training target's "churn" / "stay") adds them, never replaces.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from engine.errors import DataError
from engine.vocabulary import FALSE_WORDS, TRUE_WORDS

#: Text that means "not known yet" in a flag column (compared after strip + lower-case).
EMPTY_WORDS = frozenset({"", "nan", "<na>", "none", "null"})
ACCEPTED = "yes/no, true/false, y/n, t/f or 1/0 (any case)"


def parse_flags(series: pd.Series, column: str, source: str, *, extra_true: Iterable[str] = (),
                extra_false: Iterable[str] = (), row_numbers: bool = True) -> pd.Series:
    """A flag column as a nullable boolean Series (same index): True, False, or <NA> where the cell is empty.

    Accepts real booleans, the numbers 0 and 1, and the words of `engine.vocabulary` (plus `extra_true` /
    `extra_false`) in any case, with surrounding spaces. Anything else raises one DataError naming
    `source`, the column, an example value and how many rows hold such values; with `row_numbers` it also
    names the first one's row as a spreadsheet shows it (header = row 1), which is right only when
    `series` is the file's rows in order (not a sample).
    """
    if ptypes.is_bool_dtype(series.dtype):
        return series.astype("boolean")
    if ptypes.is_numeric_dtype(series.dtype):
        values = series.astype("Float64")
        bad = (values.notna() & ~values.isin([0.0, 1.0])).fillna(False)
        if bad.any():
            _refuse(series, bad, column, source, row_numbers)
        return (values == 1.0).astype("boolean").mask(values.isna())
    true_words = TRUE_WORDS | {w.lower() for w in extra_true}
    false_words = FALSE_WORDS | {w.lower() for w in extra_false}
    text = series.astype("string").str.strip().str.lower()
    empty = text.isna() | text.isin(EMPTY_WORDS)
    true = text.isin(true_words).fillna(False)
    false = text.isin(false_words).fillna(False)
    bad = ~(empty | true | false)
    if bad.any():
        _refuse(series, bad, column, source, row_numbers, words=sorted(set(extra_true) | set(extra_false)))
    out = pd.Series(pd.NA, index=series.index, dtype="boolean")
    out[true.to_numpy(dtype=bool)] = True
    out[false.to_numpy(dtype=bool)] = False
    return out


def _refuse(values: pd.Series, bad: pd.Series, column: str, source: str, row_numbers: bool,
            words: list[str] | None = None) -> None:
    rows = np.flatnonzero(bad.to_numpy(dtype=bool))
    value = values.iloc[int(rows[0])]
    value = value.item() if isinstance(value, np.generic) else value
    where = f" row {int(rows[0]) + 2}" if row_numbers else ""
    more = f" ({len(rows):,} rows)" if len(rows) > 1 else ""
    accepted = ACCEPTED + (f", or {', '.join(words)}" if words else "")
    raise DataError(f"{source}: column '{column}'{where}: {value!r} is not yes/no{more}",
                    hint=f"accepted: {accepted}" + ("; row numbers count the header as row 1" if row_numbers else ""))
