"""Which inputs matter to the model: feature importance per raw input column, for the drift alert rules.

Why: a share of drifted features treats a rarely used column like the model's strongest signal. A
competitor campaign that moves 5 of 23 inputs (22%, under a 30% share) but includes the model's second
most important input is exactly what an operator must hear about. So the check also alerts when any of the
top-k inputs by the model's own importance drifts (`drift.top_features`).

Importances are CatBoost's (PredictionValuesChange), as logged at training (`feature_importance.csv`).
Derived signals (e.g. `arpu_change` from `arpu_m0` and `arpu_m2`) are split evenly over the raw columns
they are computed from, because drift is tested on raw columns. Shares sum to 1.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Any

import pandas as pd

from engine.config import Settings
from engine.errors import mask_secrets

IMPORTANCE_ARTIFACT = "feature_importance.csv"


@dataclass
class Importance:
    """Importance share per raw input column, and where it came from (shown in the summary)."""

    shares: dict[str, float]
    source: str
    model_version: str | None = None
    short: str = ""   # for the one-line status, e.g. "champion v3's importance"

    def ranked(self, columns: list[str]) -> list[str]:
        """`columns` with a positive share, most important first (ties by name, for stable output)."""
        return sorted((c for c in columns if self.shares.get(c, 0.0) > 0), key=lambda c: (-self.shares[c], c))


def to_raw_inputs(importance: dict[str, float]) -> dict[str, float]:
    """Model-feature importances folded onto raw input columns (derived signals split over their inputs)."""
    from engine.model.portable.features import DERIVED

    derived = {f.name: f.inputs for f in DERIVED}
    raw: dict[str, float] = {}
    for name, value in importance.items():
        value = float(value)
        if math.isnan(value) or value <= 0:  # NaN or nothing
            continue
        for col in derived.get(name, (name,)):
            raw[col] = raw.get(col, 0.0) + value / len(derived.get(name, (name,)))
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()} if total > 0 else {}


def of_model(loaded: Any) -> Importance | None:
    """The loaded model's own importances (its CatBoost booster); None when the model exposes none."""
    model = getattr(loaded, "model", None)
    booster = getattr(model, "booster", None)
    pipeline = getattr(model, "pipeline", None)
    if booster is None or pipeline is None:
        return None
    try:
        values = booster.get_feature_importance()
        names = list(pipeline.feature_names_)
    except Exception:  # noqa: BLE001 - a model without importances falls back to the any-feature rule
        return None
    shares = to_raw_inputs(dict(zip(names, values, strict=False)))
    if not shares:
        return None
    return Importance(shares, f"importance of model {loaded.uri} (version {loaded.version})",
                      None if loaded.version is None else str(loaded.version),
                      f"importance of model v{loaded.version}")


def of_champion(settings: Settings, alias: str = "champion") -> tuple[Importance | None, str]:
    """The last champion's logged importances for `--model none`, or None and why not (a note).

    Never creates a store: a SQLite file that does not exist means "no registry", and any registry error
    means the same (the check then alerts on any flagged feature, and says so).
    """
    from engine.model.registry import sqlite_path

    uri = settings.tracking_uri
    db = sqlite_path(uri)
    fallback = "every feature counts as important (alert on any flagged feature)"
    if db is not None and not db.exists():
        return None, f"no model registry at {mask_secrets(uri)}: {fallback}"
    try:
        from engine.model.registry import connect

        client = connect(settings)
        version = client.get_model_version_by_alias(settings.model_name, alias)
        with tempfile.TemporaryDirectory(prefix="retain-importance-") as tmp:
            path = client.download_artifacts(version.run_id, IMPORTANCE_ARTIFACT, tmp)
            table = pd.read_csv(path, index_col=0)
    except Exception as exc:  # noqa: BLE001 - unreachable store, no champion, no artefact: same fallback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return None, (f"no importances of '{settings.model_name}@{alias}' in {mask_secrets(uri)} "
                      f"({mask_secrets(first)}): {fallback}")
    shares = to_raw_inputs(table.iloc[:, 0].to_dict())
    if not shares:
        return None, (f"the importances logged with {settings.model_name} version {version.version} are empty: "
                      f"{fallback}")
    source = f"importance of the last champion, {settings.model_name} version {version.version} (models:/" \
             f"{settings.model_name}@{alias}, no model scored)"
    return Importance(shares, source, str(version.version),
                      f"importance of the last champion, v{version.version}; no model scored"), source

