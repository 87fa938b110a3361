"""The feature pipeline, from the portable model code (`engine.model.portable.features`).

Why a re-export: the pipeline is fitted at training, stored in the model and reused to decide; its
code travels with every model version, so it lives in the portable package and the engine imports it
from there. `InputError` (a ValueError) is what it raises for missing columns; the registry turns it
into a `DataError` for the engine's users.
"""

from __future__ import annotations

from engine.model.portable.features import (
    DERIVED,
    LEARNED,
    MISSING_CATEGORY,
    DerivedFeature,
    FeaturePipeline,
    InputError,
    add_derived,
)

__all__ = ["DERIVED", "LEARNED", "MISSING_CATEGORY", "DerivedFeature", "FeaturePipeline", "InputError", "add_derived"]
