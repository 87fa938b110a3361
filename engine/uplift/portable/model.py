"""The uplift model as one MLflow pyfunc: feature pipeline + one CatBoost per arm + shrinkage, one artefact.

tau(x, offer) = P(churn | no contact, x) - P(churn | offer, x), a T-learner: one classifier for the
no-contact arm (`control`), one per offer fitted on the subscribers treated with it (the channel is a
feature of the offer models, since reach differs by channel). Each offer's model effect is shrunk toward
a prior effect per offer with the weight fixed at training (see engine/uplift/effect.py):

    tau(x, o) = w_o x (p_control(x) - p_o(x)) + (1 - w_o) x prior_o

Offers without a fitted model (too few logged subscribers) get their prior; rows without an offer get 0.
`predict` takes raw subscriber rows with an `offer_id` column (and optionally `channel`) and returns `tau`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

try:  # the staged artefact carries its own copy of the churn model's pipeline ...
    from .features import FeaturePipeline
except ImportError:  # ... in the engine tree there is one pipeline, the churn model's
    from engine.model.portable.features import FeaturePipeline

OFFER = "offer_id"
CHANNEL = "channel"
EFFECT = "tau"
SPEC_ARTIFACT = "spec"
CHANNEL_FEATURE = "__channel"


class UpliftModel(mlflow.pyfunc.PythonModel):
    """Raw subscriber rows + offer id (+ channel) in; tau, the churn probability the offer removes, out."""

    retain_model = "uplift"
    artifact_format = 1

    def __init__(self) -> None:
        self.pipeline: FeaturePipeline | None = None
        self.spec: dict[str, Any] = {}
        self.boosters: dict[str, CatBoostClassifier] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, pipeline: FeaturePipeline, boosters: dict[str, CatBoostClassifier],
                   spec: dict[str, Any]) -> UpliftModel:
        """`boosters`: 'control' and one per fitted offer id; `spec['offers']`: per offer fitted, weight,
        prior, counts, channels; `spec['prior_default']`: the prior of offers it has never seen."""
        model = cls()
        model.pipeline, model.boosters, model.spec = pipeline, dict(boosters), spec
        return model

    def save_artifacts(self, folder: Path) -> dict[str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        assert self.pipeline is not None
        names = {}
        artifacts = {}
        for i, (arm, booster) in enumerate(sorted(self.boosters.items())):
            key = f"arm{i}"
            path = folder / f"{key}.cbm"
            booster.save_model(str(path))
            names[arm] = key
            artifacts[key] = str(path)
        spec = folder / "spec.json"
        spec.write_text(json.dumps({**self.spec, "arms": names, "pipeline": self.pipeline.to_dict()}, indent=2))
        artifacts[SPEC_ARTIFACT] = str(spec)
        return artifacts

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        spec = json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text())
        self.pipeline = FeaturePipeline.from_dict(spec.pop("pipeline"))
        boosters = {}
        for arm, key in spec.pop("arms").items():
            b = CatBoostClassifier()
            b.load_model(context.artifacts[key])
            boosters[arm] = b
        self.boosters, self.spec = boosters, spec

    # -- what it knows --------------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        assert self.pipeline is not None
        return list(self.pipeline.input_columns_)

    @property
    def offers(self) -> dict[str, dict[str, Any]]:
        return dict(self.spec.get("offers") or {})

    def priors(self) -> dict[str, float]:
        return {o: float(info["prior"]) for o, info in self.offers.items()}

    # -- effects --------------------------------------------------------------------------------
    def arm_probability(self, features: pd.DataFrame, arm: str, channel: np.ndarray | None = None) -> np.ndarray:
        """P(churn) under one arm ('control' or an offer id) for feature rows."""
        booster = self.boosters[arm]
        cat = list(self.pipeline.categorical_features_)
        if arm != "control":
            features = features.assign(**{CHANNEL_FEATURE: channel})
            cat = [*cat, CHANNEL_FEATURE]
        return booster.predict(Pool(features, cat_features=cat), prediction_type="Probability",
                               thread_count=int(self.spec.get("thread_count", -1)))[:, 1]

    def churn_under(self, df: pd.DataFrame, offer_id: Any, channel: Any = None) -> np.ndarray:
        """Model P(churn) per row under its offer (None: no contact), unshrunk; NaN where an offer has no model."""
        offer, chan = self._arrays(df, offer_id, channel)
        feats = self.pipeline.transform(df)
        out = np.full(len(df), np.nan)
        none = np.array([not isinstance(o, str) for o in offer])
        if "control" in self.boosters and none.any():
            out[none] = self.arm_probability(feats.iloc[np.flatnonzero(none)], "control")
        for o in pd.unique(offer[~none]):
            if o in self.boosters:
                idx = np.flatnonzero(offer == o)
                out[idx] = self.arm_probability(feats.iloc[idx], o, chan[idx])
        return out

    def _arrays(self, df: pd.DataFrame, offer_id: Any, channel: Any) -> tuple[np.ndarray, np.ndarray]:
        n = len(df)
        offer = np.asarray(offer_id if offer_id is not None else [None] * n, dtype=object).reshape(-1)
        if len(offer) != n:
            raise ValueError(f"{len(offer)} offer ids for {n} rows")
        offer = np.array([o if isinstance(o, str) and o else None for o in offer], dtype=object)
        if channel is None:
            chan = np.array([self.offers.get(o, {}).get("default_channel") if o else None for o in offer], dtype=object)
        else:
            chan = np.asarray(channel, dtype=object).reshape(-1)
        chan = np.array([c if isinstance(c, str) else "__missing__" for c in chan], dtype=object)
        return offer, chan

    def effect(self, df: pd.DataFrame, offer_id: Any, channel: Any = None,
               priors: dict[str, float] | None = None) -> np.ndarray:
        """tau per row for its offer (see the module docs); `priors` overrides the priors stored at training."""
        offer, chan = self._arrays(df, offer_id, channel)
        prior_of = {**self.priors(), **(priors or {})}
        default = float(self.spec.get("prior_default", 0.0))
        tau = np.zeros(len(df))
        has = np.array([o is not None for o in offer])
        fitted = [o for o in pd.unique(offer[has]) if o in self.boosters and "control" in self.boosters]
        need = np.flatnonzero(np.isin(offer, fitted)) if fitted else np.zeros(0, dtype=np.int64)
        feats = self.pipeline.transform(df.iloc[need]) if len(need) else None
        p0 = self.arm_probability(feats, "control") if feats is not None else None
        pos = np.full(len(df), -1, dtype=np.int64)
        pos[need] = np.arange(len(need))
        for o in pd.unique(offer[has]):
            idx = np.flatnonzero(offer == o)
            prior = float(prior_of.get(o, default))
            if o in fitted:
                local = pos[idx]
                model_tau = p0[local] - self.arm_probability(feats.iloc[local], o, chan[idx])
                w = float(self.offers[o]["weight"])
                tau[idx] = w * model_tau + (1.0 - w) * prior
            else:
                tau[idx] = prior
        return tau

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """The pyfunc entry point: `tau` per row for the row's `offer_id` (and `channel` when given)."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if OFFER not in model_input.columns:
            raise ValueError(f"uplift model input needs an '{OFFER}' column")
        channel = model_input[CHANNEL].to_numpy(dtype=object) if CHANNEL in model_input.columns else None
        tau = self.effect(model_input, model_input[OFFER].to_numpy(dtype=object), channel)
        return pd.DataFrame({EFFECT: tau}, index=model_input.index)
