"""Recording a Spark run in the decision store, so outcomes can be ingested against it like a local run.

Why from the staged files and batch by batch: the decisions of tens of millions of subscribers never fit
one pandas frame on the driver. The staged Parquet dataset is read a record batch at a time (only the
columns the store keeps), the staged work-order CSVs a block at a time, and everything goes into the store
in one transaction through `engine.feedback.ingest.record_run_parts`, the local run's own rows. Paths are
read with Arrow's file systems (local, `file://`, `s3://`, `hdfs://`: what pyarrow can open).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from engine.config import Settings
from engine.data.io import restore_formulas
from engine.errors import DataError
from engine.feedback.ingest import DECISION_COLUMNS, ORDER_COLUMNS, RecordResult, record_run_parts

BATCH_ROWS = 250_000
ORDER_TEXT = ("order_id", "subscriber_id", "offer_id", "rule_id", "due_date")


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(path if "://" in path else f"file://{path}")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"cannot record the Spark run: '{path}' cannot be opened here ({str(exc).splitlines()[0]})",
                        hint="decide with --no-record, then `retain feedback record` the published folder "
                             "from a machine that can read it") from None


def decision_batches(folder: str) -> Iterator[pd.DataFrame]:
    """The staged decisions dataset, BATCH_ROWS rows at a time, only the columns the store keeps."""
    fs, root = _filesystem(folder)
    dataset = ds.dataset(root, filesystem=fs, format="parquet")
    wanted = [c for c in [*DECISION_COLUMNS, "arpu_m0"] if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=wanted, batch_size=BATCH_ROWS):
        if batch.num_rows:
            yield batch.to_pandas()


def order_batches(files: Mapping[str, str]) -> Iterator[pd.DataFrame]:
    """Each channel's staged work-order CSV (channel -> path), a block at a time, as the store keeps them."""
    for channel, path in files.items():
        fs, where = _filesystem(path)
        with fs.open_input_stream(where) as stream:
            reader = pacsv.open_csv(
                stream, read_options=pacsv.ReadOptions(block_size=64 << 20),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in ORDER_TEXT},
                                                     include_columns=[c for c in ORDER_COLUMNS
                                                                      if c not in ("decision_run", "channel")]))
            for batch in reader:
                if batch.num_rows:
                    yield restore_formulas(batch.to_pandas().astype({c: object for c in ORDER_TEXT}))\
                        .assign(channel=channel)


def record_spark_run(settings: Settings, summary: Mapping[str, Any], decisions_folder: str,
                     order_files: Mapping[str, str], *, url: str | None = None) -> RecordResult:
    return record_run_parts(settings, summary, decision_batches(decisions_folder), order_batches(order_files),
                            url=url)
