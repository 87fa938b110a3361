"""One training at a time per SQLite store: the MLflow database and the Optuna study database.

Why: SQLite takes one writer at a time, and neither MLflow nor Optuna coordinates two processes that create
tables, upgrade schemas or write a run at the same moment: two `retain train` on one store died with
"table _alembic_tmp_tags already exists" or "database is locked". A training therefore holds an advisory
lock on each SQLite database it writes (`<file>.train.lock`) from its first write to its registration. A
second training waits for it, with a growing back-off, up to `RETAIN_TRAIN_LOCK_WAIT` seconds (default 600),
then stops with one line naming the store and the process holding it. Readers (`models list`, `decide`)
never take the lock. A server store (PostgreSQL behind `mlflow server`) takes concurrent writers and is not
locked; only a local Optuna database is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from engine.config import Settings
from engine.errors import ConfigError, RetainError
from engine.model.registry import StoreBusy, check_sqlite_file, file_lock, sqlite_path

DEFAULT_WAIT_SECONDS = 600.0
WAIT_ENV = "RETAIN_TRAIN_LOCK_WAIT"


def lock_wait() -> float:
    raw = os.environ.get(WAIT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_WAIT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ConfigError(f"{WAIT_ENV}={raw!r} is not a number of seconds >= 0")
    return value


def sqlite_files(settings: Settings, study_storage: str) -> list[Path]:
    """The SQLite databases a training writes: the MLflow store and the Optuna storage, when they are files."""
    files = {p.resolve() for p in (sqlite_path(settings.tracking_uri), sqlite_path(study_storage)) if p is not None}
    return sorted(files)  # one order for every process, so two trainings never wait for each other in a cycle


@contextlib.contextmanager
def training_lock(settings: Settings, study_storage: str, wait: float | None = None) -> Iterator[None]:
    """Hold every SQLite database of this training; 'database is locked' inside becomes one line too."""
    wait = lock_wait() if wait is None else wait
    files = sqlite_files(settings, study_storage)
    study_file = sqlite_path(study_storage)
    if study_file is not None and study_file != sqlite_path(settings.tracking_uri):
        check_sqlite_file(study_file, "Optuna study database")
    hint = ("trainings on one SQLite store run one after another; wait for the other one, raise "
            f"{WAIT_ENV} (seconds), or use a tracking server (README 'Team scale')")
    with contextlib.ExitStack() as stack:
        for path in files:
            stack.enter_context(file_lock(path.with_name(path.name + ".train.lock"), wait=wait,
                                          busy=f"another `retain train` is writing to the SQLite store '{path}'",
                                          hint=hint))
        try:
            yield
        except RetainError:
            raise
        except Exception as exc:  # MLflow, SQLAlchemy and Optuna each wrap sqlite3's error in their own type
            text = str(exc)
            if "database is locked" not in text and "database table is locked" not in text:
                raise
            where = ", ".join(f"'{p}'" for p in files) or "the store"
            raise StoreBusy(f"another process is writing to {where} (SQLite: database is locked)",
                            hint=hint) from None
