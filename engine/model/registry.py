"""MLflow tracking and model registry, behind a few functions with user-readable errors.

Why a wrapper: every command needs the same store set-up (SQLite under mlruns/ by default, any server
by URI), the same way to name a model (alias, version number or URI), and the same answer when the
alias does not exist yet ("train one, then promote it"), instead of an MLflow stack trace.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.errors import DataError, ModelError

REFERENCE_ARTIFACT = "reference/reference.parquet"
TRAINING_EXPERIMENT = "churn-training"
#: Column of the logged hold-out holding each row's hold-out key (see `training.holdout`); `reference_sample`
#: leaves it out, `holdout_rows` keeps it so two versions' hold-outs can be intersected row by row.
HOLDOUT_KEY = "__retain_row_key"
#: How long opening a SQLite store waits for another process creating or upgrading it.
STORE_INIT_WAIT_SECONDS = 120.0

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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


class StoreBusy(ModelError):
    """Another process holds the lock of a SQLite store longer than we may wait."""


@contextmanager
def file_lock(path: Path, *, wait: float, busy: str, hint: str | None = None) -> Iterator[None]:
    """Exclusive advisory lock on `path`, waiting up to `wait` seconds with a growing back-off.

    Why: SQLite is single-writer, and MLflow and Optuna create and upgrade their tables without any
    locking of their own, so two processes opening a new store at once collide ("table ... already exists",
    "database is locked"). The holder writes its pid and start time into the lock file, so the one waiting
    can say who holds it. Raises StoreBusy (`busy` plus the holder) when the wait runs out. Without
    `fcntl` (Windows) it does not lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no advisory locks, SQLite's own timeout applies
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        deadline, delay = time.monotonic() + max(0.0, wait), 0.05
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    fh.seek(0)
                    holder = fh.read().strip()
                    raise StoreBusy(f"{busy}{f' ({holder})' if holder else ''}; waited {wait:g} s",
                                    hint=hint) from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}, since {dt.datetime.now(dt.UTC).strftime('%H:%M:%S')} UTC")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def check_sqlite_file(path: Path, what: str) -> None:
    """A one-line ModelError naming `path` when an existing SQLite file is truncated or corrupt.

    engine.config already refuses a file without the SQLite header; a real database cut short (a copy
    interrupted, a full disk) passes that check and would fail later inside MLflow or Optuna.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    problem = None
    try:
        ro = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
        with contextlib.closing(sqlite3.connect(ro, uri=True, timeout=30)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
        if rows[:1] != [("ok",)]:
            problem = "; ".join(str(r[0]) for r in rows[:2])
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):  # a writer is busy; the check is repeated by the next command
            return
        problem = str(exc)
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem:
        raise ModelError(f"{what} '{path}' is damaged ({problem})",
                         hint="restore it from a backup, or move it away to start a new store")


_READY: set[tuple[str, int]] = set()


def _open_sqlite_store(uri: str, path: Path) -> None:
    """Check the file, then let MLflow create or upgrade its tables while holding the store's init lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (str(path.resolve()), path.stat().st_ino if path.exists() else 0)
    if key in _READY:
        return
    check_sqlite_file(path, "MLflow tracking store")
    from mlflow import MlflowClient

    with file_lock(path.with_name(path.name + ".init.lock"), wait=STORE_INIT_WAIT_SECONDS,
                   busy=f"another process is creating or upgrading the MLflow store '{path}'",
                   hint="wait for it to finish, then run the command again"):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)  # creates or upgrades the tracking tables
            client.search_registered_models(max_results=1)  # ... and the registry's
        except Exception as exc:  # MLflow and SQLAlchemy raise many types; all mean "this store is unusable"
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            if "locked" in first:
                raise StoreBusy(f"the MLflow store '{path}' is locked by another writer ({first})",
                                hint="wait for the other command (e.g. `retain train`) to finish, "
                                     "then run this one again") from None
            raise ModelError(f"cannot open the MLflow store '{path}': {first}",
                             hint="restore it from a backup, or move it away to start a new store") from None
    _READY.add((str(path.resolve()), path.stat().st_ino if path.exists() else 0))


def connect(settings: Settings):  # -> MlflowClient
    """Point MLflow at the configured store and return a client.

    A SQLite store is created under its folder on first use, checked for damage (one line naming the file
    instead of an MLflow error), and its tables are created or upgraded by one process at a time.
    """
    import mlflow
    from mlflow import MlflowClient

    uri = settings.tracking_uri
    db_path = sqlite_path(uri)
    if db_path is not None:
        _open_sqlite_store(uri, db_path)
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
    return registered_uri(settings.model_name, ref)


def registered_uri(name: str, ref: str | None) -> str:
    """A registered model's URI from an alias ('champion' -> models:/NAME@champion), a version number
    ('3' -> models:/NAME/3) or a URI (as it is); no ref means the champion."""
    ref = (ref or "champion").strip()
    if ref.startswith(("models:/", "runs:/", "file:", "/")) or "://" in ref:
        return ref
    if re.fullmatch(r"\d+", ref):
        return f"models:/{name}/{ref}"
    return f"models:/{name}@{ref}"


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
    tags: dict[str, str] = field(default_factory=dict)  # the registered version's tags (emp_threshold, ...)

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
        # suppress_warnings: MLflow's checks of the model's pip requirements and Python version only log
        # warnings, which the "mlflow" logger level above hides anyway; the requirement check alone cost
        # ~0.3 s a load (it maps every installed distribution to its modules).
        pyfunc = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
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
                       run_id=mv.run_id if mv else pyfunc.metadata.run_id, model=inner,
                       tags=dict(getattr(mv, "tags", None) or {}) if mv else {})


def save_version_tags(settings: Settings, loaded: LoadedModel, tags: dict[str, str]) -> None:
    """Set tags on the loaded model's registered version (one line when it is not a registered version)."""
    if not loaded.version:
        raise ModelError(f"model '{loaded.uri}' is not a registered version: nothing to record the tags on")
    client = connect(settings)
    for key, value in tags.items():
        client.set_model_version_tag(loaded.name, str(loaded.version), key, str(value))


def holdout_rows(settings: Settings, loaded: LoadedModel) -> pd.DataFrame:
    """The hold-out rows logged with the model's training run: raw columns, label, prediction and, for
    versions trained since hold-outs are a function of the data, each row's hold-out key (`HOLDOUT_KEY`)."""
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


def reference_sample(settings: Settings, loaded: LoadedModel) -> pd.DataFrame:
    """The hold-out rows logged with the model's training run (raw columns, label, prediction)."""
    return holdout_rows(settings, loaded).drop(columns=[HOLDOUT_KEY], errors="ignore")
