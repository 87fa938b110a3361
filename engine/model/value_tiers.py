"""Value tiers from RFM with K-Means, fitted once per model version.

Why fitted at training and shipped inside the model: tiers must mean the same thing every night. If
K-Means were refitted on each decision batch, a subscriber could change tier because *others* changed.
Fitting on the training population and ordering clusters by their monetary centre gives tiers that are
ordered by value (low < medium < high) and stable across runs of one model version.

RFM for a subscriber: recency = days inactive (fewer is better), frequency = usage volume (voice
minutes + data GB scaled), monetary = 3-month mean ARPU. Features are log-scaled and standardised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

RFM_INPUTS = ("days_inactive", "voice_min_m0", "data_gb_m0", "arpu_m0", "arpu_m1", "arpu_m2")


def rfm(df: pd.DataFrame) -> np.ndarray:
    recency = -np.log1p(df["days_inactive"].astype(float).to_numpy())
    frequency = np.log1p(df["voice_min_m0"].astype(float).to_numpy() / 100 + df["data_gb_m0"].astype(float).to_numpy())
    monetary = np.log1p(df[["arpu_m0", "arpu_m1", "arpu_m2"]].astype(float).mean(axis=1).to_numpy())
    return np.column_stack([recency, frequency, monetary])


#: Weights of the standardised (recency, frequency, monetary) centre in a cluster's value score.
VALUE_WEIGHTS = np.array([0.25, 0.25, 1.0])


class ValueSegmenter:
    """K-Means on standardised RFM; clusters ranked by value score, top one 'high', bottom one 'low'.

    Four clusters, not three: on subscriber data one cluster always forms around inactivity (recency),
    and with three it would swallow a tier. The clusters between the top and the bottom are 'medium'.
    """

    def __init__(self, n_clusters: int = 4, seed: int = 0, max_rows: int = 200_000) -> None:
        self.n_clusters, self.seed, self.max_rows = n_clusters, seed, max_rows

    def fit(self, df: pd.DataFrame) -> ValueSegmenter:
        x = rfm(df)
        if len(x) > self.max_rows:  # K-Means centres settle long before a million rows
            x = x[np.random.default_rng(self.seed).choice(len(x), self.max_rows, replace=False)]
        self.mean_, self.scale_ = x.mean(axis=0), x.std(axis=0) + 1e-9
        km = KMeans(self.n_clusters, n_init=10, random_state=self.seed).fit((x - self.mean_) / self.scale_)
        order = np.argsort(km.cluster_centers_ @ VALUE_WEIGHTS)  # ascending value score
        self.centers_ = km.cluster_centers_[order]
        return self

    def tier_of_cluster(self) -> np.ndarray:
        tiers = np.full(len(self.centers_), "medium", dtype=object)
        tiers[0], tiers[-1] = "low", "high"
        return tiers

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        z = (rfm(df) - self.mean_) / self.scale_
        dist = ((z[:, None, :] - self.centers_[None, :, :]) ** 2).sum(axis=2)
        return self.tier_of_cluster()[dist.argmin(axis=1)]

    def to_dict(self) -> dict[str, Any]:
        return {"n_clusters": self.n_clusters, "seed": self.seed, "mean_": self.mean_.tolist(),
                "scale_": self.scale_.tolist(), "centers_": self.centers_.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValueSegmenter:
        seg = cls(data["n_clusters"], data["seed"])
        seg.mean_, seg.scale_ = np.asarray(data["mean_"]), np.asarray(data["scale_"])
        seg.centers_ = np.asarray(data["centers_"])
        return seg
