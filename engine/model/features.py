"""The feature pipeline: one object, fitted at training time, packaged with the model, reused to decide.

Why a fitted object and not a function: the columns a model was trained on, their types, and which
derived signals were available are facts learned from the training table. Storing them (as plain
JSON inside the MLflow model) means scoring cannot silently disagree with training, whatever table
the scorer is handed. It follows scikit-learn's contract: parameters in `__init__`, learned state with
a trailing underscore, `fit` / `transform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DataError

MISSING_CATEGORY = "__missing__"


def _change(now: pd.Series, before: pd.Series) -> pd.Series:
    """Relative change now vs before; 0 when both are 0, +1 (capped) when starting from 0."""
    now_f = now.astype(float).to_numpy()
    before_f = before.astype(float).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(before_f > 0, now_f / np.where(before_f > 0, before_f, 1.0) - 1.0,
                       np.where(now_f > 0, 1.0, 0.0))
    return pd.Series(np.clip(out, -1.0, 10.0), index=now.index)


@dataclass(frozen=True)
class DerivedFeature:
    """A signal computed from raw columns, e.g. 'data usage down 45% month on month'."""

    name: str
    inputs: tuple[str, ...]

    def compute(self, df: pd.DataFrame) -> pd.Series:
        a = self.inputs
        if self.name == "arpu_mean_3m":
            return df[list(a)].astype(float).mean(axis=1)
        return _change(df[a[0]], df[a[1]])


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


class FeaturePipeline:
    """Raw subscriber rows -> the model's feature frame.

    Parameters: the raw categorical and numeric columns to use, and whether to derive signals.
    Learned: `input_columns_` (raw columns a scorer must supply), `derived_` (derived signals used),
    `feature_names_` (model column order), `categorical_features_` (for CatBoost's native handling).
    """

    def __init__(self, categorical: list[str], numeric: list[str], derive: bool = True) -> None:
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.derive = derive

    def fit(self, df: pd.DataFrame) -> FeaturePipeline:
        missing = [c for c in [*self.categorical, *self.numeric] if c not in df.columns]
        if missing:
            raise DataError(f"training table is missing feature column(s) {missing}")
        self.derived_ = [f.name for f in DERIVED if self.derive and all(c in self.numeric for c in f.inputs)]
        self.input_columns_ = [*self.categorical, *self.numeric]
        self.categorical_features_ = list(self.categorical)
        self.numeric_features_ = [*self.numeric, *self.derived_]
        self.feature_names_ = [*self.categorical_features_, *self.numeric_features_]
        return self

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """Select, type and derive. Raises DataError naming any raw column the model needs but lacks."""
        missing = [c for c in self.input_columns_ if c not in df.columns]
        if missing:
            raise DataError(f"input is missing column(s) the model needs: {missing}")
        out = pd.DataFrame(index=df.index)
        for col in self.categorical_features_:
            out[col] = df[col].astype("string").fillna(MISSING_CATEGORY).astype(str)
        numeric = df[self.numeric].apply(pd.to_numeric, errors="coerce").astype(float)
        for col in self.numeric:
            out[col] = numeric[col]
        for feat in DERIVED:
            if feat.name in self.derived_:
                out[feat.name] = feat.compute(numeric)
        return out[self.feature_names_]

    def fit_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.fit(df).transform(df)

    def to_dict(self) -> dict[str, Any]:
        return {"categorical": self.categorical, "numeric": self.numeric, "derive": self.derive,
                "derived_": self.derived_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturePipeline:
        pipe = cls(data["categorical"], data["numeric"], data["derive"])
        pipe.fit(pd.DataFrame(columns=[*pipe.categorical, *pipe.numeric]))
        pipe.derived_ = list(data["derived_"])
        pipe.numeric_features_ = [*pipe.numeric, *pipe.derived_]
        pipe.feature_names_ = [*pipe.categorical_features_, *pipe.numeric_features_]
        return pipe
