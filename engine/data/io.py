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
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from engine.data.csvtext import FORMULA_START, csv_bytes, neutralise_formulas  # noqa: F401 (re-exported)
from engine.errors import DataError

TABLE_SUFFIXES = {".parquet", ".pq", ".csv"}


def read_table(path: str | Path, *, what: str = "input table") -> pd.DataFrame:
    """Read a Parquet or CSV table (or a folder of Parquet files), refusing missing, unreadable or empty ones
    with a clear error."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} '{p}' does not exist",
                        hint="check the path, or create data with `retain data generate`")
    if p.is_dir():  # a Parquet dataset (Spark writes one file per task), read as one table
        if not any(f.suffix.lower() == ".parquet" for f in p.rglob("*") if not f.name.startswith((".", "_"))):
            raise DataError(f"{what} '{p}' is a directory without Parquet files, expected a .parquet or .csv "
                            "file or a folder of .parquet files")
        suffix = ".parquet"
    else:
        suffix = p.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{what} '{p}' has unsupported type '{suffix or 'none'}'", hint="use a .parquet or .csv file")
    try:
        df = pd.read_csv(p, low_memory=False) if suffix == ".csv" else pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} '{p}' is empty") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{what} '{p}' cannot be read: {_csv_problem(str(exc))}",
                        hint="every line needs the header's number of fields; quote values holding commas "
                             "and close every quote") from None
    except Exception as exc:  # pyarrow/pandas raise many types for corrupt files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{what} '{p}' cannot be read: {first_line}") from None
    if len(df) == 0:
        raise DataError(f"{what} '{p}' has no rows")
    # Arrow's allocator keeps the freed file buffers for reuse: a million-row month holds ~0.25 GiB of them
    pa.default_memory_pool().release_unused()
    return df


def _csv_problem(message: str) -> str:
    """pandas' tokenizer messages in a table owner's words, with the file's line number (header = line 1)."""
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:
        want, line, got = fields.groups()
        return f"line {line} has {got} fields where the header has {want}"
    quote = re.search(r"EOF inside string starting at row (\d+)", message)
    if quote:
        return f"a quote opened on line {int(quote.group(1)) + 1} is never closed"
    return message.strip().splitlines()[0].removeprefix("Error tokenizing data. C error: ")


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


#: A cell a spreadsheet would run as a formula starts with one of these (OWASP, "CSV injection").
def restore_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """The inverse of `neutralise_formulas` for CSVs retain wrote itself (reading work orders back)."""
    out = df
    for col in df.columns:
        if df[col].dtype == object:
            text = df[col].astype("string")
            quoted = (text.str.startswith("'") & text.str[1:2].isin(list(FORMULA_START))).fillna(False)
            if quoted.any():
                if out is df:
                    out = df.copy()
                out[col] = df[col].where(~quoted.to_numpy(dtype=bool), text.str[1:])
    return out


CSV_CHUNK_ROWS = 100_000


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write Parquet or CSV (chosen by suffix) atomically; CSV text cells cannot run as formulas."""
    target = Path(path)
    with atomic_path(target) as tmp:
        if target.suffix.lower() == ".csv":
            with open(tmp, "wb") as fh:  # a slice at a time: the text of a million orders is never whole
                for start in range(0, max(len(df), 1), CSV_CHUNK_ROWS):
                    fh.write(csv_bytes(df.iloc[start:start + CSV_CHUNK_ROWS], header=start == 0))
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


FAILPOINT_ENV = "RETAIN_FAILPOINT"


def failpoint(name: str) -> None:
    """Die at once (SIGKILL, like a power cut) when RETAIN_FAILPOINT names this point: fault-injection tests
    prove that whatever instant a run dies at, outputs and stores stay whole. Costs one dict lookup."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


#: Suffixes of the hidden siblings a publication uses: the folder being written, and the one it replaced.
STAGING, PREVIOUS, COMPLETE = ".staging-", ".previous", ".complete"


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """Stage a set of output files and publish them as the whole of `out_dir`, or not at all.

    Why a whole folder: a call centre reads `work_orders/` next to `summary.json`; a run that writes fewer
    files than the last one (no SMS orders today) must not leave yesterday's beside today's summary. The
    files are written into a hidden sibling folder (`.NAME.staging-*`, same file system); when the block
    succeeds the old folder is renamed to `.NAME.previous` (one generation is kept, so nothing the folder
    held is lost) and the staging folder is renamed to NAME. Readers see the old complete run or the new
    complete run, never a mix. A process killed in between leaves residue that the next publication into
    the same folder resolves: a complete staging folder with no NAME is promoted, others are removed.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise DataError(f"output '{out_dir}' exists and is not a folder")
    if out == Path.cwd() or out in Path.cwd().parents or out.parent == out:
        raise DataError(f"output folder '{out_dir}' is the working folder or one of its parents",
                        hint="name a folder of its own, e.g. out/decisions")
    _make_parent(out, out_dir)
    recover(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING}", dir=out.parent))
    try:
        yield stage
        failpoint("publish:staged")
        stage.with_name(stage.name + COMPLETE).touch()
        previous = out.with_name(f".{out.name}{PREVIOUS}")
        if out.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(out, previous)
        failpoint("publish:between-renames")
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        stage.with_name(stage.name + COMPLETE).unlink(missing_ok=True)


def _make_parent(out: Path, shown: str | Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [out.parent, *out.parent.parents] if p.exists() and not p.is_dir()), out.parent)
        raise DataError(f"cannot create output folder '{shown}': '{blocker}' is a file, not a folder") from None
    except PermissionError:
        raise DataError(f"cannot create output folder '{shown}': permission denied") from None


def recover(out: Path) -> None:
    """Finish or clean up a publication into `out` that a killed process left half done."""
    complete = sorted(out.parent.glob(f".{out.name}{STAGING}*{COMPLETE}"), key=lambda p: p.stat().st_mtime)
    if not out.exists() and complete:
        newest = complete[-1].with_name(complete[-1].name.removesuffix(COMPLETE))
        if newest.is_dir():
            os.replace(newest, out)
    for residue in out.parent.glob(f".{out.name}{STAGING}*"):
        if residue.is_dir():
            shutil.rmtree(residue, ignore_errors=True)
        else:
            residue.unlink(missing_ok=True)
    previous = out.with_name(f".{out.name}{PREVIOUS}")
    if not out.exists() and previous.is_dir():
        os.replace(previous, out)  # killed between the two renames: the old complete run comes back


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
