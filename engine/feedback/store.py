"""The decision store: every decision run, decision, work order and outcome, in one database.

Why a database and not more files: measuring retention joins what was decided (rule, offer, channel,
control or not) with what happened weeks later (contacted, accepted, churned), across runs. Outcomes
arrive late, in pieces and sometimes twice; a keyed table with upserts absorbs that, a folder of CSVs
does not.

**Where.** SQLAlchemy Core on SQLite by default, any SQLAlchemy URL for teams (for example
``postgresql+psycopg://user@host/retain``; install the driver). The URL is, first found wins:

1. an explicit ``url=`` (the CLI's ``--store``, or environment variable ``RETAIN_STORE_URL``);
2. a ``store_url`` setting, if the configuration defines one;
3. a SQLite file ``store/retain.db`` next to the MLflow store folder: the default tracking URI
   ``sqlite:///mlruns/mlflow.db`` gives ``sqlite:///store/retain.db``; a tracking store at
   ``/srv/retain/mlruns/mlflow.db`` gives ``/srv/retain/store/retain.db``. So each project folder (and
   each test's temporary store) has its own decision store without any configuration;
4. ``sqlite:///store/retain.db`` when MLflow runs on a server.

**Tables** (see `describe()`): ``decision_runs`` (one row per run: date, input, model version, policy
hash, summary), ``decisions`` (one row per subscriber per run, key columns only: status, control,
rule, offer, channel, segments, reason, probability, costs), ``work_orders`` (one row per order sent),
``outcomes`` (one row per subscriber per run, keyed like ``decisions``: contacted, accepted, churned
within 30/60/90 days, revenue after), and ``schema_version``. Dates are ISO text (``YYYY-MM-DD``):
portable, sortable, and what the files already carry.

**Migrations.** ``schema_version`` holds one row per applied migration. `MIGRATIONS` is an ordered,
numbered tuple; opening a store applies every migration above the stored version, each in its own
transaction together with its version row, so a failed migration leaves the store at the previous
version. A store newer than this code is refused (upgrade retain). To change the schema: append
``Migration(N + 1, "what and why", function)`` using explicit DDL (``ALTER TABLE ... ADD COLUMN``,
``CREATE INDEX``), update the table definitions below to match, and never edit an applied migration.
SQLite allows one writer at a time: decide, ingest and report from one process (a scheduler), as with
the MLflow SQLite store.

**Speed.** Inserts are executemany of plain tuples in 100 k-row chunks; on SQLite straight through the
driver (WAL, ``synchronous=NORMAL``), other databases through SQLAlchemy's executemany. Measured by
``benchmarks/feedback.py`` (2 cores): recording a 1 M-subscriber run (1 M decisions + 270 k work orders)
~7 s, ingesting 1 M outcomes ~14 s (re-ingesting the same file ~12 s, writing nothing), a report ~1.6 s
(the database aggregates), ~530 MiB of SQLite per 1 M-subscriber run with its outcomes. Indexes beyond
the primary keys are kept to what a query needs: two extra indexes on ``decisions`` (and one on ``outcomes``)
made recording and ingesting ~40% slower.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.config import STORE_SCHEMES, check_store_uri
from engine.data.frames import block_values
from engine.data.io import sqlite_path
from engine.errors import RetainError

STORE_URL_ENV = "RETAIN_STORE_URL"
DEFAULT_STORE_FILE = Path("store") / "retain.db"
INSERT_CHUNK = 100_000
IN_CHUNK = 5_000  # ids per IN (...) query: below every database's bound-parameter limit


class StoreError(RetainError):
    """The decision store cannot be opened, is too new, or lacks what was asked for."""


# ---------------------------------------------------------------------------------------------
# the schema (current version) and its migrations
# ---------------------------------------------------------------------------------------------
def _tables_v1(md: sa.MetaData, decision_extra: Sequence[sa.Column] = ()) -> dict[str, sa.Table]:
    """The tables as created by migration 1. Frozen: later changes are new migrations."""
    text = sa.String(64)
    runs = sa.Table(
        "decision_runs", md,
        sa.Column("decision_run", text, primary_key=True),
        sa.Column("decided_on", sa.String(10), nullable=False),
        sa.Column("recorded_at", sa.String(32), nullable=False),
        sa.Column("input", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("model_version", text),
        sa.Column("policy_hash", text),
        sa.Column("subscribers", sa.Integer, nullable=False),
        sa.Column("offers", sa.Integer, nullable=False),
        sa.Column("control", sa.Integer, nullable=False),
        sa.Column("summary", sa.Text),
    )
    decisions = sa.Table(
        "decisions", md,
        sa.Column("decision_run", text, sa.ForeignKey("decision_runs.decision_run"), primary_key=True),
        sa.Column("subscriber_id", text, primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("control", sa.Boolean, nullable=False),
        sa.Column("rule_id", text),
        sa.Column("offer_id", text),
        sa.Column("channel", sa.String(32)),
        sa.Column("policy_rule", text),
        sa.Column("stage", sa.String(32)),
        sa.Column("risk_grade", sa.String(16)),
        sa.Column("value_tier", sa.String(16)),
        sa.Column("lifecycle_stage", sa.String(16)),
        sa.Column("need_group", sa.String(16)),
        sa.Column("reason", sa.String(32)),
        sa.Column("churn_probability", sa.Float),
        sa.Column("p_accept", sa.Float),
        sa.Column("offer_cost", sa.Float),
        sa.Column("channel_cost", sa.Float),
        sa.Column("expected_saved_value", sa.Float),
        sa.Column("net_value", sa.Float),
        sa.Column("arpu", sa.Float),
        *decision_extra,
    )
    orders = sa.Table(
        "work_orders", md,
        sa.Column("order_id", sa.String(96), primary_key=True),
        sa.Column("decision_run", text, sa.ForeignKey("decision_runs.decision_run"), nullable=False),
        sa.Column("subscriber_id", text, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("offer_id", text),
        sa.Column("rule_id", text),
        sa.Column("priority", sa.Integer),
        sa.Column("due_date", sa.String(10), nullable=False),
        sa.UniqueConstraint("decision_run", "subscriber_id", name="uq_work_orders_run_subscriber"),
    )
    outcomes = sa.Table(
        "outcomes", md,
        sa.Column("decision_run", text, primary_key=True),
        sa.Column("subscriber_id", text, primary_key=True),
        sa.Column("order_id", sa.String(96)),
        sa.Column("contacted", sa.Boolean),
        sa.Column("accepted", sa.Boolean),
        sa.Column("churned_30d", sa.Boolean),
        sa.Column("churned_60d", sa.Boolean),
        sa.Column("churned_90d", sa.Boolean),
        sa.Column("revenue_after", sa.Float),
        sa.Column("source", sa.Text),
        sa.Column("ingested_at", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["decision_run", "subscriber_id"],
                                ["decisions.decision_run", "decisions.subscriber_id"]),
    )
    return {"decision_runs": runs, "decisions": decisions, "work_orders": orders, "outcomes": outcomes}


def _version_table(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "schema_version", md,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.String(32), nullable=False),
    )


#: The current schema, used by every query. Keep it equal to what the migrations build.
metadata = sa.MetaData()
schema_version = _version_table(metadata)
#: `decisions` also has the columns later migrations added (migration 3: exploration).
_current = _tables_v1(metadata, decision_extra=[sa.Column("propensity", sa.Float), sa.Column("explored", sa.Boolean)])
decision_runs, decisions, work_orders, outcomes = (_current[k] for k in
                                                   ("decision_runs", "decisions", "work_orders", "outcomes"))
#: Outcome value columns, in table order.
OUTCOME_FLAGS = ("contacted", "accepted", "churned_30d", "churned_60d", "churned_90d")
OUTCOME_VALUES = (*OUTCOME_FLAGS, "revenue_after")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _m1_initial(conn: Connection) -> None:
    md = sa.MetaData()
    for table in _tables_v1(md).values():
        table.create(conn)


def _m2_due_date_index(conn: Connection) -> None:
    # Only what a query needs: per-run lookups use the (decision_run, subscriber_id) primary keys; two more
    # indexes on `decisions` and one on `outcomes` made 1 M-row inserts ~40% slower (measured).
    conn.execute(sa.text("CREATE INDEX ix_work_orders_due_date ON work_orders (due_date)"))


def _m3_propensity(conn: Connection) -> None:
    # Exploration: the probability with which each decision's action was chosen, and whether it was drawn at
    # random; off-policy evaluation (retain policy evaluate) weighs logged decisions by it. NULL for runs
    # recorded before: readers derive it from the control-group share.
    conn.execute(sa.text("ALTER TABLE decisions ADD COLUMN propensity FLOAT"))
    conn.execute(sa.text("ALTER TABLE decisions ADD COLUMN explored BOOLEAN"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "decision runs, decisions, work orders, outcomes", _m1_initial),
    Migration(2, "index work orders by due date (retain report --overdue)", _m2_due_date_index),
    Migration(3, "decisions: propensity and explored (exploration, off-policy evaluation)", _m3_propensity),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# ---------------------------------------------------------------------------------------------
# locating and opening a store
# ---------------------------------------------------------------------------------------------
def store_url(settings: Any = None, url: str | None = None) -> str:
    """The store's SQLAlchemy URL: explicit > $RETAIN_STORE_URL > settings.store_url > next to MLflow."""
    if url:
        return url
    if os.environ.get(STORE_URL_ENV):
        return os.environ[STORE_URL_ENV]
    configured = getattr(settings, "store_url", None) if settings is not None else None
    if configured:
        return str(configured)
    tracking_db = sqlite_path(getattr(settings, "tracking_uri", None))
    if tracking_db is not None:
        return f"sqlite:///{tracking_db.parent.parent / DEFAULT_STORE_FILE}"
    return f"sqlite:///{DEFAULT_STORE_FILE}"


