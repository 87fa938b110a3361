"""The churn model: `ChurnModel` is the portable model class (`engine.model.portable.model`).

Why a re-export: the code that scores lives once, in the portable package that training logs with
every model version; the engine imports it from there (`from engine.model.churn import ChurnModel`).
A model loaded from the registry is an instance of its own hashed copy of that class
(`retain_churn_<hash>.model.ChurnModel`), so check a loaded model with
`engine.model.registry.is_churn_model`, not `isinstance`.
"""

from __future__ import annotations

from engine.model.portable.model import (
    CATBOOST_ARTIFACT,
    PREDICT_PARAMS,
    PROBABILITY,
    REASON_COLUMNS,
    SPEC_ARTIFACT,
    VALUE_TIER,
    ChurnModel,
)

__all__ = ["CATBOOST_ARTIFACT", "PREDICT_PARAMS", "PROBABILITY", "REASON_COLUMNS", "SPEC_ARTIFACT", "VALUE_TIER",
           "ChurnModel"]
