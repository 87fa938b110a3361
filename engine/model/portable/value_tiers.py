"""Value tiers from RFM: the transform half of the K-Means value segmenter, shipped inside the model.

Why fitted at training and shipped inside the model: tiers must mean the same thing every night. If
K-Means were refitted on each decision batch, a subscriber could change tier because *others* changed.
The fitting (scikit-learn K-Means) lives in `engine.model.value_tiers.ValueSegmenter`, which subclasses
this class; only the transform travels with the model, so the model needs numpy, not scikit-learn.
Clusters are ordered by their value score (low < medium < high) and stable across runs of one version.

RFM for a subscriber: recency = days inactive (fewer is better), frequency = usage volume (voice
minutes + data GB scaled), monetary = 3-month mean ARPU. Features are log-scaled and standardised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .features import float_column, row_mean

RFM_INPUTS = ("days_inactive", "voice_min_m0", "data_gb_m0", "arpu_m0", "arpu_m1", "arpu_m2")

#: Weights of the standardised (recency, frequency, monetary) centre in a cluster's value score.
VALUE_WEIGHTS = np.array([0.25, 0.25, 1.0])


def rfm(df: pd.DataFrame) -> np.ndarray:
    recency = -np.log1p(float_column(df, "days_inactive"))
    frequency = np.log1p(float_column(df, "voice_min_m0") / 100 + float_column(df, "data_gb_m0"))
    monetary = np.log1p(row_mean([float_column(df, c) for c in ("arpu_m0", "arpu_m1", "arpu_m2")]))
    return np.column_stack([recency, frequency, monetary])


class ValueTiers:
    """Nearest of the fitted RFM centres (ranked by value score): top one 'high', bottom 'low', others 'medium'.

    Learned state (`mean_`, `scale_`, `centers_`) comes from `from_dict`, i.e. from a fitted segmenter.
    """

    def __init__(self, n_clusters: int = 4, seed: int = 0, max_rows: int = 200_000) -> None:
        self.n_clusters, self.seed, self.max_rows = n_clusters, seed, max_rows

    def tier_of_cluster(self) -> np.ndarray:
        tiers = np.full(len(self.centers_), "medium", dtype=object)
        tiers[0], tiers[-1] = "low", "high"
        return tiers

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        z = (rfm(df) - self.mean_) / self.scale_
        dist = ((z[:, None, :] - self.centers_[None, :, :]) ** 2).sum(axis=2)
        return self.tier_of_cluster()[dist.argmin(axis=1)]

    def to_dict(self) -> dict[str, Any]:
        return {"n_clusters": self.n_clusters, "seed": self.seed, "mean_": np.asarray(self.mean_).tolist(),
                "scale_": np.asarray(self.scale_).tolist(), "centers_": np.asarray(self.centers_).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValueTiers:
        seg = cls(data["n_clusters"], data["seed"])
        seg.mean_, seg.scale_ = np.asarray(data["mean_"]), np.asarray(data["scale_"])
        seg.centers_ = np.asarray(data["centers_"])
        return seg
