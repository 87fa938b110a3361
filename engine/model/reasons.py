"""Churn reasons from SHAP and their words, from the portable model code (`engine.model.portable.reasons`).

Why a re-export: the model explains itself with this code wherever it is loaded, so it travels with
the artefact; the engine words work orders with the same functions.
"""

from __future__ import annotations

from engine.model.portable.reasons import (
    NO_REASON,
    SIGNAL_TEXT,
    family_matrix,
    reason_words,
    reasons_from_shap,
    signal_text,
)

__all__ = ["NO_REASON", "SIGNAL_TEXT", "family_matrix", "reason_words", "reasons_from_shap", "signal_text"]
