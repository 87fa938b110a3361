"""Which rows are held out: a function of the data alone, never of the seed.

Why: a promotion gate compares two versions on rows neither was trained on. With a seeded random split,
versions trained with different seeds hold out different rows, so each has trained on part of the other's
hold-out and the comparison favours whichever model is scored on rows it has seen. Here a row is held out
when the SHA-256 of its subscriber id (or, for a table without an id column, of its content) falls below
`training.holdout_share`, read as a number in [0, 1). Every version trained on the same table (same
fingerprint) holds out exactly the same rows, whatever its seed, and a smaller share's hold-out lies inside
a larger one's. Stratifying by target is not needed: with a few hundred rows the hash split keeps the
churn rate within sampling noise, and the checks below refuse a hold-out without both classes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.data.labelled import TrainingTable
from engine.errors import DataError

#: Bumped when the rule changes, so versions split by different rules are never treated as sharing rows.
RULE_VERSION = 1
_SCALE = float(2**64)


def row_keys(table: TrainingTable) -> pd.Series:
    """SHA-256 (hex) of each row's subscriber id, or of its content (features and target) without one.

    Content keys hash pandas' stable per-row hash of the sorted feature columns plus the target, so the
    same table read the same way gives the same keys on any machine; duplicated rows share a key and
    therefore a side of the split.
    """
    id_column = table.config.id_column
    if id_column and id_column in table.frame.columns:
        values = [b"id\0" + str(v).encode() for v in table.frame[id_column].tolist()]
    else:
        cols = sorted(table.config.features)
        content = table.frame[cols].assign(__target=table.target.to_numpy())
        hashed = pd.util.hash_pandas_object(content, index=False).to_numpy(dtype="<u8")
        values = [b"row\0" + ",".join(cols).encode() + b"\0" + int(h).to_bytes(8, "little") for h in hashed]
    return pd.Series([hashlib.sha256(v).hexdigest() for v in values], index=table.frame.index, dtype=object)


def key_position(keys: pd.Series) -> np.ndarray:
    """Each key read as a number in [0, 1) (its first 64 bits)."""
    return np.array([int(k[:16], 16) / _SCALE for k in keys], dtype=float)


@dataclass(frozen=True)
class HoldoutSplit:
    train: np.ndarray  # positions in the table, in table order
    holdout: np.ndarray
    keys: pd.Series  # hold-out key of every row
    rule: dict

    @property
    def rule_json(self) -> str:
        return json.dumps(self.rule, sort_keys=True)


def split(table: TrainingTable, share: float, folds: int) -> HoldoutSplit:
    """Rows whose key falls below `share` are held out; refuse splits too small to train or to judge."""
    keys = row_keys(table)
    held = key_position(keys) < share
    train_pos, hold_pos = np.flatnonzero(~held), np.flatnonzero(held)
    id_column = table.config.id_column if table.config.id_column in table.frame.columns else None
    rule = {"rule": "sha256", "key": id_column or "row content", "share": share, "version": RULE_VERSION}
    y = table.target.to_numpy()
    hold_counts = np.bincount(y[hold_pos].astype(int), minlength=2) if len(hold_pos) else np.zeros(2, int)
    train_counts = np.bincount(y[train_pos].astype(int), minlength=2) if len(train_pos) else np.zeros(2, int)
    if hold_counts.min() < 2:
        raise DataError(f"{table.source}: the hold-out ({len(hold_pos)} of {len(y)} rows, "
                        f"share {share}) holds {int(hold_counts[1])} churner(s) and {int(hold_counts[0])} "
                        "non-churner(s); it needs at least 2 of each to be judged",
                        hint="use more data or a larger training.holdout_share")
    if len(train_pos) < 2 * folds or train_counts.min() < folds + 1:
        raise DataError(f"{table.source}: {len(train_pos)} training rows after the hold-out, "
                        f"{int(train_counts.min())} in the smaller class, is too few for {folds}-fold "
                        "cross-validation", hint="use more data or fewer folds (training.folds in the config)")
    return HoldoutSplit(train=train_pos, holdout=hold_pos, keys=keys, rule=rule)


def subsample(keys: pd.Series, rows: int) -> pd.Index:
    """The `rows` rows with the smallest keys (table order kept): the same rows for every version of one
    table, and the first rows of a larger sample, so two versions' logged samples overlap as much as possible."""
    if len(keys) <= rows:
        return keys.index
    return keys.sort_values(kind="stable").index[:rows].sort_values()
