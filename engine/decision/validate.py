"""Validating subscriber rows on the decision path: a fast check for clean tables, pandera for the rest.

Why a second path: pandera validates a million rows in ~3.5 s, most of it coercing columns that are
already of the right type (as Parquet written by our own tools always is). `validate_rows` checks such
columns directly with numpy (presence, type, nulls, ranges, allowed values, unique ids) and returns them
untouched. The moment anything is not plainly right - a missing column, a wrong type, a null, a value
out of range - it hands the whole table to `engine.data.schema.validate_subscribers`, so every error
reads exactly as it always has (one line naming each column and problem) and every coercion is the
schema's own. The fast path accepts only what pandera would accept unchanged, so both paths return the
same values and dtypes (a test compares them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engine.data.frames import block_values, with_columns
from engine.data.schema import LABEL_COLUMNS, SUBSCRIBER_COLUMNS, Column, validate_subscribers
from engine.errors import DataError

#: Up to this many rows (a real-time request) checks run in plain Python: pandas' and arrow's fixed costs
#: per call are larger than the work.
SMALL = 64


def _strings(s: pd.Series | np.ndarray, nullable: bool) -> np.ndarray | None:
    """The column as an object array of str (None kept where nullable), or None if it is anything else."""
    if isinstance(s, np.ndarray):
        if s.dtype != object:
            return None
        values = s
    elif isinstance(s.dtype, pd.CategoricalDtype):
        cats = s.cat.categories
        codes = s.cat.codes.to_numpy()
        if (codes < 0).any() and not nullable:
            return None
        if len(cats) and pd.api.types.infer_dtype(cats, skipna=False) != "string":
            return None
        values = np.asarray(cats, dtype=object).take(codes)
        if (codes < 0).any():
            values[codes < 0] = None
        return values
    elif isinstance(s.dtype, pd.StringDtype):
        if s.isna().any() and not nullable:
            return None
        values = s.to_numpy(dtype=object, na_value=None)
    elif s.dtype == object:
        values = s.to_numpy()
    else:
        return None
    present = values if not nullable else values[pd.notna(values)]
    if len(present) <= SMALL:  # infer_dtype's "string" is "every value is a str", checked in Python for a few
        return values if all(isinstance(v, str) for v in present.tolist()) else None
    if pd.api.types.infer_dtype(present, skipna=False) != "string":
        return None
    return values


def _nullable_floats(values: np.ndarray) -> np.ndarray | None:
    """An object column of Python floats and Nones as float64 (None -> NaN), as the schema coerces it; None
    for anything else (ints, bools, text), which the schema decides about.

    Why: a one-row request whose nullable number is empty (a prepaid subscriber's `contract_months_left`)
    arrives as an object column holding None; pandera would coerce it the same way at ~50 ms a call.
    """
    if not all(v is None or type(v) is float for v in values):
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _all_in(values: np.ndarray, allowed: tuple[str, ...]) -> bool:
    """Every value is one of `allowed`: a set for a few rows, pandas' hash table for many (np.isin compares
    each value with each allowed one: ~60 ms a column of a million rows, where hashing takes ~20)."""
    if len(values) <= SMALL:
        return set(values.tolist()) <= set(allowed)
    return bool(pd.Series(values).isin(allowed).all())


def _column_ok(s: pd.Series | np.ndarray, col: Column) -> np.ndarray | None:
    """The validated column's values when the fast path can vouch for them, else None. `s`: the column, or
    its numpy array when the frame holds one (engine.data.frames.block_values)."""
    if col.kind in ("id", "categorical"):
        values = _strings(s, col.nullable)
        if values is None:
            return None
        if col.allowed is not None:
            present = values if not col.nullable else values[pd.notna(values)]
            if not _all_in(present, col.allowed):
                return None
        if col.kind == "id" and len(values) <= SMALL and len(set(values.tolist())) != len(values):
            return None
        if col.kind == "id" and len(values) > SMALL and \
                len(pc.unique(pa.array(values, type=pa.string()))) != len(values):  # (count_distinct: 2x slower)
            return None
        return values
    array = s if isinstance(s, np.ndarray) else s.to_numpy()
    if col.kind == "boolean":
        return array if s.dtype == bool else None
    if col.kind == "integer" and s.dtype != np.int64:
        return None
    if col.kind == "numeric" and s.dtype == object and col.nullable:
        values = _nullable_floats(array)
        if values is None:
            return None
    elif col.kind == "numeric" and s.dtype != np.float64:
        return None
    else:
        values = array
    if col.kind == "numeric":
        missing = np.isnan(values)
        if missing.any():
            if not col.nullable:
                return None
            values_present = values[~missing]
        else:
            values_present = values
    else:
        values_present = values
    if len(values_present) and col.min is not None and values_present.min() < col.min:
        return None
    if len(values_present) and col.max is not None and values_present.max() > col.max:
        return None
    return values


def validate_rows(frame: pd.DataFrame, *, source: str = "input") -> pd.DataFrame:
    """`validate_subscribers(frame, source=source)`, fast when the table is already clean.

    Clean columns are shared with `frame`, not copied; only a column whose dtype the schema would coerce
    without changing a value (pandas string dtype to object str) is replaced.
    """
    if len(frame) == 0:
        raise DataError(f"{source}: the table has no rows")
    replaced: dict[str, np.ndarray] = {}
    declared = {c.name for c in SUBSCRIBER_COLUMNS}
    duplicated = set() if frame.columns.is_unique else set(frame.columns[frame.columns.duplicated()])
    for col in (*SUBSCRIBER_COLUMNS, *LABEL_COLUMNS):
        if col.name not in frame.columns:
            if col.name in declared:
                return validate_subscribers(frame, source=source)
            continue
        if col.name in duplicated:  # duplicated column names: let the schema report it
            return validate_subscribers(frame, source=source)
        raw = block_values(frame, col.name)  # (a Series only for other types: see engine/data/frames.py)
        source_column = raw if raw is not None else frame[col.name]
        values = _column_ok(source_column, col)
        if values is None:
            return validate_subscribers(frame, source=source)
        if source_column.dtype != values.dtype:
            replaced[col.name] = values
    # columns are shared; replacing one never writes into `frame`
    return with_columns(frame, replaced) if replaced else frame.copy(deep=False)


def validate_declared(frame: pd.DataFrame, declared: Mapping[str, Any], *, source: str = "input") -> pd.DataFrame:
    """The policy set's declared attributes (attributes.yaml) checked and typed in `frame`.

    A missing declared column is refused with the documented line (`PolicySet.missing_declared`). Booleans
    are read with the shared yes/no words (engine.data.flags.parse_flags; empty cells stay missing);
    numerics must be numbers within the declared min..max; categoricals one of the declared values. Any
    other value is one DataError naming the column. Returns a shallow copy with the typed columns
    (booleans as nullable boolean, numerics as float, categoricals as text objects); `frame` is untouched.
    """
    from engine.data.flags import parse_flags

    for name, attr in sorted(declared.items()):
        if name not in frame.columns:
            raise DataError(f"input lacks declared attribute '{name}' (declared at {attr.source})",
                            hint="add the column to the input, or remove the declaration from the policy set's "
                                 "attributes.yaml")
    if not declared:
        return frame
    out = frame.copy(deep=False)
    where = " (declared at {})"
    for name, attr in sorted(declared.items()):
        s = frame[name]
        if isinstance(s, pd.DataFrame):
            raise DataError(f"{source}: column '{name}' appears more than once")
        if attr.kind == "boolean":
            out[name] = parse_flags(s, name, source)
        elif attr.kind == "numeric":
            if pd.api.types.is_bool_dtype(s.dtype):
                raise DataError(f"{source}: column '{name}': wrong type, expected numbers (got true/false)"
                                + where.format(attr.source))
            if pd.api.types.is_numeric_dtype(s.dtype):
                values = pd.to_numeric(s, errors="coerce")
                bad = pd.Series(False, index=s.index)
            else:
                text = s.astype("string").str.strip()
                values = pd.to_numeric(text.mask(text == ""), errors="coerce")
                bad = (values.isna() & text.notna() & (text != "")).fillna(False)
            if bad.any():
                example = s[bad.to_numpy(dtype=bool)].astype(str).iloc[0]
                raise DataError(f"{source}: column '{name}': wrong type, expected numbers (e.g. '{example}')"
                                + where.format(attr.source))
            values = values.astype(float)
            finite = values[values.notna()]
            lo, hi = getattr(attr, "minimum", None), getattr(attr, "maximum", None)
            if lo is not None and len(finite) and (finite < lo).any():
                raise DataError(f"{source}: column '{name}': {finite[finite < lo].iloc[0]:g} is below its minimum "
                                f"{lo:g}" + where.format(attr.source))
            if hi is not None and len(finite) and (finite > hi).any():
                raise DataError(f"{source}: column '{name}': {finite[finite > hi].iloc[0]:g} is above its maximum "
                                f"{hi:g}" + where.format(attr.source))
            out[name] = values.to_numpy(dtype=float)
        else:
            missing = s.isna().to_numpy()
            values = s.astype(object).to_numpy().copy()
            values[~missing] = [str(v) for v in values[~missing]]
            values[missing] = None
            if attr.values is not None:
                unknown = sorted({v for v in values[~missing]} - set(attr.values))
                if unknown:
                    raise DataError(f"{source}: column '{name}': unknown value(s) {unknown[:3]} (allowed: "
                                    f"{', '.join(attr.values)})" + where.format(attr.source))
            out[name] = values
    return out
