"""Reading input tables and writing outputs atomically.

Why atomic: decision outputs feed call centres and SMS gateways. A crash half-way must never leave a
truncated contact list that someone then dials. Every file is written to a temporary sibling and
renamed into place; a set of files is staged together and only published when all were written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from engine.errors import DataError

TABLE_SUFFIXES = {".parquet", ".pq", ".csv"}


def read_table(path: str | Path, *, what: str = "input table") -> pd.DataFrame:
    """Read a Parquet or CSV table, refusing missing, unreadable or empty files with a clear error."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} '{p}' does not exist",
                        hint="check the path, or create data with `retain data generate`")
    if p.is_dir():
        raise DataError(f"{what} '{p}' is a directory, expected a .parquet or .csv file")
    suffix = p.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{what} '{p}' has unsupported type '{suffix or 'none'}'", hint="use a .parquet or .csv file")
    try:
        df = pd.read_csv(p, low_memory=False) if suffix == ".csv" else pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} '{p}' is empty") from None
    except Exception as exc:  # pyarrow/pandas raise many types for corrupt files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{what} '{p}' cannot be read: {first_line}") from None
    if len(df) == 0:
        raise DataError(f"{what} '{p}' has no rows")
    return df


def sqlite_path(url: str | None) -> Path | None:
    """The database file of a `sqlite:///path` URL (MLflow, Optuna or SQLAlchemy, any driver), else None.

    None for other databases, servers (http://...), in-memory SQLite and anything that is not a URL.
    Relative paths stay relative (to the working directory), as SQLAlchemy and MLflow read them.
    """
    match = re.match(r"sqlite(\+\w+)?:///", url or "")
    if match is None:
        return None
    path = url[match.end():].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write Parquet or CSV (chosen by suffix) atomically."""
    target = Path(path)
    with atomic_path(target) as tmp:
        if target.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return target


def write_json(obj: Any, path: str | Path) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return target


def write_text(text: str, path: str | Path) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return target


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """Stage a set of output files and publish them into `out_dir` together.

    Files are written into a hidden staging folder inside `out_dir`; only when the block finishes are
    they renamed into place (each rename is atomic). If the block fails, nothing in `out_dir` changes.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output '{out}' exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
        for item in sorted(stage.rglob("*")):
            if item.is_file():
                dest = out / item.relative_to(stage)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def read_yaml_mapping(path: str | Path, *, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; malformed YAML is reported as `file:line: problem`."""
    import yaml

    from engine.errors import ConfigError

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping in the {what}")
    return data