_ENGINES: dict[str, Engine] = {}


def _engine(url: str) -> Engine:
    if url in _ENGINES:
        return _ENGINES[url]
    try:
        u = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(f"store URL '{url}' is not a database URL",
                         hint="use sqlite:///path/retain.db or postgresql+psycopg://user@host/db") from None
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    try:
        engine = sa.create_engine(url, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(f"store URL '{u.render_as_string(hide_password=True)}': database driver missing ({exc})",
                         hint="install the driver for this database, e.g. pip install psycopg") from None
    if u.get_backend_name() == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DB-API objects
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    _ENGINES[url] = engine
    return engine


class Store:
    """An open, migrated decision store. Cheap to create: engines are cached per URL."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def display_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # -- schema ---------------------------------------------------------------------------------
    def version(self) -> int:
        """Highest applied migration, 0 for an empty database."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)

    def migrate(self) -> list[int]:
        """Apply every migration above the stored version, in order; return the versions applied."""
        with self.engine.begin() as conn:
            schema_version.create(conn, checkfirst=True)
        current = self.version()
        if current > SCHEMA_VERSION:
            raise StoreError(f"decision store {self.display_url} has schema version {current}, newer than this "
                             f"retain understands ({SCHEMA_VERSION})", hint="upgrade retain")
        applied = []
        for m in MIGRATIONS:
            if m.version <= current:
                continue
            with self.engine.begin() as conn:
                m.apply(conn)
                conn.execute(schema_version.insert().values(version=m.version, description=m.description,
                                                            applied_at=now_iso()))
            applied.append(m.version)
        return applied

    def history(self) -> pd.DataFrame:
        return self.read(sa.select(schema_version).order_by(schema_version.c.version))

    # -- reading --------------------------------------------------------------------------------
    def read(self, query: sa.Select | sa.TextClause, conn: Connection | None = None) -> pd.DataFrame:
        if conn is not None:
            return pd.read_sql(query, conn)
        with self.engine.connect() as c:
            return pd.read_sql(query, c)

    def read_in(self, table: sa.Table, column: str, values: Iterable[Any], columns: Sequence[str] | None = None,
                conn: Connection | None = None) -> pd.DataFrame:
        """Rows of `table` whose `column` is one of `values` (queried in chunks)."""
        cols = [table.c[c] for c in (columns or table.c.keys())]
        vals = list(dict.fromkeys(v for v in values if v is not None))
        parts = []
        with contextlib.nullcontext(conn) if conn is not None else self.engine.connect() as c:
            for start in range(0, len(vals), IN_CHUNK):
                chunk = vals[start:start + IN_CHUNK]
                parts.append(pd.read_sql(sa.select(*cols).where(table.c[column].in_(chunk)), c))
            if not parts:
                parts.append(pd.read_sql(sa.select(*cols).where(sa.false()), c))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def runs(self) -> pd.DataFrame:
        """Stored runs, newest first, with counts of decisions, work orders and outcomes."""
        counts = {}
        for name, table in (("orders", work_orders), ("outcomes", outcomes)):
            counts[name] = (sa.select(table.c.decision_run, sa.func.count().label(name))
                            .group_by(table.c.decision_run).subquery())
        r = decision_runs
        q = (sa.select(r.c.decision_run, r.c.decided_on, r.c.subscribers, r.c.offers, r.c.control,
                       sa.func.coalesce(counts["orders"].c.orders, 0).label("work_orders"),
                       sa.func.coalesce(counts["outcomes"].c.outcomes, 0).label("outcomes"),
                       r.c.model_version, r.c.policy_hash, r.c.recorded_at, r.c.input)
             .outerjoin(counts["orders"], counts["orders"].c.decision_run == r.c.decision_run)
             .outerjoin(counts["outcomes"], counts["outcomes"].c.decision_run == r.c.decision_run)
             .order_by(r.c.decided_on.desc(), r.c.recorded_at.desc()))
        return self.read(q)

    def has_run(self, run: str) -> bool:
        with self.engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(decision_runs).where(decision_runs.c.decision_run == run)
            return bool(conn.execute(q).scalar())

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() or 0)
                    for t in (decision_runs, decisions, work_orders, outcomes)}

    # -- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self):  # -> Iterator[Connection]
        """One write transaction; a database failure (locked, full, unreachable) becomes a one-line StoreError."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            raise StoreError(f"decision store {self.display_url}: {first}; nothing was written",
                             hint="SQLite takes one writer at a time: run decide, ingest and report one after "
                                  "another") from None

    def insert_frame(self, conn: Connection, table: sa.Table, frame: pd.DataFrame) -> int:
        """Bulk insert `frame` (columns named like the table's; missing ones are NULL)."""
        cols = [c.key for c in table.c if c.key in frame.columns]
        for start in range(0, len(frame), INSERT_CHUNK):  # chunks keep the Python tuples' memory flat
            part = frame if len(frame) <= INSERT_CHUNK else frame.iloc[start:start + INSERT_CHUNK]
            self.insert_rows(conn, table, cols, store_tuples(part, cols))
        return len(frame)

    def insert_rows(self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple]) -> int:
        """Bulk insert rows already made of plain Python values (`store_tuples`), in `columns`' order."""
        if not rows:
            return 0
        if self.is_sqlite:  # the driver's executemany: SQLAlchemy's per-row parameter handling costs more
            sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
            conn.exec_driver_sql(sql, rows)
        else:
            conn.execute(table.insert(), [dict(zip(columns, r, strict=True)) for r in rows])
        return len(rows)

    def delete_keys(self, conn: Connection, table: sa.Table, keys: pd.DataFrame) -> None:
        """Delete rows of `table` whose (decision_run, subscriber_id) are in `keys`."""
        if len(keys) == 0:
            return
        rows = store_tuples(keys, ["decision_run", "subscriber_id"])
        if self.is_sqlite:
            conn.exec_driver_sql(f"DELETE FROM {table.name} WHERE decision_run = ? AND subscriber_id = ?", rows)
        else:
            stmt = table.delete().where(table.c.decision_run == sa.bindparam("r"),
                                        table.c.subscriber_id == sa.bindparam("s"))
            for start in range(0, len(rows), INSERT_CHUNK):
                conn.execute(stmt, [{"r": r, "s": s} for r, s in rows[start:start + INSERT_CHUNK]])

    def delete_run(self, conn: Connection, run: str) -> None:
        for table in (outcomes, work_orders, decisions, decision_runs):
            conn.execute(table.delete().where(table.c.decision_run == run))


