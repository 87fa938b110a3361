"""The feature pipeline: one object, fitted at training time, packaged with the model, reused to decide.

Why a fitted object and not a function: the columns a model was trained on, their types, and which
derived signals were available are facts learned from the training table. Storing them (as plain
JSON inside the MLflow model) means scoring cannot silently disagree with training, whatever table
the scorer is handed. It follows scikit-learn's contract: parameters in `__init__`, learned state with
a trailing underscore, `fit` / `transform`; `to_dict` / `from_dict` write and restore that learned
state as it is (no refitting on load, so a loaded pipeline is the fitted one, not a reconstruction).

This module is part of the portable model code (see `__init__`): numpy and pandas only, no `engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MISSING_CATEGORY = "__missing__"

#: Learned attributes, in the order `to_dict` writes them.
LEARNED = ("input_columns_", "derived_", "categorical_features_", "numeric_features_", "feature_names_")


class InputError(ValueError):
    """Rows handed to the model lack a column it needs. `columns` names them.

    A ValueError of the model's own, because this code runs where `engine` (and its DataError) is not
    installed; the engine's registry turns it into a DataError for its users.
    """

    def __init__(self, message: str, columns: list[str], hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.columns, self.hint = message, list(columns), hint


def column_values(df: pd.DataFrame, col: str) -> np.ndarray | None:
    """The column's numpy array straight from the frame's blocks, or None (an extension array, a duplicated
    or missing name). Why: the first `df[col]` of a frame builds a Series, ~30 us whatever its length, and a
    few-row request pays it for every input column; engine/data/frames.py does the same for the engine,
    which this package cannot import."""
    try:
        loc = df.columns.get_loc(col)
    except KeyError:
        return None
    getter = getattr(getattr(df, "_mgr", None), "iget_values", None)
    if not isinstance(loc, int) or getter is None:
        return None
    values = getter(loc)
    return values if isinstance(values, np.ndarray) else None


def frame_from_arrays(columns: dict[str, np.ndarray], index: pd.Index | None = None) -> pd.DataFrame:
    """`pd.DataFrame(columns, index=index)` for 1-D numpy arrays of one length, without the constructor's
    checks of every column (8 rows of 27 features: ~125 -> ~50 us, which a real-time request pays on each
    frame the model builds). `DataFrame._from_arrays` is the step the constructor ends with; anything else
    (another pandas without it, other arrays) goes through the constructor, so the frame is the same.
    (`engine.data.frames.frame_of` is the engine's, for its own frames; this package cannot import it.)"""
    arrays = list(columns.values())
    n = len(arrays[0]) if arrays else 0
    index = pd.RangeIndex(n) if index is None else index
    build = getattr(pd.DataFrame, "_from_arrays", None)
    if build is not None and arrays and all(isinstance(a, np.ndarray) and a.ndim == 1 and len(a) == len(index)
                                            for a in arrays):
        try:
            return build(arrays, columns=pd.Index(list(columns), dtype=object), index=index, verify_integrity=False)
        except TypeError:  # another signature
            pass
    return pd.DataFrame(columns, index=index)


def float_column(df: pd.DataFrame, col: str) -> np.ndarray:
    """`df[col].astype(float).to_numpy()`, without the copy when the column is numpy numbers already."""
    raw = column_values(df, col)
    if raw is not None and raw.dtype.kind in "fiub":
        return raw.astype(float, copy=False)
    s = df[col]
    return s.to_numpy(dtype=float) if s.dtype.kind in "fiub" else s.astype(float).to_numpy()


def _change_values(now: np.ndarray, before: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(before > 0, now / np.where(before > 0, before, 1.0) - 1.0, np.where(now > 0, 1.0, 0.0))
    return np.clip(out, -1.0, 10.0)


def _change(now: pd.Series, before: pd.Series) -> pd.Series:
    """Relative change now vs before; 0 when both are 0, +1 (capped) when starting from 0."""
    return pd.Series(_change_values(now.astype(float).to_numpy(), before.astype(float).to_numpy()), index=now.index)


def row_mean(columns: list[np.ndarray]) -> np.ndarray:
    """Per row, the mean of the non-missing values (NaN when all are missing): `DataFrame.mean(axis=1)` on
    float columns, summed left to right as pandas sums them, without building a frame."""
    total = np.zeros(len(columns[0]), dtype=float)
    count = np.zeros(len(total), dtype=np.int64)
    for i, values in enumerate(columns):
        present = ~np.isnan(values)
        filled = np.where(present, values, 0.0)
        total = filled if i == 0 else total + filled
        count += present
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
    mean[count == 0] = np.nan
    return mean


@dataclass(frozen=True)
class DerivedFeature:
    """A signal computed from raw columns, e.g. 'data usage down 45% month on month'."""

    name: str
    inputs: tuple[str, ...]

    def compute(self, df: pd.DataFrame) -> pd.Series:
        return pd.Series(self.values({c: float_column(df, c) for c in self.inputs}), index=df.index)

    def values(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The signal from its inputs as float arrays (numpy only: ~20 us, where pandas took ~1 ms a call)."""
        a = self.inputs
        if self.name == "arpu_mean_3m":
            return row_mean([arrays[c] for c in a])
        return _change_values(arrays[a[0]], arrays[a[1]])


#: Early-warning signals of DOMAIN.md that need more than one raw column.
DERIVED: tuple[DerivedFeature, ...] = (
    DerivedFeature("arpu_mean_3m", ("arpu_m0", "arpu_m1", "arpu_m2")),
    DerivedFeature("arpu_change", ("arpu_m0", "arpu_m2")),
    DerivedFeature("data_change", ("data_gb_m0", "data_gb_m1")),
    DerivedFeature("voice_change", ("voice_min_m0", "voice_min_m1")),
)


def add_derived(df: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """Return a copy of `df` with the derived signals whose inputs are present (or the named ones)."""
    out = df.copy()
    for feat in DERIVED:
        if (names is None and all(c in df.columns for c in feat.inputs)) or (names and feat.name in names):
            out[feat.name] = feat.compute(df)
    return out


def _as_float(df: pd.DataFrame, name: str) -> np.ndarray:
    """A raw column as float64; text that is not a number becomes NaN."""
    raw = column_values(df, name)
    if raw is not None and raw.dtype.kind in "fiu":
        return raw.astype(float, copy=False)
    col = df[name]
    if col.dtype.kind in "fiu":  # numpy numbers: no missing-value marker to translate
        return col.to_numpy(dtype=float)
    if not pd.api.types.is_numeric_dtype(col.dtype):
        col = pd.to_numeric(col, errors="coerce")
    return col.to_numpy(dtype=float, na_value=np.nan)


def _objects(df: pd.DataFrame, name: str) -> np.ndarray:
    """`df[name].to_numpy(dtype=object)`."""
    raw = column_values(df, name)
    return raw if raw is not None and raw.dtype == object else df[name].to_numpy(dtype=object)


#: From this many rows a text column's categories are written once per distinct value (see `category_text`).
DISTINCT_ROWS = 64


def category_text(values: np.ndarray) -> np.ndarray:
    """A categorical column as CatBoost reads it: each value as text, '__missing__' where missing.

    A column of text (what validated input always is) of many rows is factorised and each distinct value
    is one shared object: `astype(str).astype(object)` made a new string per row (~0.1 s and ~55 MB a
    column of a million rows). Anything else goes value by value (1 and 1.0 hash alike but read '1', '1.0').
    """
    if len(values) >= DISTINCT_ROWS and pd.api.types.infer_dtype(values, skipna=True) == "string":
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        return np.asarray([*uniques, MISSING_CATEGORY], dtype=object)[codes]  # code -1: the last, missing
    text = values.astype(str).astype(object)
    text[pd.isna(values)] = MISSING_CATEGORY
    return text


def _missing(df: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c not in df.columns]


class FeaturePipeline:
    """Raw subscriber rows -> the model's feature frame.

    Parameters: the raw categorical and numeric columns to use, and whether to derive signals.
    Learned: `input_columns_` (raw columns a scorer must supply), `derived_` (derived signals used),
    `categorical_features_` (for CatBoost's native handling), `numeric_features_`, and
    `feature_names_` (model column order).
    """

    def __init__(self, categorical: list[str], numeric: list[str], derive: bool = True) -> None:
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.derive = derive

    def fit(self, df: pd.DataFrame) -> FeaturePipeline:
        missing = _missing(df, [*self.categorical, *self.numeric])
        if missing:
            raise InputError(f"training table is missing feature column(s) {missing}", missing)
        self.derived_ = [f.name for f in DERIVED if self.derive and all(c in self.numeric for c in f.inputs)]
        self.input_columns_ = [*self.categorical, *self.numeric]
        self.categorical_features_ = list(self.categorical)
        self.numeric_features_ = [*self.numeric, *self.derived_]
        self.feature_names_ = [*self.categorical_features_, *self.numeric_features_]
        return self

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """Select, type and derive. Raises InputError naming any raw column the model needs but lacks.

        Categories become text ('__missing__' for none), numbers float (NaN for unparseable text). Built
        from column arrays in one DataFrame constructor: per-column pandas assignments cost ~30 ms for a
        single row, which a real-time caller pays on every request; this way ~6 ms, same output.
        """
        missing = _missing(df, self.input_columns_)
        if missing:
            raise InputError(f"input is missing column(s) the model needs: {missing}", missing)
        cols: dict[str, np.ndarray] = {col: category_text(_objects(df, col)) for col in self.categorical_features_}
        numeric = {col: _as_float(df, col) for col in self.numeric}
        cols.update(numeric)
        for feat in DERIVED:
            if feat.name in self.derived_:
                cols[feat.name] = feat.values(numeric)
        return frame_from_arrays({name: cols[name] for name in self.feature_names_}, df.index)

    def fit_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.fit(df).transform(df)

    def to_dict(self) -> dict[str, Any]:
        """Parameters and learned state as plain JSON-able lists."""
        return {"categorical": list(self.categorical), "numeric": list(self.numeric), "derive": self.derive,
                **{name: list(getattr(self, name)) for name in LEARNED}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturePipeline:
        """The fitted pipeline `to_dict` wrote, its learned state restored as stored (nothing refitted).

        Models logged before the full state was stored carry only `derived_`; the rest of their state
        follows from the parameters exactly as `fit` computed it.
        """
        pipe = cls(data["categorical"], data["numeric"], data["derive"])
        pipe.derived_ = list(data["derived_"])
        pipe.input_columns_ = list(data.get("input_columns_", [*pipe.categorical, *pipe.numeric]))
        pipe.categorical_features_ = list(data.get("categorical_features_", pipe.categorical))
        pipe.numeric_features_ = list(data.get("numeric_features_", [*pipe.numeric, *pipe.derived_]))
        pipe.feature_names_ = list(data.get("feature_names_",
                                            [*pipe.categorical_features_, *pipe.numeric_features_]))
        return pipe
