"""Deciding for HTTP requests: one thread calls the batch's decide function, a second records the results.

Why one deciding thread: deciding is CPU-bound Python (the GIL lets one thread run at a time anyway),
and one thread makes the day's allowance and contact history exact within a process: each decision sees
every earlier one. Requests that arrive while a decision is running are decided together in the next
call (micro-batching): `decide_frame` has a fixed cost per call (validation, feature frame, policy
evaluation) far above its cost per row, so under load this is what keeps throughput up. When fewer requests are
queued than were lately in flight at once, the call waits up to `BATCH_WAIT_SECONDS` for the rest: without
it, N busy clients split into two cohorts that take turns (each call decides half of them, and every
request waits for two calls); with it they are decided together. A lone client never waits. Threshold risk
grading is per row, so a subscriber's grade does not depend on who shares the call; the budget and
channel capacity left today are shared, as they are between any two decisions of the day.

Why record off the request path: a write to the store (SQLite fsync, a PostgreSQL round trip) would
otherwise sit inside every response. Decided runs are queued to a writer thread that turns each into the
store's rows as it arrives (~0.4 ms of CPU between decide calls, rather than one burst per flush that
stretched the calls it overlapped) and stores them, with the allowance they used and their contacts, in one
transaction every `flush_seconds`.
`close()` drains both queues: every decision answered is recorded before the process exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.data.frames import column_values, records_frame
from engine.data.schema import ID
from engine.decision.contact import SAME_DAY_REASON  # noqa: F401 - the reason the service shows, kept importable here
from engine.decision.decide import Decisions, RunState, decide_frame
from engine.decision.run import resolve_risk_grades
from engine.errors import DataError
from engine.feedback.store import Store, column_tuples, open_store
from engine.feedback.store import decision_runs as _runs_table
from engine.model.churn import PROBABILITY
from engine.serve.ledger import Ledger, RunSpend, contacts_of, spend_of
from engine.serve.state import ServingState

log = logging.getLogger("retain.serve")
_STOP = object()
CLAIM_ATTEMPTS = 3
#: Longest a decide call waits for more requests when fewer than usual are queued (see Decider._next_batch).
BATCH_WAIT_SECONDS = 0.004
#: How long a peak of requests in flight counts as "usual".
PEAK_SECONDS = 1.0
RUN_COLUMNS = [c.key for c in _runs_table.c]


def new_serve_run_id(now: dt.datetime | None = None) -> str:
    """Run ids unique across workers and busy seconds: 48 random bits (batch ids carry 24)."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}-srv-{uuid.uuid4().hex[:12]}"


@dataclass
class Job:
    """One request: its subscriber rows as records (one dict per row, as the request body gives them)."""

    records: list[dict[str, Any]]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def ids(self) -> set[str]:
        return {str(r.get(ID)) for r in self.records}


def batch_frame(jobs: list[Job]) -> pd.DataFrame:
    """One frame for the rows of every job in a decide call, built once from all their records.

    Why not a frame per request and a concat: building and concatenating one-row frames costs ~1 ms a
    request, and pandas warns on every concat of a one-row frame whose empty nullable number is None. The
    records give the same frame: columns in order of first appearance, types inferred over all rows
    (`records_frame`: pandas' constructor's frame, typed from the values' Python types).
    """
    return records_frame([r for job in jobs for r in job.records])


# ---------------------------------------------------------------------------------------------
# contact rules over the store's history
# ---------------------------------------------------------------------------------------------
def serving_settings(settings: Settings) -> Settings:
    """The settings the service decides with: the configured ones, with at most one contact a day per
    subscriber unless `contact.max_contacts_per_day` says otherwise, so a subscriber who comes back the same
    day (or is asked about twice) is not contacted twice ('already contacted today'); an inbound prompt can
    still be shown."""
    if settings.contact.max_contacts_per_day is not None:
        return settings
    return settings.model_copy(update={"contact": settings.contact.model_copy(update={"max_contacts_per_day": 1})})


