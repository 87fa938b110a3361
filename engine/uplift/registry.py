"""The registered uplift model (`models:/uplift@champion`), loaded like the churn model, or None.

None, not an error, when no version exists: arbitration then uses the prior effects from offers.yaml
and says so (engine.uplift.effect.effect_note).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.config import Settings
from engine.errors import ModelError
from engine.model.registry import registered_uri

UPLIFT_MODEL_NAME = "uplift"
UPLIFT_EXPERIMENT = "uplift-training"


def uplift_uri(ref: str | None) -> str:
    return registered_uri(UPLIFT_MODEL_NAME, ref)


@dataclass
class LoadedUplift:
    uri: str
    version: str | None
    run_id: str | None
    model: Any  # an UpliftModel from its own hashed module

    def effect(self, frame, offer_ids, channels=None, priors=None):
        return self.model.effect(frame, offer_ids, channels, priors=priors)


def uplift_version(settings: Settings, ref: str | None = "champion"):  # -> ModelVersion | None
    """The registered version a ref names, without loading it (None for a plain URI; MlflowException when
    the alias or version does not exist)."""
    from engine.model.registry import connect

    client = connect(settings)
    m = re.fullmatch(r"models:/([^/@]+)(?:@(.+)|/(\d+))", uplift_uri(ref))
    if not m:
        return None
    name, alias, number = m.groups()
    return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)


def load_uplift(settings: Settings, ref: str | None = "champion", *, required: bool = False) -> LoadedUplift | None:
    """The uplift model by alias, version or URI; None when it does not exist (ModelError if `required`)."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    uri = uplift_uri(ref)
    try:
        mv = uplift_version(settings, ref)
    except MlflowException:
        if required:
            raise ModelError(f"no uplift model '{uri}'", hint="train one with `retain uplift train`") from None
        return None
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
        inner = pyfunc.unwrap_python_model()
    except Exception as exc:  # MLflow raises several types for missing or broken artefacts
        raise ModelError(f"cannot load uplift model '{uri}': {str(exc).splitlines()[0]}") from None
    if getattr(type(inner), "retain_model", None) != "uplift":
        raise ModelError(f"model '{uri}' is not a retain uplift model", hint="train one with `retain uplift train`")
    return LoadedUplift(uri=uri, version=str(mv.version) if mv else None,
                        run_id=mv.run_id if mv else pyfunc.metadata.run_id, model=inner)
