"""The churn model as one MLflow pyfunc: feature pipeline + CatBoost + reason map + value tiers, one artefact.

Why one artefact: `models:/churn@champion` must take raw subscriber rows and nothing else has to
match by hand. The fitted pipeline, the reason families and labels and the value-tier centres are
stored as JSON (`spec.json`) next to the CatBoost file, and restored as they are in `load_context`.

Why this code travels with the artefact: the model must load where `engine` is not installed (a clean
venv, `mlflow models serve`, Spark executors). Training logs a copy of this package under a module
name that carries the hash of its source (`retain_churn_<hash>`, see `training.packaging`), so two
versions loaded in one process (champion and challenger) each import their own code, while two
versions with the same code share one module harmlessly. The engine imports this same code as
`engine.model.portable`, so deciding and the artefact never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

from .features import FeaturePipeline, column_values, frame_from_arrays
from .leafshap import LeafShap
from .reasons import reasons_from_shap
from .value_tiers import ValueTiers

CATBOOST_ARTIFACT = "catboost"
SPEC_ARTIFACT = "spec"
LEAF_SHAP_ARTIFACT = "leaf_shap"
PROBABILITY = "churn_probability"
#: From this many rows on, exact SHAP fills and sums per-leaf tables (LeafShap); below, the tables the model
#: carries are read (`LeafShap.explain_few`), or CatBoost is asked per row when it carries none.
LEAF_SHAP_MIN_ROWS = 5_000
#: Up to this many rows (a real-time request) CatBoost gets numpy input and one thread: same values, less overhead.
SMALL_ROWS = 64
VALUE_TIER = "value_tier"
REASON_COLUMNS = ("reason", "reason_share", "reason_signal")
#: `predict(params=...)` switches and their defaults (logged in the model's signature).
PREDICT_PARAMS: dict[str, bool] = {"score": False, "explain": False, "approximate": False}


class ChurnModel(mlflow.pyfunc.PythonModel):
    """Raw subscriber rows in; churn probability, derived signals, value tier and reasons out."""

    #: What the engine's registry checks (by duck typing: a loaded model's class lives in its hashed
    #: module, not in `engine`). Bump `artifact_format` when `spec.json` changes incompatibly.
    retain_model = "churn"
    artifact_format = 1

    def __init__(self) -> None:
        self._booster: CatBoostClassifier | None = None
        self.pipeline: FeaturePipeline | None = None
        self.spec: dict[str, Any] = {}
        self._tiers: ValueTiers | None = None
        self._leaf_shap: LeafShap | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, booster: CatBoostClassifier, pipeline: FeaturePipeline, spec: dict[str, Any]) -> ChurnModel:
        """A ready model from fitted parts (training); `spec` holds reasons, labels, calibration, tiers."""
        model = cls()
        model._set(booster, pipeline, spec)
        return model

    def _set(self, booster: CatBoostClassifier, pipeline: FeaturePipeline, spec: dict[str, Any]) -> None:
        self._booster, self.pipeline, self.spec = booster, pipeline, spec
        segmenter = spec.get("value_segmenter")
        self._tiers = ValueTiers.from_dict(segmenter) if segmenter else None  # once, not per call
        self._leaf_shap = None

    def learn_leaf_shap(self, features: pd.DataFrame) -> None:
        """Attribute every (tree, leaf) the training rows reach, and those reached by rows mixing their
        columns (`LeafShap.learn`), so the tables travel with the model: explaining a few rows is then a
        lookup, not a CatBoost SHAP call."""
        assert self.pipeline is not None
        self._leaf_shap = LeafShap(self.booster, self.pipeline.categorical_features_)
        self._leaf_shap.learn(features)

    def save_artifacts(self, folder: Path) -> dict[str, str]:
        """Write the parts MLflow packages; returns the `artifacts` mapping for `log_model`."""
        folder.mkdir(parents=True, exist_ok=True)
        assert self._booster is not None and self.pipeline is not None
        cbm = folder / "model.cbm"
        self._booster.save_model(str(cbm))
        spec = folder / "spec.json"
        spec.write_text(json.dumps({**self.spec, "pipeline": self.pipeline.to_dict()}, indent=2))
        out = {CATBOOST_ARTIFACT: str(cbm), SPEC_ARTIFACT: str(spec)}
        if self._leaf_shap is not None:
            tables = folder / "leaf_shap.npz"
            np.savez_compressed(tables, **self._leaf_shap.to_arrays())
            out[LEAF_SHAP_ARTIFACT] = str(tables)
        return out

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Restore the fitted state exactly as training stored it (nothing is refitted)."""
        booster = CatBoostClassifier()
        booster.load_model(context.artifacts[CATBOOST_ARTIFACT])
        spec = json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text())
        pipeline = FeaturePipeline.from_dict(spec.pop("pipeline"))
        self._set(booster, pipeline, spec)
        tables = context.artifacts.get(LEAF_SHAP_ARTIFACT)  # models logged before the tables travelled lack it
        if tables:
            with np.load(tables) as arrays:
                self._leaf_shap = LeafShap.from_arrays(booster, pipeline.categorical_features_, dict(arrays))

    # -- what the model knows about itself ----------------------------------------------------
    @property
    def booster(self) -> CatBoostClassifier:
        assert self._booster is not None, "model not loaded"
        return self._booster

    @property
    def input_columns(self) -> list[str]:
        """Raw columns a scorer must supply."""
        assert self.pipeline is not None
        return list(self.pipeline.input_columns_)

    @property
    def derived_columns(self) -> list[str]:
        """Derived signals (e.g. data_change) the pipeline computes from raw columns."""
        assert self.pipeline is not None
        return list(self.pipeline.derived_)

    @property
    def reason_labels(self) -> dict[str, str]:
        """Reason family -> words for work orders, as frozen into the model at training."""
        return dict(self.spec.get("reason_labels") or {})

    # -- scoring ------------------------------------------------------------------------------
    def features(self, df: pd.DataFrame) -> pd.DataFrame:
        """The model's feature frame for raw rows (validates that every input column is present)."""
        assert self.pipeline is not None
        return self.pipeline.transform(df)

    def _pool(self, features: pd.DataFrame) -> Pool:
        assert self.pipeline is not None
        if len(features) <= SMALL_ROWS:  # CatBoost reads a DataFrame column by column: ~0.15 ms a call
            cat = [features.columns.get_loc(c) for c in self.pipeline.categorical_features_]
            return Pool(features.to_numpy(dtype=object), cat_features=cat, feature_names=list(features.columns),
                        thread_count=1)  # (its default, every core, doubles the CPU of a few rows' pool)
        return Pool(features, cat_features=self.pipeline.categorical_features_)

    @staticmethod
    def _threads(n_rows: int, thread_count: int | None) -> int:
        """All cores for batches; one for a few rows, where starting threads costs more than it saves."""
        if thread_count is not None:
            return thread_count
        return 1 if n_rows <= SMALL_ROWS else -1

    def predict_proba(self, df: pd.DataFrame, *, features: pd.DataFrame | None = None,
                      thread_count: int | None = None) -> np.ndarray:
        """Churn probability per row, calibrated when the training run found calibration helped."""
        feats = self.features(df) if features is None else features
        raw = self.booster.predict(self._pool(feats), prediction_type="RawFormulaVal",
                                   thread_count=self._threads(len(feats), thread_count))
        cal = self.spec.get("calibration")
        if cal:  # Platt scaling on the raw score, fitted on out-of-fold predictions at training time
            raw = cal["a"] * raw + cal["b"]
        return 1.0 / (1.0 + np.exp(-raw))

    def shap_values(self, features: pd.DataFrame, *, approximate: bool = False) -> np.ndarray:
        """Per-feature attributions (log-odds), base value dropped.

        Exact by default: on our models (depth <= 8, a few hundred trees) CatBoost's approximate mode was
        measured no faster (~14 k rows/s either way) and changed the top reason for ~5% of subscribers.
        """
        if not approximate and len(features) >= LEAF_SHAP_MIN_ROWS:
            # Same values, computed once per (tree, leaf) instead of once per row: 3x less CPU on big batches.
            if self._leaf_shap is None:
                self._leaf_shap = LeafShap(self.booster, self.pipeline.categorical_features_)
            return self._leaf_shap(features)
        if not approximate and self._leaf_shap is not None:
            # A few rows, tables at hand (from training, or an earlier batch): a gather, the batch's values.
            return self._leaf_shap.explain_few(features, self._pool(features),
                                               thread_count=self._threads(len(features), None))
        return self._catboost_shap(features, approximate=approximate)

    def _catboost_shap(self, features: pd.DataFrame, *, approximate: bool) -> np.ndarray:
        vals = self.booster.get_feature_importance(
            self._pool(features), type="ShapValues",
            shap_calc_type="Approximate" if approximate else "Regular",
            thread_count=self._threads(len(features), None))
        return vals[:, :-1]

    def explain(self, df: pd.DataFrame, *, features: pd.DataFrame | None = None,
                approximate: bool = False) -> pd.DataFrame:
        """reason, reason_share, reason_signal per row (same index as `df`)."""
        feats = self.features(df) if features is None else features
        shap = self.shap_values(feats, approximate=approximate)
        out = reasons_from_shap(shap, list(feats.columns), self.spec.get("reasons", {}))
        out.index = df.index
        return out

    def value_tiers(self, df: pd.DataFrame) -> np.ndarray | None:
        """'high' / 'medium' / 'low' per row from the RFM centres fitted with the model (None without)."""
        return self._tiers.transform(df) if self._tiers is not None else None

    def score(self, df: pd.DataFrame, *, features: pd.DataFrame | None = None) -> pd.DataFrame:
        """Everything the model knows about raw rows except reasons, in one pass (same index as `df`).

        Columns: the derived signals, `churn_probability`, and `value_tier` (the RFM clusters fitted with
        the model; None when the model has no value segmenter). Reasons are a separate call (`explain`)
        because attributions are the slow part and only the rows whose decision can depend on them need them.
        `features`: `self.features(df)` when the caller has it already (it passes them to `explain` too).
        """
        return self._score(df, self.features(df) if features is None else features)

    def _score(self, df: pd.DataFrame, feats: pd.DataFrame) -> pd.DataFrame:
        cols: dict[str, np.ndarray] = {}
        for col in self.derived_columns:
            values = column_values(feats, col)
            cols[col] = values if values is not None else feats[col].to_numpy()
        cols[PROBABILITY] = self.predict_proba(df, features=feats)
        tiers = self.value_tiers(df)
        cols[VALUE_TIER] = np.full(len(df), None, dtype=object) if tiers is None else tiers
        return frame_from_arrays(cols, df.index)  # one constructor: column inserts cost ms per call

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """The generic pyfunc entry point (mlflow serving, Spark UDFs): `churn_probability` per row.

        `params={"score": True}` adds the derived signals and `value_tier` (as `score`);
        `params={"explain": True}` adds reason, reason_share and reason_signal (as `explain`, exact SHAP
        unless `"approximate": True`). The features are computed once either way.
        """
        opts = {**PREDICT_PARAMS, **(params or {})}
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        feats = self.features(model_input)
        if opts["score"]:
            out = self._score(model_input, feats)
        else:
            out = pd.DataFrame({PROBABILITY: self.predict_proba(model_input, features=feats)}, index=model_input.index)
        if opts["explain"]:
            reasons = self.explain(model_input, features=feats, approximate=bool(opts["approximate"]))
            for col in REASON_COLUMNS:
                out[col] = reasons[col].to_numpy()
        return out