def response_rows(table: pd.DataFrame, orders: dict[str, pd.DataFrame], run_id: str) -> list[dict[str, Any]]:
    """The public fields of each decision, in table order."""
    order_of: dict[str, str] = {}
    for o in orders.values():
        order_of.update(zip(map(str, column_values(o, ID, object).tolist()),
                            map(str, column_values(o, "order_id", object).tolist()), strict=True))
    ids = [str(s) for s in column_values(table, ID, object).tolist()]

    def col(name: str) -> list[Any]:
        return [None if v is None or (isinstance(v, float) and v != v) else v
                for v in column_values(table, name, object).tolist()]

    prob = np.round(column_values(table, PROBABILITY, float), 4).tolist()
    matched = [m.split(",") if m else [] for m in col("matched_rules")]
    version, policy_hash = col("model_version"), col("policy_hash")
    fields = {c: col(c) for c in ("risk_grade", "reason", "value_tier", "offer_id", "channel", "message", "status",
                                  "blocked_reason", "rule_id")}
    out = []
    for i, s in enumerate(ids):
        row = {"subscriber_id": s, "churn_probability": prob[i]}
        row.update({c: v[i] for c, v in fields.items()})
        row["blocked_reason"] = row["blocked_reason"] or ""
        row.update({"matched_rules": matched[i], "model_version": None if version[i] is None else str(version[i]),
                    "policy_hash": policy_hash[i], "decision_id": f"{run_id}/{s}", "decision_run": run_id,
                    "order_id": order_of.get(s)})
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------------------------
@dataclass
class RunRows:
    """One decided run as the store's rows, built by the writer thread as soon as the run is queued."""

    day: dt.date
    run_id: str
    items: dict[str, float]  # the allowance it used (see Ledger)
    run: tuple  # decision_runs
    decisions: list[tuple]
    orders: list[tuple]
    contacts: list[tuple]  # serve_contacts

    @property
    def spend(self) -> RunSpend:
        return (self.day, self.run_id, self.items, self.contacts)


def run_rows(decisions: Decisions, items: dict[str, float] | None = None,
             contacts: list[tuple] | None = None) -> RunRows:
    """A decided run as exactly the rows `engine.feedback.ingest.record_run` stores for it (the same builders:
    `stored_run`, `stored_decision_columns`, `stored_order_columns`), plus the allowance it used and its
    contacts for the ledger.

    Why a run at a time, as it is queued: built for many runs at once in the flush, the same work was one
    burst of ~15 ms of Python every flush interval, which stretched whichever decide calls it overlapped
    (most of the service's slowest percent of answers). A run at a time it is ~0.4 ms between decide calls.
    Why not `record_run` per run: it opens the store and commits once per run (~20 ms per one-subscriber run
    measured under load), and the service makes a run per decide call.
    """
    from engine.feedback.ingest import (
        DECISION_COLUMNS,
        ORDER_COLUMNS,
        offers_and_control,
        stored_decision_columns,
        stored_order_columns,
        stored_run,
    )

    table, run, n = decisions.table, decisions.run_id, len(decisions.table)
    cols = stored_decision_columns(table, run)
    offers, control = offers_and_control(cols)
    summary = stored_run(decisions.summary, run, decisions.run_date.isoformat(), subscribers=n,
                         offers=offers, control=control)
    orders = [row for ch, o in decisions.work_orders.items() if len(o)
              for row in column_tuples(stored_order_columns(o, run, channel=ch), ORDER_COLUMNS, len(o))]
    return RunRows(decisions.run_date, run, dict(items or {}), tuple(summary[c] for c in RUN_COLUMNS),
                   column_tuples(cols, DECISION_COLUMNS, n), orders,
                   list(contacts or []))


def record_runs(store: Store, conn: Any, runs: list[RunRows]) -> None:
    """Many decision runs' rows in the caller's transaction: the inserts only, their rows built already."""
    from engine.feedback.ingest import DECISION_COLUMNS, ORDER_COLUMNS
    from engine.feedback.store import decision_runs, decisions, work_orders

    store.insert_rows(conn, decision_runs, RUN_COLUMNS, [r.run for r in runs])
    store.insert_rows(conn, decisions, DECISION_COLUMNS, [row for r in runs for row in r.decisions])
    store.insert_rows(conn, work_orders, ORDER_COLUMNS, [row for r in runs for row in r.orders])


