"""Acting on decisions: contact lists per channel on disk, and the run's record in MLflow.

Why staged writes: a call centre picks up `work_orders/outbound_call.csv` as soon as it appears. All
files of a run are written to a staging folder and published together, so nobody ever reads a
half-written list, and a failed run leaves the previous run's files untouched.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.config import Settings
from engine.data.io import staged_outputs, write_json, write_table
from engine.decision.decide import Decisions
from engine.vocabulary import CHANNELS

DECISIONS_FILE = "decisions.parquet"
SUMMARY_FILE = "summary.json"
ORDERS_DIR = "work_orders"
DECISIONS_EXPERIMENT = "churn-decisions"


#: Rows converted to Arrow and written at a time: the Arrow copy of a million-row decisions table is
#: ~0.5 GiB; a slice at a time keeps the run's peak memory near the table's own.
PARQUET_CHUNK_ROWS = 100_000


def _write_decisions_table(table: pd.DataFrame, path: Path, chunk_rows: int = PARQUET_CHUNK_ROWS) -> None:
    """The decisions table as one Parquet file, converted and written a slice (row group) at a time.

    pyarrow directly, converting in this thread (pandas' threaded conversion only adds waiting on a busy
    machine); the staging folder already makes the set atomic. A text column empty in the first slice takes
    its type from the first value it has anywhere, so every slice has one schema.
    """
    first = pa.Table.from_pandas(table.iloc[:chunk_rows], preserve_index=False, nthreads=1)
    schema = first.schema
    for i, field in enumerate(schema):
        if pa.types.is_null(field.type):
            values = table[field.name].dropna()
            if len(values):
                schema = schema.set(i, field.with_type(pa.array(values.iloc[:1]).type))
    with pq.ParquetWriter(path, schema) as writer:
        writer.write_table(first.cast(schema), row_group_size=chunk_rows)
        del first
        for start in range(chunk_rows, len(table), chunk_rows):
            part = pa.Table.from_pandas(table.iloc[start:start + chunk_rows], schema=schema, preserve_index=False,
                                        nthreads=1)
            writer.write_table(part, row_group_size=chunk_rows)
            del part
            pa.default_memory_pool().release_unused()  # each slice's buffers back, not kept for reuse


def write_decisions(decisions: Decisions, out_dir: str | Path) -> dict[str, Path]:
    """Write decisions, one CSV per channel (header-only when a channel has no orders) and a summary."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    with staged_outputs(out) as stage, ThreadPoolExecutor(max_workers=1) as pool:
        # The table in a second thread beside the work orders: Parquet's encoding and compression run without
        # the GIL, so they take the second core while this thread formats the CSVs (~1 s of a million-row run).
        # Leaving the block waits for the thread, so the staging folder is never published or removed under it.
        table = pool.submit(_write_decisions_table, decisions.table, stage / DECISIONS_FILE)
        empty = next(iter(decisions.work_orders.values()), None)
        for channel in CHANNELS:
            orders = decisions.work_orders.get(channel)
            if orders is None:
                orders = empty.iloc[0:0] if empty is not None else None
            if orders is None:
                continue
            write_table(orders, stage / ORDERS_DIR / f"{channel}.csv")
            written[channel] = out / ORDERS_DIR / f"{channel}.csv"
        table.result()  # the thread's error, if any, is this call's
        written = {"decisions": out / DECISIONS_FILE, **written}
        write_json({**decisions.summary, "files": {k: str(v) for k, v in written.items()}}, stage / SUMMARY_FILE)
        written["summary"] = out / SUMMARY_FILE
    return written


def log_decision_run(settings: Settings, decisions: Decisions, files: dict[str, Path]) -> str:
    """Record the run in MLflow: counts, cost, model version and policy hash, so any decision is traceable."""
    import mlflow

    from engine.model.registry import connect, ensure_experiment

    connect(settings)
    experiment_id = ensure_experiment(settings, DECISIONS_EXPERIMENT)
    s = decisions.summary
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"decide-{decisions.run_id}") as run:
        mlflow.set_tags({"retain.kind": "decision", "retain.decision_run": decisions.run_id,
                         "retain.policy_hash": s["policy_hash"], "retain.model": s["model"],
                         "retain.model_version": str(s["model_version"])})
        mlflow.log_params({"policy_hash": s["policy_hash"], "model_version": s["model_version"],
                           "decided_on": s["decided_on"]})
        metrics = {k: s[k] for k in ("subscribers", "total_offer_cost", "total_channel_cost", "budget_used",
                                     "expected_saves", "expected_saved_value", "expected_net_value",
                                     "control_group", "mean_churn_probability")}
        metrics.update({f"grade_{k}": v for k, v in s["risk_grades"].items()})
        metrics.update({f"status_{k}": v for k, v in s["status"].items()})
        metrics.update({f"channel_{k}": v for k, v in s["offers_per_channel"].items()})
        mlflow.log_metrics(metrics)
        mlflow.log_dict(s, "summary.json")
        return run.info.run_id
