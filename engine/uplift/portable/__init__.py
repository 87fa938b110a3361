"""The uplift model's own code: what a registered `models:/uplift@champion` needs to turn raw subscriber rows
and an offer id into tau, and nothing of `engine`.

Like the churn model (engine/model/portable), this package imports only numpy, pandas, catboost and
mlflow, and only relatively, so training can log a copy of it under a module name carrying the hash of its
source (`retain_uplift_<hash>`, see `training.uplift`). The staged copy carries a copy of the churn model's
feature pipeline (`features.py` from engine/model/portable), so both models turn raw rows into features
with the same code; in the engine tree that pipeline is imported from engine.model.portable.
"""

from .model import EFFECT, OFFER, UpliftModel

__all__ = ["EFFECT", "OFFER", "UpliftModel"]
