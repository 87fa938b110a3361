"""MLflow tracking and model registry, behind a few functions with user-readable errors.

Why a wrapper: every command needs the same store set-up (SQLite under mlruns/ by default, any server
by URI), the same way to name a model (alias, version number or URI), and the same answer when the
alias does not exist yet ("train one, then promote it"), instead of an MLflow stack trace.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.errors import DataError, ModelError

REFERENCE_ARTIFACT = "reference/reference.parquet"
TRAINING_EXPERIMENT = "churn-training"

# MLflow is chatty at INFO/WARNING level for things users cannot act on.
for _name in ("mlflow", "alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="mlflow")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _check_server(uri: str) -> None:
    """Fail fast with one line when a remote tracking server does not answer (MLflow retries for minutes)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(f"MLflow tracking server {uri} is not reachable ({reason})",
                         hint="start it (see README 'Team scale') or pass --tracking-uri") from None


def connect(settings: Settings):  # -> MlflowClient
    """Point MLflow at the configured store and return a client. Creates mlruns/ for SQLite."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        db_path = Path(uri.removeprefix("sqlite:///"))
        db_path.parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    """Experiment id, creating it with artefacts under mlruns/ next to a SQLite store."""
    client = connect(settings)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if settings.tracking_uri.startswith("sqlite:///"):
        root = Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.resolve()
        location = (root / "artifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def model_uri(settings: Settings, ref: str | None) -> str:
    """'champion' -> models:/churn@champion; '3' -> models:/churn/3; URIs pass through."""
    ref = (ref or "champion").strip()
    if ref.startswith(("models:/", "runs:/", "file:", "/")) or "://" in ref:
        return ref
    if re.fullmatch(r"\d+", ref):
        return f"models:/{settings.model_name}/{ref}"
    return f"models:/{settings.model_name}@{ref}"


def _resolve_version(client, settings: Settings, uri: str):  # -> ModelVersion | None
    from mlflow.exceptions import MlflowException

    m = re.fullmatch(r"models:/([^/@]+)(?:@(.+)|/(\d+))", uri)
    if not m:
        return None
    name, alias, number = m.groups()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, number)
    except MlflowException:
        if alias:
            raise ModelError(
                f"no version of model '{name}' has alias '{alias}'",
                hint=f"train one with `retain train`, then `retain models promote VERSION --alias {alias}`"
                     " (see `retain models list`)") from None
        raise ModelError(f"model '{name}' has no version {number}", hint="see `retain models list`") from None


#: What a loaded python model must offer to be used as a retain churn model (checked by duck typing).
CHURN_MODEL_API = ("features", "predict_proba", "score", "explain", "input_columns", "derived_columns",
                   "reason_labels", "pipeline", "spec")


def is_churn_model(obj: Any) -> bool:
    """True for a retain churn model, whichever copy of the portable code its class comes from.

    Not `isinstance(obj, ChurnModel)`: a registered model unpickles as an instance of its own hashed
    module (`retain_churn_<hash>.model.ChurnModel`, see `training.packaging`), never of `engine`'s.
    """
    return getattr(type(obj), "retain_model", None) == "churn" and all(hasattr(obj, a) for a in CHURN_MODEL_API)


@contextmanager
def _as_data_error():
    """The model's own InputError (it cannot import `engine`) becomes the engine's DataError."""
    try:
        yield
    except ValueError as exc:
        if type(exc).__name__ != "InputError":
            raise
        raise DataError(str(exc), hint=getattr(exc, "hint", None)) from None


@dataclass
class LoadedModel:
    """A churn model version ready to score raw subscriber rows.

    `model` is the python model itself (the portable `ChurnModel`, from the version's own code); the
    methods here delegate to it and report rows it cannot score as a DataError.
    """

    uri: str
    name: str
    version: str | None
    run_id: str | None
    model: Any  # a ChurnModel from engine.model.portable, or its hashed copy logged with the version

    @property
    def input_columns(self) -> list[str]:
        return self.model.input_columns

    @property
    def categorical(self) -> list[str]:
        return list(self.model.pipeline.categorical)

    @property
    def numeric(self) -> list[str]:
        return list(self.model.pipeline.numeric)

    @property
    def reason_labels(self) -> dict[str, str]:
        """Reason family -> words, as frozen into this model version at training."""
        return self.model.reason_labels

    @property
    def module(self) -> str:
        """The module the model's code runs from, e.g. 'retain_churn_1a2b3c4d5e.model'."""
        return type(self.model).__module__

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        with _as_data_error():
            return self.model.predict_proba(df)

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        """Derived signals, churn_probability and value_tier per raw row (see ChurnModel.score)."""
        with _as_data_error():
            return self.model.score(df)

    def explain(self, df: pd.DataFrame, *, features: pd.DataFrame | None = None,
                approximate: bool = False) -> pd.DataFrame:
        """reason, reason_share, reason_signal per raw row (see ChurnModel.explain)."""
        with _as_data_error():
            return self.model.explain(df, features=features, approximate=approximate)


def load_model(settings: Settings, ref: str | None = None) -> LoadedModel:
    """Load a churn model by alias, version number or URI, with a how-to-fix error when absent.

    The model runs its own code (logged with it), so champion and challenger loaded here side by side
    each score with the code they were trained with.
    """
    import mlflow.pyfunc

    client = connect(settings)
    uri = model_uri(settings, ref)
    mv = _resolve_version(client, settings, uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MLflow raises several types for missing or broken artefacts
        raise ModelError(f"cannot load model '{uri}': {str(exc).splitlines()[0]}") from None
    try:
        inner = pyfunc.unwrap_python_model()
    except Exception:  # not a python-function model with a python_model (e.g. a plain sklearn flavour)
        inner = None
    if not is_churn_model(inner):
        kind = type(inner).__module__ + "." + type(inner).__qualname__ if inner is not None else "a non-python model"
        raise ModelError(f"model '{uri}' is not a retain churn model (it is {kind})",
                         hint="pass a version trained with `retain train`; see `retain models list`")
    return LoadedModel(uri=uri, name=mv.name if mv else settings.model_name,
                       version=str(mv.version) if mv else None,
                       run_id=mv.run_id if mv else pyfunc.metadata.run_id, model=inner)


def reference_sample(settings: Settings, loaded: LoadedModel) -> pd.DataFrame:
    """The hold-out rows logged with the model's training run (raw columns, label, prediction)."""
    import mlflow.artifacts

    if not loaded.run_id:
        raise ModelError(f"model '{loaded.uri}' has no training run, so no reference sample",
                         hint="pass --reference FILE")
    connect(settings)
    try:
        path = mlflow.artifacts.download_artifacts(run_id=loaded.run_id, artifact_path=REFERENCE_ARTIFACT)
    except Exception:
        raise ModelError(f"training run {loaded.run_id} of '{loaded.uri}' has no reference sample",
                         hint="pass --reference FILE, or retrain with this version of retain") from None
    return pd.read_parquet(path)
