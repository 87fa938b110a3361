"""Feedback: decision runs into the store, and contact outcomes back in, validated and idempotent.

Why keyed on (decision_run, subscriber_id): outcomes arrive in pieces (the call centre's file after a
week, churn flags after 30, 60 and 90 days) and files get re-sent. Every outcome row lands on the one
decision it answers; sending a file again finds every row unchanged and writes nothing, sending a later
file with the 90-day flags filled in updates those rows only.

An outcome file (.csv or .parquet) names each decision by ``order_id`` (from the work order) or by
``subscriber_id`` + ``decision_run`` (control subscribers and those not targeted have no order), and
carries:

| column | required | values |
|---|---|---|
| contacted | yes | yes/no (also true/false, 1/0, y/n, t/f; `engine.data.flags`); empty = not known yet |
| accepted | yes | yes/no; yes needs contacted = yes |
| churned_30d | yes | yes/no: left within 30 days of the decision |
| churned_60d, churned_90d | no | yes/no; once churned, stays churned |
| revenue_after | no | revenue in the 90 days after the decision (>= 0) |

Rows whose order or subscriber the store does not know are never stored and never dropped silently:
`IngestResult.unknown` holds them with the problem, the CLI prints the count and examples (and can
write them to a file, or refuse the whole file with ``--strict``). A ``decision_run`` the store does not
know at all refuses the file: it is the wrong store or a run that was never recorded.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from engine.config import Settings
from engine.data.flags import parse_flags
from engine.data.frames import column_values, frame_of
from engine.data.io import failpoint, read_table, restore_formulas
from engine.errors import DataError
from engine.feedback.store import (
    OUTCOME_FLAGS,
    OUTCOME_VALUES,
    Store,
    now_iso,
    open_store,
)
from engine.feedback.store import decision_runs as runs_table
from engine.feedback.store import decisions as decisions_table
from engine.feedback.store import outcomes as outcomes_table
from engine.feedback.store import work_orders as orders_table

REQUIRED_OUTCOME_COLUMNS = ("contacted", "accepted", "churned_30d")
OPTIONAL_OUTCOME_COLUMNS = ("churned_60d", "churned_90d", "revenue_after")
DECISION_COLUMNS = [c.key for c in decisions_table.c]
ORDER_COLUMNS = [c.key for c in orders_table.c]


# ---------------------------------------------------------------------------------------------
# recording decision runs
# ---------------------------------------------------------------------------------------------
@dataclass
class RecordResult:
    decision_run: str
    decisions: int
    work_orders: int
    recorded: bool  # False when the run was already in the store (nothing written)
    store: str

    @property
    def one_line(self) -> str:
        if not self.recorded:
            return f"run {self.decision_run} is already in the decision store ({self.store}); nothing written"
        return (f"recorded run {self.decision_run}: {self.decisions:,} decisions, {self.work_orders:,} work orders "
                f"-> {self.store}")


def _orders_frame(orders: Mapping[str, pd.DataFrame] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(orders, pd.DataFrame):
        return orders
    parts = [df.assign(channel=ch) for ch, df in orders.items() if len(df)]
    if not parts:
        return pd.DataFrame(columns=["order_id", "subscriber_id", "channel", "offer_id", "rule_id", "priority",
                                     "due_date"])
    return pd.concat(parts, ignore_index=True)


def record_run(settings: Settings, table: pd.DataFrame, summary: Mapping[str, Any], *,
               work_orders: Mapping[str, pd.DataFrame] | pd.DataFrame, url: str | None = None,
               replace: bool = False) -> RecordResult:
    """Store one decision run: its summary, one key row per subscriber, and its work orders.

    `table` is `Decisions.table`, `summary` is `Decisions.summary` (with "input" when known),
    `work_orders` is `Decisions.work_orders` (channel -> orders) or one frame with a channel column: the
    orders that were published, never rebuilt here (the store records what was sent, not a recomputation).
    Recording a run that is already stored writes nothing (returns recorded=False), so recording twice
    is harmless; `replace` deletes the stored run (its outcomes too) and records it again.
    """
    _require_decision_columns(table)
    run = str(summary.get("decision_run") or (table["decision_run"].iloc[0] if "decision_run" in table else ""))
    summary = {**summary, "decision_run": run}
    if "decided_on" not in summary:
        summary["decided_on"] = str(table.get("decided_on", pd.Series([dt.date.today()])).iloc[0])
    return record_run_parts(settings, summary, [table], [_orders_frame(work_orders)], url=url, replace=replace)


def record_run_parts(settings: Settings, summary: Mapping[str, Any], tables: Iterable[pd.DataFrame],
                     orders: Iterable[pd.DataFrame], *, url: str | None = None,
                     replace: bool = False) -> RecordResult:
    """`record_run` for a run read in parts (a Spark run's Parquet dataset, batch by batch): one transaction,
    the whole run or nothing, never the whole table in memory at once."""
    run = str(summary.get("decision_run") or "")
    if not run:
        raise DataError("decision run has no id (summary['decision_run'] is missing)")
    decided_on = str(summary.get("decided_on") or dt.date.today())
    store = open_store(settings, url=url)
    assert store is not None
    if store.has_run(run) and not replace:
        return RecordResult(run, 0, 0, False, store.display_url)
    n = offers = control = n_orders = 0
    with store.transaction() as conn:
        if replace:
            store.delete_run(conn, run)
        # first: decisions and orders refer to it
        store.insert_frame(conn, runs_table, pd.DataFrame([stored_run(summary, run, decided_on)]))
        for table in tables:
            _require_decision_columns(table)
            cols = stored_decision_columns(table, run)
            store.insert_frame(conn, decisions_table, frame_of(cols, pd.RangeIndex(len(table))))
            n += len(table)
            run_offers, run_control = offers_and_control(cols)
            offers += run_offers
            control += run_control
        for part in orders:
            store.insert_frame(conn, orders_table, stored_orders(part, run))
            n_orders += len(part)
        conn.execute(sa.update(runs_table).where(runs_table.c.decision_run == run)
                     .values(subscribers=n, offers=offers, control=control))
    return RecordResult(run, n, n_orders, True, store.display_url)


def _require_decision_columns(table: pd.DataFrame) -> None:
    missing = [c for c in ("subscriber_id", "status", "control") if c not in table.columns]
    if missing:
        raise DataError(f"decision table lacks column(s) {', '.join(missing)}; is it a retain decisions table?")


def stored_run(summary: Mapping[str, Any], run: str, decided_on: str, *, subscribers: int = 0,
               offers: int = 0, control: int = 0) -> dict[str, Any]:
    """The store's `decision_runs` row of a run (`summary`: `Decisions.summary`, kept whole as JSON)."""
    version = summary.get("model_version")
    return {"decision_run": run, "decided_on": decided_on[:10], "recorded_at": now_iso(),
            "input": summary.get("input"), "model": summary.get("model"),
            "model_version": None if version is None else str(version), "policy_hash": summary.get("policy_hash"),
            "subscribers": subscribers, "offers": offers, "control": control,
            "summary": json.dumps(dict(summary), default=str)}


def stored_decision_columns(table: pd.DataFrame, run: str) -> dict[str, Any]:
    """The store's `decisions` columns (arrays; scalars for a whole column) of a run's decision table; a
    subscriber appears at most once per run. Arrays, not a frame: the service turns a few subscribers' into
    rows for every decide call, where building a frame costs as much as reading it back."""
    ids = np.asarray(column_values(table, "subscriber_id"), dtype=str).astype(object)
    cols: dict[str, Any] = {"decision_run": run, "subscriber_id": ids}
    for col in DECISION_COLUMNS[2:]:
        if col == "arpu":
            cols[col] = column_values(table, "arpu_m0", float) if "arpu_m0" in table else np.full(len(ids), np.nan)
        elif col == "control":
            cols[col] = np.asarray(column_values(table, col), dtype=bool)
        elif col in table.columns:
            cols[col] = column_values(table, col)
        else:
            cols[col] = None
    seen = pd.Index(ids)
    if seen.has_duplicates:
        raise DataError(f"decision table has duplicate subscriber_id (e.g. '{ids[seen.duplicated()][0]}')")
    return cols


def offers_and_control(columns: Mapping[str, Any]) -> tuple[int, int]:
    """A run's offers and control subscribers (its `decision_runs` counts), from the columns
    `stored_decision_columns` gives: one place for both writers of runs (`record_run`, the HTTP service)."""
    status = np.asarray(columns["status"], dtype=object)
    return int((status == "offer").sum()), int(np.count_nonzero(columns["control"]))


def stored_orders(part: pd.DataFrame, run: str) -> pd.DataFrame:
    """The store's `work_orders` rows of a run's published orders (`stored_order_columns` as a frame)."""
    return frame_of(stored_order_columns(part, run), pd.RangeIndex(len(part)))


def stored_order_columns(part: pd.DataFrame, run: str, channel: str | None = None) -> dict[str, Any]:
    """The store's `work_orders` columns of a run's published orders; `channel` for one channel's orders
    (which have no channel column of their own). Dates are stored as their first ten characters."""
    cols: dict[str, Any] = {}
    for col in ORDER_COLUMNS:
        if col == "decision_run":
            cols[col] = run
        elif col == "channel" and channel is not None:
            cols[col] = channel
        elif col == "due_date":
            due = column_values(part, col)
            cols[col] = (np.array([str(v)[:10] for v in due.tolist()], dtype=object) if due.dtype == object
                         else part[col].astype(str).str[:10].to_numpy(dtype=object))
        elif col in part.columns:
            cols[col] = column_values(part, col)
        elif col in ("offer_id", "rule_id", "priority"):
            cols[col] = None
        else:
            raise DataError(f"work orders lack column '{col}'")
    return cols


def record_run_dir(settings: Settings, decisions_dir: str | Path, *, url: str | None = None,
                   replace: bool = False) -> RecordResult:
    """Record a published decisions folder (decisions.parquet, summary.json, work_orders/*.csv)."""
    folder = Path(decisions_dir)
    table = read_table(folder / "decisions.parquet", what="decisions")
    summary = _read_summary(folder)
    orders_dir = folder / "work_orders"
    orders = {}
    for f in sorted(orders_dir.glob("*.csv")) if orders_dir.is_dir() else ():
        orders[f.stem] = restore_formulas(
            pd.read_csv(f, dtype={"order_id": str, "subscriber_id": str, "offer_id": str, "rule_id": str}))
    return record_run(settings, table, summary, work_orders=orders, url=url, replace=replace)


def _read_summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.exists():
        raise DataError(f"'{folder}' has no summary.json; is it a decisions folder written by `retain decide`?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"'{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None


# ---------------------------------------------------------------------------------------------
# outcome files
# ---------------------------------------------------------------------------------------------
def _bad(source: str, column: str, values: pd.Series, mask: pd.Series, problem: str) -> None:
    rows = np.flatnonzero(mask.to_numpy(dtype=bool))
    first = int(rows[0])
    n = len(rows)
    more = f" ({n:,} rows)" if n > 1 else ""
    value = values.iloc[first]
    value = value.item() if isinstance(value, np.generic) else value
    raise DataError(f"{source}: column '{column}' row {first + 2}: {value!r} {problem}{more}",
                    hint="row numbers count the header as row 1")


def read_outcomes(path: str | Path) -> pd.DataFrame:
    """Read and validate an outcome file into: order_id, decision_run, subscriber_id, outcome values, row.

    Raises one-line DataErrors naming the column and problem (row numbers as in a spreadsheet).
    """
    source = f"outcomes '{path}'"
    raw = read_table(path, what="outcome file")
    raw.columns = [str(c).strip() for c in raw.columns]
    has_order = "order_id" in raw.columns
    has_pair = {"subscriber_id", "decision_run"} <= set(raw.columns)
    if not has_order and not has_pair:
        raise DataError(f"{source}: missing column 'order_id' (or both 'subscriber_id' and 'decision_run')",
                        hint="name each decision by its work order id, or by subscriber and decision run")
    missing = [c for c in REQUIRED_OUTCOME_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}",
                        hint=f"required: {', '.join(REQUIRED_OUTCOME_COLUMNS)}; optional: "
                             f"{', '.join(OPTIONAL_OUTCOME_COLUMNS)}")

    def ids(col: str) -> pd.Series:
        if col not in raw.columns:
            return pd.Series(None, index=raw.index, dtype=object)
        s = raw[col]
        if pd.api.types.is_float_dtype(s.dtype):  # ids read from CSV as numbers: 12.0 -> '12'
            s = s.astype("Int64") if (s.dropna() % 1 == 0).all() else s
        text = s.astype("string").str.strip()
        text = text.mask(text == "")
        return text.astype(object).where(text.notna(), None)

    out = pd.DataFrame({"order_id": ids("order_id"), "decision_run": ids("decision_run"),
                        "subscriber_id": ids("subscriber_id")})
    keyless = out["order_id"].isna() & (out["decision_run"].isna() | out["subscriber_id"].isna())
    if keyless.any():
        first = int(np.flatnonzero(keyless.to_numpy())[0])
        raise DataError(f"{source}: row {first + 2}: no order_id and no subscriber_id + decision_run "
                        f"({int(keyless.sum()):,} rows)", hint="every outcome must name the decision it answers")
    for col in OUTCOME_FLAGS:
        out[col] = parse_flags(raw[col], col, source) if col in raw.columns else pd.Series(pd.NA, index=raw.index,
                                                                                       dtype="boolean")
    if "revenue_after" in raw.columns:
        rev = pd.to_numeric(raw["revenue_after"], errors="coerce")
        bad = rev.isna() & raw["revenue_after"].notna() & (raw["revenue_after"].astype(str).str.strip() != "")
        if bad.any():
            _bad(source, "revenue_after", raw["revenue_after"], bad, "is not a number")
        if (~np.isfinite(rev.fillna(0.0))).any():  # inf would turn every sum in the report into nothing
            _bad(source, "revenue_after", raw["revenue_after"], ~np.isfinite(rev.fillna(0.0)), "is not a finite amount")
        if (rev < 0).any():
            _bad(source, "revenue_after", raw["revenue_after"], rev < 0, "is negative")
        out["revenue_after"] = rev.astype(float)
    else:
        out["revenue_after"] = np.nan

    checks = (
        (out["accepted"].fillna(False) & ~out["contacted"].fillna(False), "accepted",
         "accepted is yes but contacted is not yes"),
        (out["churned_30d"].fillna(False) & (out["churned_60d"] == False), "churned_60d",  # noqa: E712
         "is no but churned_30d is yes (churn by 30 days means churn by 60)"),
        (out["churned_60d"].fillna(False) & (out["churned_90d"] == False), "churned_90d",  # noqa: E712
         "is no but churned_60d is yes"),
        (out["churned_30d"].fillna(False) & (out["churned_90d"] == False), "churned_90d",  # noqa: E712
         "is no but churned_30d is yes"),
    )
    for mask, col, problem in checks:
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            first = int(np.flatnonzero(mask.to_numpy())[0])
            raise DataError(f"{source}: column '{col}' row {first + 2}: {problem} ({int(mask.sum()):,} rows)")
    out["row"] = np.arange(2, len(out) + 2)
    return out


# ---------------------------------------------------------------------------------------------
# ingesting outcomes
# ---------------------------------------------------------------------------------------------
@dataclass
class IngestResult:
    """What an ingest did. `unknown` holds rows not stored, with a `problem` column."""

    file: str
    rows: int
    inserted: int
    updated: int
    unchanged: int
    unknown: pd.DataFrame
    runs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    store: str = ""

    @property
    def stored(self) -> int:
        return self.inserted + self.updated + self.unchanged

    @property
    def not_stored(self) -> int:
        """Rows naming an unknown order or subscriber (an unknown order id with a known subscriber is stored)."""
        return int((~self.unknown["stored"].astype(bool)).sum()) if len(self.unknown) else 0

    def unknown_examples(self, n: int = 5) -> list[str]:
        out = []
        for _, r in self.unknown.head(n).iterrows():
            key = (f"order {r['order_id']}" if isinstance(r["order_id"], str)
                   else f"subscriber {r['subscriber_id']} of run {r['decision_run']}")
            out.append(f"row {r['row']}: {key}: {r['problem']}")
        return out

    @property
    def one_line(self) -> str:
        text = (f"{self.file}: {self.rows:,} outcome rows: {self.inserted:,} new, {self.updated:,} updated, "
                f"{self.unchanged:,} unchanged")
        if self.not_stored:
            text += f"; {self.not_stored:,} unknown (not stored)"
        if len(self.unknown) > self.not_stored:
            text += f"; {len(self.unknown) - self.not_stored:,} with an unknown order id stored under subscriber + run"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "inserted": self.inserted, "updated": self.updated,
                "unchanged": self.unchanged, "unknown": len(self.unknown), "not_stored": self.not_stored,
                "unknown_examples": self.unknown_examples(),
                "runs": self.runs, "warnings": self.warnings, "store": self.store}


