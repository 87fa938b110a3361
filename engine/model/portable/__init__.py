"""The churn model's own code: everything needed to score raw subscriber rows, and nothing of `engine`.

Why a package of its own: a registered model must load and predict where this repository is not
installed (a fresh venv holding only the model's requirements, `mlflow models serve`, Spark
executors). So this package imports only numpy, pandas, catboost and mlflow, and only relatively
(`from .features import ...`), which lets training log a copy of it under another module name:
`retain_churn_<sha256 of its source, 10 hex>`, carried in the artefact as `code_paths`. MLflow caches
`code_paths` modules in `sys.modules` by name; with the code hash in the name, a champion and a
challenger with different code each run their own, and equal code is shared harmlessly.

The engine uses this same code through `engine.model.churn`, `engine.model.features`,
`engine.model.reasons` and `engine.model.value_tiers` (one place for each fact). Keep it that way:
no absolute imports here, no `engine`, no scikit-learn (K-Means fitting stays in the engine).
"""

from .features import DERIVED, MISSING_CATEGORY, DerivedFeature, FeaturePipeline, InputError, add_derived
from .model import (
    CATBOOST_ARTIFACT,
    PREDICT_PARAMS,
    PROBABILITY,
    REASON_COLUMNS,
    SPEC_ARTIFACT,
    VALUE_TIER,
    ChurnModel,
)
from .reasons import NO_REASON, SIGNAL_TEXT, family_matrix, reason_words, reasons_from_shap, signal_text
from .value_tiers import RFM_INPUTS, VALUE_WEIGHTS, ValueTiers, rfm

__all__ = [
    "CATBOOST_ARTIFACT", "DERIVED", "MISSING_CATEGORY", "NO_REASON", "PREDICT_PARAMS", "PROBABILITY",
    "REASON_COLUMNS", "RFM_INPUTS", "SIGNAL_TEXT", "SPEC_ARTIFACT", "VALUE_TIER", "VALUE_WEIGHTS", "ChurnModel",
    "DerivedFeature", "FeaturePipeline", "InputError", "ValueTiers", "add_derived", "family_matrix",
    "reason_words", "reasons_from_shap", "rfm", "signal_text",
]