# ---------------------------------------------------------------------------------------------
# the writer (thread)
# ---------------------------------------------------------------------------------------------
class Recorder:
    """Background writer: decided runs -> decision store, in batches, drained on close."""

    def __init__(self, settings: Settings, ledger: Ledger, *, flush_seconds: float = 0.5,
                 store_url: str | None = None, on_written: Any = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.flush_seconds = flush_seconds
        self.store_url = store_url
        self.on_written = on_written
        self._queue: queue.Queue = queue.Queue()
        self._store: Store | None = None
        self._thread = threading.Thread(target=self._run, name="retain-recorder", daemon=True)
        self.written_runs = 0
        self.written_decisions = 0
        self.failures = 0
        self.unrecorded_runs = 0
        self.last_error: str | None = None
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def submit(self, decisions: Decisions, items: dict[str, float], contacts: list[tuple]) -> None:
        self._queue.put((decisions, items, contacts))

    def _rows(self, item: Any) -> RunRows | None:
        """A queued run's rows (built once: a run queued again after a failed write has them already)."""
        if isinstance(item, RunRows):
            return item
        decisions, items, contacts = item
        try:
            return run_rows(decisions, items, contacts)
        except Exception as exc:  # noqa: BLE001 - a run that cannot become rows must not stop the writer
            self.unrecorded_runs += 1  # (on /readyz; retrying the same run would fail the same way)
            log.exception("decision run %s could not be recorded: %s", decisions.run_id, str(exc).splitlines()[0])
            return None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[RunRows] = []
            try:
                first = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                self._refresh()
                continue
            deadline = time.monotonic() + self.flush_seconds
            item = first
            while True:
                if item is _STOP:
                    stopping = True
                    break
                rows = self._rows(item)
                if rows is not None:
                    batch.append(rows)
                try:  # gather what arrives within one flush interval: one write for many requests
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if stopping:  # drain whatever is still queued behind the stop marker
                while True:
                    try:
                        extra = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if extra is not _STOP and (rows := self._rows(extra)) is not None:
                        batch.append(rows)
            if batch:
                self._write(batch, retries=5 if stopping else 3)

    def _refresh(self) -> None:
        try:
            self.ledger.refresh(dt.date.today())
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not kill the writer
            self.last_error = str(exc).splitlines()[0]

    def _write(self, batch: list[RunRows], retries: int) -> None:
        runs = [r.spend for r in batch]
        for attempt in range(retries + 1):
            try:
                if self._store is None:  # opened (and migrated) once, again after a failure
                    self._store = open_store(self.settings, url=self.store_url)
                store = self._store
                assert store is not None
                with store.transaction() as conn:
                    record_runs(store, conn, batch)
                    self.ledger.write(conn, runs)
                self.ledger.written(runs)
                self._refresh()  # other workers' spending, also when a steady load never leaves the queue empty
                self.written_runs += len(batch)
                self.written_decisions += sum(len(r.decisions) for r in batch)
                self.last_error = None
                if self.on_written:
                    self.on_written(len(batch))
                return
            except Exception as exc:  # noqa: BLE001 - keep the runs and retry; never lose them silently
                self._store = None
                self.failures += 1
                self.last_error = str(exc).splitlines()[0]
                log.error("recording %d decision run(s) failed (attempt %d): %s", len(batch), attempt + 1,
                          self.last_error)
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        for rows in batch:  # still failing: keep them queued for the next flush
            self._queue.put(rows)

    def close(self, timeout: float = 60.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)
        if self._queue.qsize():
            log.error("%d decision run(s) could not be recorded before shutdown: %s", self._queue.qsize(),
                      self.last_error)


# ---------------------------------------------------------------------------------------------
# the decider
# ---------------------------------------------------------------------------------------------
class Decider:
    """One thread deciding queued requests, micro-batched, through `decide_frame`."""

    def __init__(self, state: ServingState, ledger: Ledger, recorder: Recorder, *,
                 max_batch_rows: int = 256, shared: bool = False, on_batch: Any = None,
                 batch_wait_seconds: float = BATCH_WAIT_SECONDS) -> None:
        self.state = state
        self.shared = shared  # several worker processes: claim the allowance in the store per call
        self.ledger = ledger
        self.recorder = recorder
        self.max_batch_rows = max_batch_rows
        self.batch_wait_seconds = batch_wait_seconds
        self.on_batch = on_batch
        self._lock = threading.Lock()
        self._outstanding = 0  # requests submitted and not answered yet
        self._peak, self._peak_at = 0, 0.0  # the most outstanding at once lately (see _next_batch)
        self._settings: Settings | None = None
        self._settings_of: Settings | None = None
        self._queue: queue.Queue = queue.Queue()
        self._carry: deque[Job] = deque()
        self._thread = threading.Thread(target=self._run, name="retain-decider", daemon=True)
        self._thread.start()

    def submit(self, records: list[dict[str, Any]] | pd.DataFrame) -> Future:
        """Queue one request's subscribers (records, or a frame of them); the future gets their decisions."""
        if isinstance(records, pd.DataFrame):
            records = records.to_dict("records")
        job = Job(records)
        now = time.monotonic()
        with self._lock:
            self._outstanding += 1
            if self._outstanding >= self._peak or now - self._peak_at > PEAK_SECONDS:
                self._peak, self._peak_at = self._outstanding, now
        job.future.add_done_callback(self._answered)
        self._queue.put(job)
        return job.future

    def _answered(self, _future: Future) -> None:
        with self._lock:
            self._outstanding -= 1

    def _expected(self) -> int:
        """How many requests are usually in flight at once now: the recent peak of outstanding requests."""
        with self._lock:
            return self._peak if time.monotonic() - self._peak_at <= PEAK_SECONDS else self._outstanding

    def _next_batch(self) -> list[Job] | None:
        first = self._carry.popleft() if self._carry else self._queue.get()
        if first is _STOP:
            return None
        batch, rows, ids = [first], len(first.records), first.ids
        carried: list[Job] = []
        expected = self._expected()
        deadline = time.monotonic() + self.batch_wait_seconds
        while rows < self.max_batch_rows:
            if self._carry:
                job = self._carry.popleft()
            else:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    # Fewer requests than usually in flight: the clients just answered are about to send
                    # their next ones; wait a moment for them rather than decide half of them now.
                    left = deadline - time.monotonic()
                    if len(batch) + len(carried) >= expected or left <= 0:
                        break
                    try:
                        job = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
            if job is _STOP:
                carried.append(job)
                break
            j_ids = job.ids
            if rows + len(job.records) > self.max_batch_rows or ids & j_ids:  # one subscriber once per call
                carried.append(job)
                if rows + len(job.records) > self.max_batch_rows:
                    break
                continue
            batch.append(job)
            rows += len(job.records)
            ids |= j_ids
        self._carry.extendleft(reversed(carried))
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._decide(batch)

    def _decide(self, batch: list[Job]) -> None:
        try:
            self._decide_together(batch)
        except DataError as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for job in batch:  # find whose rows were bad: decide each request alone
                self._decide(batch=[job])
        except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
            log.exception("decision failed")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)

    def _decide_together(self, batch: list[Job]) -> None:
        t0 = time.perf_counter()
        bundle = self.state.bundle
        assert bundle is not None
        if self._settings_of is not self.state.settings:
            self._settings, self._settings_of = serving_settings(self.state.settings), self.state.settings
        settings = resolve_risk_grades(self._settings, bundle.loaded)  # risk_grades.mode emp: the model's
        today = dt.date.today()
        frame = batch_frame(batch)
        ids = column_values(frame, ID, object)  # (history turns them into text)
        lookback = max(30, settings.contact.cooldown_days_after_decline)
        history = self.ledger.history(ids, today, lookback)
        t1 = time.perf_counter()
        claimed = False  # if every claim failed (store down), the writer records the spending later
        for attempt in range(CLAIM_ATTEMPTS + 1):
            budget, capacity = self.ledger.left(today)
            if attempt == CLAIM_ATTEMPTS:  # still losing races: decide with no limited allowance at all
                budget = None if budget is None else 0.0
                capacity = {ch: None if c is None else 0 for ch, c in capacity.items()}
            run_id = new_serve_run_id()
            # Today's allowance left, and grading by the configured thresholds: with capacity grading
            # configured, a request's own rows must not set the cut-offs (a lone subscriber would be "high").
            state = RunState(run_id=run_id, budget_left=budget, capacity_left=dict(capacity),
                             control=settings.control_group,
                             risk_cutoffs=(settings.risk_grades.high, settings.risk_grades.medium))
            decisions = decide_frame(frame, loaded=bundle.loaded, policy_engine=bundle.policy_engine,
                                     settings=settings, run_id=run_id, run_date=today, source="request",
                                     history=history, learned=bundle.learned, state=state,
                                     uplift=getattr(bundle, "uplift", None))
            items = spend_of(state)
            contacts = contacts_of(run_id, today, decisions.work_orders)
            if not self.shared or not items:
                break
            if self.ledger.claim(today, items, contacts):
                claimed = True
                break
            self.ledger.refresh(today)  # another worker took part of what was left: look again
        t2 = time.perf_counter()
        table = decisions.table
        decisions.summary["input"] = "retain serve"
        if claimed:  # taken from the allowance and logged in the store already
            items, contacts = {}, []
        self.ledger.spend(today, items, run_id, contacts)
        rows = response_rows(table, decisions.work_orders, run_id)
        start = 0
        for job in batch:
            n = len(job.records)
            job.future.set_result(rows[start:start + n])
            start += n
        self.recorder.submit(decisions, items, contacts)  # after the answers: the writer's work wakes after them
        if self.on_batch:
            t3 = time.perf_counter()
            self.on_batch(len(batch), dict(Counter(column_values(table, "status", object).tolist())),
                          {"state": t1 - t0, "decide": t2 - t1, "answer": t3 - t2, "wait": t0 - batch[0].enqueued})

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)