def _resolve(store: Store, rows: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach decision_run/subscriber_id/status to every row; split into (known, unknown with problem)."""
    rows = rows.copy()
    rows["problem"] = None
    by_order = rows["order_id"].notna()
    if by_order.any():
        found = store.read_in(orders_table, "order_id", rows.loc[by_order, "order_id"],
                              ["order_id", "decision_run", "subscriber_id"])
        found = found.rename(columns={"decision_run": "o_run", "subscriber_id": "o_sub"})
        rows = rows.merge(found, on="order_id", how="left")
        known_order = rows["o_run"].notna()
        unknown_order = by_order & ~known_order
        rows.loc[unknown_order & rows["decision_run"].isna(), "problem"] = "unknown order id"
        clash = known_order & ((rows["decision_run"].notna() & (rows["decision_run"] != rows["o_run"]))
                               | (rows["subscriber_id"].notna() & (rows["subscriber_id"] != rows["o_sub"])))
        rows.loc[clash, "problem"] = ("order belongs to subscriber " + rows.loc[clash, "o_sub"].astype(str)
                                      + " of run " + rows.loc[clash, "o_run"].astype(str))
        rows.loc[known_order, "decision_run"] = rows.loc[known_order, "o_run"]
        rows.loc[known_order, "subscriber_id"] = rows.loc[known_order, "o_sub"]
        rows.loc[unknown_order & rows["decision_run"].notna(), "order_id"] = None  # fall back to subscriber + run
        rows.loc[unknown_order & rows["decision_run"].notna(), "problem"] = "unknown order id"
        rows = rows.drop(columns=["o_run", "o_sub"])

    named_runs = sorted(set(rows.loc[rows["decision_run"].notna(), "decision_run"]))
    stored_runs = set(store.read_in(runs_table, "decision_run", named_runs, ["decision_run"])["decision_run"])
    missing = [r for r in named_runs if r not in stored_runs]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"{source}: column 'decision_run': run '{missing[0]}'{more} is not in the decision store "
                        f"({store.display_url})",
                        hint="record the run first (`retain feedback record DIR`), or point --store at the "
                             "store that holds it; see `retain feedback runs`")

    known_dec = store.read_in(decisions_table, "decision_run", named_runs, ["decision_run", "subscriber_id", "status"])
    orders = store.read_in(orders_table, "decision_run", named_runs, ["decision_run", "subscriber_id", "order_id"])
    orders = orders.rename(columns={"order_id": "known_order"})
    rows = rows.merge(known_dec, on=["decision_run", "subscriber_id"], how="left")
    rows = rows.merge(orders, on=["decision_run", "subscriber_id"], how="left")
    no_decision = rows["problem"].isna() & rows["status"].isna()
    rows.loc[no_decision, "problem"] = "subscriber not in this decision run"
    # An order id that names another decision is a problem; an unknown one with a valid run + subscriber is
    # reported, and the row is still stored under its subscriber (and the order id the store knows).
    fell_back = rows["problem"] == "unknown order id"
    fallback_ok = fell_back & rows["status"].notna()
    unknown = rows[rows["problem"].notna() & ~fallback_ok].copy()
    known = rows[rows["problem"].isna() | fallback_ok].copy()
    known["order_id"] = known["known_order"]
    reported = rows[fallback_ok].copy()
    reported["problem"] = "unknown order id (stored under its subscriber and run)"
    unknown["stored"], reported["stored"] = False, True
    return known.drop(columns=["known_order", "problem"]), pd.concat([unknown, reported], ignore_index=True)


def _as_float(s: pd.Series) -> np.ndarray:
    """Booleans and numbers as floats, missing as NaN (vectorised: no Python loop over rows)."""
    if isinstance(s.dtype, pd.BooleanDtype):
        return s.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Element-wise equality where missing == missing."""
    x, y = _as_float(a), _as_float(b)
    both_missing = np.isnan(x) & np.isnan(y)
    with np.errstate(invalid="ignore"):
        close = np.isclose(x, y, rtol=1e-9, atol=1e-9)
    return close | both_missing


def ingest(settings: Settings, file: str | Path, *, url: str | None = None, strict: bool = False) -> IngestResult:
    """Validate an outcome file and upsert it into the store, keyed on (decision_run, subscriber_id).

    Idempotent: rows equal to what is stored are counted as unchanged and not written. Rows that name
    an unknown order or subscriber are returned in `unknown` (with `strict`, they refuse the whole file).
    """
    source = f"outcomes '{file}'"
    parsed = read_outcomes(file)
    store = open_store(settings, url=url)
    assert store is not None
    known, unknown = _resolve(store, parsed, source)
    if strict and len(unknown):
        first = unknown.iloc[0]
        raise DataError(f"{source}: {len(unknown):,} row(s) name unknown orders or subscribers (row {first['row']}: "
                        f"{first['problem']}); nothing stored", hint="drop --strict to store the known rows")
    dup = known.duplicated(["decision_run", "subscriber_id"], keep=False)
    if dup.any():
        d = known[dup].sort_values("row")
        raise DataError(f"{source}: rows {d['row'].iloc[0]} and {d['row'].iloc[1]} are both outcomes of subscriber "
                        f"{d['subscriber_id'].iloc[0]} in run {d['decision_run'].iloc[0]}",
                        hint="send one row per decision (re-sending later with more columns filled in is fine)")

    warnings = []
    control_contacted = (known["status"] == "control") & known["contacted"].fillna(False).astype(bool)
    if control_contacted.any():
        warnings.append(f"{int(control_contacted.sum()):,} control-group subscriber(s) reported as contacted: the "
                        "control group must not be contacted; they still count as control (intention to treat)")
    untargeted = ~known["status"].isin(["offer", "control"]) & known["contacted"].fillna(False).astype(bool)
    if untargeted.any():
        warnings.append(f"{int(untargeted.sum()):,} subscriber(s) without an offer reported as contacted")

    runs = sorted(set(known["decision_run"]))
    existing = store.read_in(outcomes_table, "decision_run", runs, ["decision_run", "subscriber_id", *OUTCOME_VALUES])
    merged = known.merge(existing, on=["decision_run", "subscriber_id"], how="left", suffixes=("", "_old"),
                         indicator=True)
    is_new = (merged["_merge"] == "left_only").to_numpy()
    same = np.ones(len(merged), dtype=bool)
    for col in OUTCOME_VALUES:
        old = merged[f"{col}_old"]
        # A file adds or corrects what it carries; what it leaves out (a 30-day file has no 90-day flag)
        # keeps its stored value instead of erasing it.
        old_typed = old.astype("boolean") if col in OUTCOME_FLAGS else old.astype(float)
        merged[col] = merged[col].where(merged[col].notna(), old_typed)
        same &= _same(merged[col], old.astype("boolean") if col in OUTCOME_FLAGS else old.astype(float))
    changed = ~is_new & ~same
    write = merged[is_new | changed].copy()
    write["source"] = Path(file).name
    write["ingested_at"] = now_iso()  # (nullable flags go as they are: the store writes a missing one as NULL)
    with store.transaction() as conn:
        store.delete_keys(conn, outcomes_table, merged.loc[changed, ["decision_run", "subscriber_id"]])
        failpoint("ingest:in-transaction")
        store.insert_frame(conn, outcomes_table, write)
    cols = ["row", "order_id", "decision_run", "subscriber_id", "problem", "stored"]
    return IngestResult(file=str(file), rows=len(parsed), inserted=int(is_new.sum()), updated=int(changed.sum()),
                        unchanged=int((~is_new & same).sum()), unknown=unknown[cols].reset_index(drop=True),
                        runs=runs, warnings=warnings, store=store.display_url)


def stored_outcomes(settings: Settings, run: str | None = None, *, url: str | None = None) -> pd.DataFrame:
    """Decisions joined with their outcomes (outcome columns empty where none arrived yet)."""
    store = open_store(settings, url=url)
    assert store is not None
    d, o, w = decisions_table, outcomes_table, orders_table
    joined = (d.outerjoin(o, sa.and_(o.c.decision_run == d.c.decision_run, o.c.subscriber_id == d.c.subscriber_id))
              .outerjoin(w, sa.and_(w.c.decision_run == d.c.decision_run, w.c.subscriber_id == d.c.subscriber_id)))
    q = sa.select(*d.c, w.c.order_id, w.c.due_date, *[o.c[c] for c in OUTCOME_VALUES],
                  o.c.decision_run.is_not(None).label("has_outcome")).select_from(joined)
    if run is not None:
        q = q.where(d.c.decision_run == run)
    return store.read(q)
