"""Exact SHAP values from per-leaf attributions (CatBoost trees are oblivious), for any number of rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

#: Per tree: attributions of each leaf on the tree's own features (leaves x len(cols)), those features'
#: positions, and which leaves have been attributed.
Table = tuple[np.ndarray, np.ndarray, np.ndarray]


class LeafShap:
    """Exact CatBoost SHAP values as sums of per-(tree, leaf) tables.

    CatBoost trees are oblivious: the leaf a row reaches fixes every split outcome of that tree, so the
    tree's SHAP contribution is a function of the leaf alone, and Shapley values add over trees. Each
    (tree, leaf) is attributed once, by CatBoost itself on a single-tree copy of the model and one row
    that reaches it; a row's SHAP values are then a sum of table lookups. Measured: 250 k rows in ~3.6 CPU-s
    instead of ~11 (318 trees, depth 4), identical values (max difference 0.0).

    Why the tables travel with the model (`to_arrays` / `from_arrays`): training fills them from the
    training rows, which reach every leaf that has a value, so a loaded model explains one subscriber
    with one leaf-index call and one gather (`explain_few`) instead of CatBoost's per-call SHAP set-up (the
    largest single cost of a real-time decision). A leaf no training row reached is attributed the first
    time a row reaches it (`explain_few`), and is in the table from then on.
    """

    def __init__(self, booster: CatBoostClassifier, cat_features: list[str]) -> None:
        self.booster, self.cat_features = booster, list(cat_features)
        self.n_trees = booster.tree_count_
        self._trees: dict[int, CatBoostClassifier] = {}
        self._tables: list[Table | None] = [None] * self.n_trees
        self._stacked: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- tables travelling with the model ------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The tables as three dense arrays: values (trees x leaves x cols), cols (trees x cols, padded
        with the feature count), seen (trees x leaves)."""
        values, cols, seen = self._stack()
        return {"values": values, "cols": cols, "seen": seen}

    @classmethod
    def from_arrays(cls, booster: CatBoostClassifier, cat_features: list[str],
                    arrays: dict[str, np.ndarray]) -> LeafShap:
        out = cls(booster, cat_features)
        values, cols, seen = (np.asarray(arrays[k]) for k in ("values", "cols", "seen"))
        if values.shape[0] != out.n_trees:
            raise ValueError(f"leaf tables are for {values.shape[0]} trees, the model has {out.n_trees}")
        n_feat = out._n_features()
        for k in range(out.n_trees):
            keep = cols[k] < n_feat
            out._tables[k] = (values[k][:, keep], cols[k][keep], seen[k].astype(bool))
        out._stacked = (values, cols, seen.astype(bool))
        return out

    def _n_features(self) -> int:
        return len(self.booster.feature_names_)

    def _stack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._stacked is None:
            n_feat = self._n_features()
            tables = [t if t is not None else (np.zeros((1, 0)), np.zeros(0, dtype=np.int64), np.zeros(1, dtype=bool))
                      for t in self._tables]
            leaves = max(len(t[2]) for t in tables) if tables else 1
            width = max([len(t[1]) for t in tables] + [1])
            values = np.zeros((self.n_trees, leaves, width))
            cols = np.full((self.n_trees, width), n_feat, dtype=np.int64)  # padding: a dropped extra column
            seen = np.zeros((self.n_trees, leaves), dtype=bool)
            for k, (v, c, s) in enumerate(tables):
                values[k, : v.shape[0], : len(c)] = v
                cols[k, : len(c)] = c
                seen[k, : len(s)] = s
            self._stacked = (values, cols, seen)
        return self._stacked

    # -- a few rows: gather from the tables ------------------------------------------------------
    def lookup(self, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
        """(SHAP values per row x feature, known per row) from the tables alone.

        A row is known when every leaf it reaches has been attributed; an unknown row's values are not
        meaningful. Contributions are added tree by tree, in the order `__call__` adds them, so a row gets
        the same values here as in a batch.
        """
        return self._gather(self.booster.calc_leaf_indexes(pool).T)

    def explain_few(self, features: pd.DataFrame, pool: Pool, thread_count: int = 1) -> np.ndarray:
        """SHAP values of a few rows (`pool` built from `features`): a gather, after attributing any leaf
        these rows are the first to reach (a copy of that one tree and one CatBoost call per new leaf, once:
        afterwards the leaf is in the table for every row that reaches it). One thread by default: for a few
        rows CatBoost's thread pool costs more than the work, and keeps a second core busy."""
        leaves = self.booster.calc_leaf_indexes(pool, thread_count=thread_count).T  # trees x rows
        values, known = self._gather(leaves)
        if known.all():
            return values
        for k in range(self.n_trees):  # `_table` returns at once for a tree whose leaves are all attributed
            self._table(k, leaves[k], features, features.shape[1], split_all=False, thread_count=thread_count)
        values, known = self._gather(leaves)
        assert known.all()
        return values

    def _gather(self, leaves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, cols, seen = self._stack()
        n_feat = self._n_features()
        n = leaves.shape[1]
        trees = np.arange(self.n_trees)[:, None]
        inside = leaves < seen.shape[1]
        leaves = np.where(inside, leaves, 0)
        known = (seen[trees, leaves] & inside).all(axis=0)
        taken = values[trees, leaves]  # trees x rows x cols
        where = np.arange(n)[None, :, None] * (n_feat + 1) + cols[:, None, :]
        out = np.bincount(where.ravel(), weights=taken.ravel(), minlength=n * (n_feat + 1))
        return out.reshape(n, n_feat + 1)[:, :n_feat], known

    # -- many rows: fill the tables as rows reach new leaves -----------------------------------
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
        n, n_feat = features.shape
        out = np.zeros((n_feat, n))
        for start in range(0, n, chunk_rows):
            part = features.iloc[start:start + chunk_rows]
            leaves = self._leaves(part)
            for k in range(self.n_trees):
                leaf = leaves[k]
                values, cols, _seen = self._table(k, leaf, part, n_feat)
                for j, c in enumerate(cols):
                    out[c, start:start + len(part)] += values[leaf, j]
        return out.T

    def learn(self, features: pd.DataFrame, *, mixed_rows: int = 500_000, seed: int = 0,
              chunk_rows: int = 100_000) -> None:
        """Attribute every leaf the rows of `features` reach, then every leaf reached by `mixed_rows` rows
        whose columns are drawn independently from those of `features`.

        Why the mixed rows: a leaf the training rows missed is attributed when a real-time request first
        reaches it, ~5 ms of CatBoost work inside that request (in the slowest percent of a service's
        answers). Drawing each column on its own reaches combinations of values the training rows never
        held; a tree's attributions depend on the leaf alone, so a leaf is attributed exactly whatever row
        reaches it. Measured on 12,000 new subscribers: with the serve benchmark's model (28 trees, 10 k
        training rows) 43 reached a leaf missing from the tables, none after mixed rows (+0.8 s of training);
        with `make demo`'s (483 trees, 50 k rows) 178, 5 after 500 k mixed rows (+~4 s), 1 after 1.4 M.
        """
        n_feat = features.shape[1]
        for start in range(0, len(features), chunk_rows):
            part = features.iloc[start:start + chunk_rows]
            self._fill(part, n_feat)
        if not len(features):
            return
        rng = np.random.default_rng(seed)
        for start in range(0, mixed_rows, chunk_rows):
            size = min(chunk_rows, mixed_rows - start)
            picks = rng.integers(0, len(features), size=(size, n_feat))
            mixed = pd.DataFrame({c: features[c].take(picks[:, j]).reset_index(drop=True)
                                  for j, c in enumerate(features.columns)})
            self._fill(mixed, n_feat)

    def _leaves(self, part: pd.DataFrame) -> np.ndarray:
        """Leaf index per tree (rows) and row (columns)."""
        return np.ascontiguousarray(self.booster.calc_leaf_indexes(Pool(part, cat_features=self.cat_features)).T)

    def _fill(self, part: pd.DataFrame, n_feat: int) -> None:
        leaves = self._leaves(part)
        for k in range(self.n_trees):
            self._table(k, leaves[k], part, n_feat)

    def _single(self, k: int, split_all: bool) -> CatBoostClassifier:
        """Tree k alone. A batch reaching new leaves in many trees splits the whole model at once (by
        halving); a few rows copy just the trees they need (~2 ms a copy)."""
        if k not in self._trees:
            if split_all:
                self._split(self.booster.copy(), 0, self.n_trees)
            else:
                single = self.booster.copy()
                single.shrink(ntree_start=k, ntree_end=k + 1)
                self._trees[k] = single
        return self._trees[k]

    def _table(self, k: int, leaf: np.ndarray, part: pd.DataFrame, n_feat: int, *, split_all: bool = True,
               thread_count: int = -1) -> Table:
        cached = self._tables[k]
        size = int(leaf.max()) + 1
        if cached is not None and size <= len(cached[2]) and cached[2][leaf].all():
            return cached
        tree = self._single(k, split_all)
        size = max(size, 0 if cached is None else len(cached[2]))
        table, seen = np.zeros((size, n_feat)), np.zeros(size, dtype=bool)
        if cached is not None:
            table[: len(cached[2]), cached[1]] = cached[0]
            seen[: len(cached[2])] = cached[2]
        first = np.full(size, -1, dtype=np.int64)
        first[leaf[::-1]] = np.arange(len(leaf) - 1, -1, -1)  # first row reaching each leaf
        new = np.flatnonzero((first >= 0) & ~seen)
        pool = Pool(part.iloc[first[new]], cat_features=self.cat_features, thread_count=thread_count)
        table[new] = tree.get_feature_importance(pool, type="ShapValues", thread_count=thread_count)[:, :-1]
        seen[new] = True
        cols = np.flatnonzero(np.abs(table).sum(axis=0) > 0)
        self._tables[k] = (table[:, cols], cols, seen)
        self._stacked = None
        return self._tables[k]