def store_tuples(frame: pd.DataFrame, cols: Sequence[str]) -> list[tuple]:
    """Plain Python tuples (None for missing) column by column: ~10x faster than itertuples on wide frames."""
    return list(zip(*(_python_values(frame, c) for c in cols), strict=True))


def column_tuples(columns: Mapping[str, Any], names: Sequence[str], n: int) -> list[tuple]:
    """`store_tuples` of the frame `frame_of(columns)` would make (arrays of length n, scalars repeated),
    without making it: for the service's few-row runs, building the frame cost as much as reading it."""
    return list(zip(*(python_values(columns[c], n) for c in names), strict=True))


def _python_values(frame: pd.DataFrame, col: str) -> list[Any]:
    """One column as Python values, None for missing. Numpy columns are read from the frame's blocks (the
    service writes dozens of small frames a second, where a Series per column cost more than the insert)."""
    raw = block_values(frame, col)
    return python_values(raw if raw is not None else frame[col], len(frame))


def python_values(values: Any, n: int) -> list[Any]:
    """A column (an array, a Series, or a scalar repeated n times) as Python values, None for missing."""
    if np.ndim(values) == 0:
        values = np.full(n, values, dtype=object)
    kind = values.dtype.kind if isinstance(values, np.ndarray) else None
    if kind in ("b", "i", "u"):
        return values.tolist()
    if kind == "f":
        out = values.tolist()
        return [None if v != v else v for v in out] if np.isnan(values).any() else out
    if kind == "O":
        out, mask = values.tolist(), pd.isna(values)
        return [None if m else v for v, m in zip(out, mask, strict=True)] if mask.any() else out
    obj = pd.Series(values, copy=False).astype(object)  # extension arrays (nullable, categorical), dates: objects
    mask = pd.isna(obj).to_numpy()
    out = obj.to_numpy().tolist()
    return [None if m else v for v, m in zip(out, mask, strict=True)] if mask.any() else out


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def open_store(settings: Any = None, *, url: str | None = None, create: bool = True) -> Store | None:
    """Open (creating and migrating as needed) the decision store.

    With `create=False` a SQLite store whose file does not exist yet is not created: None is returned,
    so read-only callers (`retain policy validate`) leave no empty database behind.
    """
    resolved = store_url(settings, url)
    try:
        check_store_uri(resolved, "decision store URL", STORE_SCHEMES)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    path = sqlite_path(resolved)
    if path is not None:
        if not path.exists() and not create:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the decision store folder '{path.parent}': {exc.strerror}") from None
    store = Store(resolved, _engine(resolved))
    try:
        store.migrate()
    except sa.exc.OperationalError as exc:
        first = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
        raise StoreError(f"decision store {store.display_url} cannot be opened: {first}") from None
    return store


def describe() -> list[tuple[str, list[str]]]:
    """(table, columns) of the current schema, for documentation and `retain feedback store`."""
    return [(t.name, list(t.c.keys())) for t in (decision_runs, decisions, work_orders, outcomes)]
