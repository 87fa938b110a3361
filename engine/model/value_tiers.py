"""Value tiers from RFM with K-Means, fitted once per model version.

Why fitted at training and shipped inside the model: tiers must mean the same thing every night. If
K-Means were refitted on each decision batch, a subscriber could change tier because *others* changed.
Fitting on the training population and ordering clusters by their monetary centre gives tiers that are
ordered by value (low < medium < high) and stable across runs of one model version.

Why split in two: fitting needs scikit-learn, which the model does not need to score. The transform,
the RFM features and the stored state (`to_dict` / `from_dict`) live in the portable model code
(`engine.model.portable.value_tiers.ValueTiers`); `ValueSegmenter` adds only `fit`, so the state it
writes is exactly the dict the model restores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from engine.model.portable.value_tiers import RFM_INPUTS, VALUE_WEIGHTS, ValueTiers, rfm

__all__ = ["RFM_INPUTS", "VALUE_WEIGHTS", "ValueSegmenter", "rfm"]


class ValueSegmenter(ValueTiers):
    """K-Means on standardised RFM; clusters ranked by value score, top one 'high', bottom one 'low'.

    Four clusters, not three: on subscriber data one cluster always forms around inactivity (recency),
    and with three it would swallow a tier. The clusters between the top and the bottom are 'medium'.
    """

    def fit(self, df: pd.DataFrame) -> ValueSegmenter:
        x = rfm(df)
        if len(x) > self.max_rows:  # K-Means centres settle long before a million rows
            x = x[np.random.default_rng(self.seed).choice(len(x), self.max_rows, replace=False)]
        self.mean_, self.scale_ = x.mean(axis=0), x.std(axis=0) + 1e-9
        km = KMeans(self.n_clusters, n_init=10, random_state=self.seed).fit((x - self.mean_) / self.scale_)
        order = np.argsort(km.cluster_centers_ @ VALUE_WEIGHTS)  # ascending value score
        self.centers_ = km.cluster_centers_[order]
        return self
