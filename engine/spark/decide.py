"""`retain decide --engine spark`: the decision run of engine/decision/run.py on Apache Spark.

1. The driver loads and validates the policy set and resolves the model (fail fast, before any Spark
   work), downloads the model's artefact folder and ships it with `SparkContext.addFile` (under
   `arbitration: incremental_value`, the registered uplift model's folder too); the policy folder's files
   travel in the task closure. Executors load them once per Python worker (engine/spark/executor.py).
2. Capacity-based risk grades (when configured): a first pass scores every row; the cut-offs are the
   k-th largest probabilities (a distributed top-k), exactly `capacity_cutoffs` of the whole input.
3. `mapInArrow` runs `assess` + `constrain` (unlimited) per partition: the decision table with each
   subscriber's best candidate, plus its eligible candidates (`arbitration.eligible`) as arrays in preference order.
4. The run-level allocation (budget, channel capacity) runs distributed (engine/spark/allocate.py);
   the chosen candidate replaces the best one where they differ, refused subscribers get over_budget /
   over_capacity like the local run, the control group keeps its would-be offer at no cost.
5. Outputs, staged under `out/.staging-<run>` and renamed into place: `decisions.parquet/` (a Parquet
   dataset written by the executors), `work_orders/<channel>.csv` (numbered in input order and sorted
   like the local run, written through Spark, one file per channel), `summary.json` (the same keys,
   from distributed aggregates).
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from engine.config import Settings
from engine.data.csvtext import csv_bytes
from engine.data.schema import ID
from engine.decision.constrain import Decisions, new_run_id
from engine.decision.contact import read_history
from engine.decision.orders import NO_DOMINANT_REASON, order_rows  # noqa: F401
from engine.decision.run import DecisionRunResult, learned_rates, load_policy_engine, resolve_risk_grades, uplift_for
from engine.errors import DataError, RetainError
from engine.model.churn import PROBABILITY
from engine.spark import executor as ex
from engine.spark.allocate import allocate
from engine.vocabulary import (
    CALL_CHANNELS,
    CHANNELS,
    NO_REASON,
    STATUS_CONTROL,
    STATUS_OFFER,
    STATUS_OVER_BUDGET,
    STATUS_OVER_CAPACITY,
)

DECISIONS_DIR = "decisions.parquet"
ORDERS_DIR = "work_orders"
SUMMARY_FILE = "summary.json"
SAMPLE_ROWS = 500
BROADCAST_PICKS = 2_000_000  # (subscriber_id, position) pairs: ~100 MB as a broadcast hash table
_T0 = [0.0]


def _mark(step: str) -> None:
    """Step timings on stderr with RETAIN_SPARK_TIMING=1 (for benchmarks and tuning)."""
    import os
    import sys
    import time

    if os.environ.get("RETAIN_SPARK_TIMING"):
        now = time.perf_counter()
        print(f"[spark] {step}: {now - _T0[0]:.1f}s", file=sys.stderr, flush=True)
        _T0[0] = now


# ---------------------------------------------------------------------------------------------
# errors from executors: one line, like the local run
# ---------------------------------------------------------------------------------------------
_ERROR_LINE = re.compile(r"(?:engine\.errors\.)?(DataError|ModelError|PolicyError|ConfigError|RetainError): (.+)")


def _one_line(exc: Exception) -> RetainError | None:
    text = str(exc)
    for line in reversed(text.splitlines()):
        m = _ERROR_LINE.search(line)
        if m:
            return DataError(m.group(2).strip())
    return None


def _run(fn, *args, **kwargs):
    """Call a Spark action; a RetainError raised on an executor comes back as the same one-line error."""
    try:
        return fn(*args, **kwargs)
    except RetainError:
        raise
    except Exception as exc:  # Py4JJavaError / PythonException carry the executor's traceback as text
        err = _one_line(exc)
        if err is not None:
            raise err from None
        raise


# ---------------------------------------------------------------------------------------------
# files on any Hadoop path (local, hdfs://, s3a://)
# ---------------------------------------------------------------------------------------------
class _FS:
    def __init__(self, spark, path: str) -> None:
        jvm = spark._jvm
        self._jvm = jvm
        self._path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._path(path).getFileSystem(spark._jsc.hadoopConfiguration())

    def p(self, path: str):
        return self._path(path)

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self.p(path)))

    def delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete(self.p(path), True)

    def mkdirs(self, path: str) -> None:
        self.fs.mkdirs(self.p(path))

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.rename(self.p(src), self.p(dst)):
            raise DataError(f"cannot move '{src}' to '{dst}'")

    def write_bytes(self, path: str, data: bytes) -> None:
        stream = self.fs.create(self.p(path), True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def part_file(self, folder: str) -> str:
        parts = [s.getPath().toString() for s in self.fs.listStatus(self.p(folder))
                 if s.getPath().getName().startswith("part-")]
        if len(parts) != 1:
            raise DataError(f"expected one part file in '{folder}', found {len(parts)}")
        return parts[0]


def _join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names])


def _as_uri(path: str | Path) -> str:
    text = str(path)
    return text if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) else str(Path(text).resolve())


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
_SHIPPED: dict[tuple[str, str, str | None], tuple[str, str]] = {}


def _ship_model(sc, loaded, settings: Settings) -> tuple[str, str]:
    """Download the model version's artefact folder once and add it to the job's files (SparkFiles).

    Returns (name executors find it under, local folder). Once per Spark application and version: Spark
    refuses to register one file name for two paths.
    """
    import hashlib

    import mlflow.artifacts

    from engine.model.registry import connect

    key = (sc.applicationId, loaded.uri, loaded.version)
    if key not in _SHIPPED:
        connect(settings)
        root = Path(tempfile.mkdtemp(prefix="retain-model-"))
        atexit.register(shutil.rmtree, root, True)  # Spark reads it while the application runs
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=loaded.uri, dst_path=str(root / "download")))
        tag = hashlib.sha256(f"{loaded.uri}|{loaded.version}|{loaded.run_id}".encode()).hexdigest()[:10]
        folder = root / f"retain-model-{tag}"
        got.rename(folder)
        sc.addFile(str(folder), recursive=True)
        _SHIPPED[key] = (folder.name, str(folder))
    return _SHIPPED[key]


def _is_csv(path: str) -> bool:
    """A .csv file, or a local folder of .csv files (Spark's own CSV output); anything else is read as Parquet."""
    if path.lower().rstrip("/").endswith(".csv"):
        return True
    local = Path(path.removeprefix("file:"))
    if "://" in path.removeprefix("file://") or not local.is_dir():
        return False
    files = [f for f in local.iterdir() if f.is_file() and not f.name.startswith((".", "_"))]
    return bool(files) and all(f.suffix.lower() == ".csv" for f in files)


def _read_input(spark, path: str):
    """The subscriber table: Parquet (file or folder) or CSV with a header. CSV columns arrive as text and
    are typed by the same validation as the local run, in the executors (a bad value names its column)."""
    from pyspark.sql import functions as F

    csv = _is_csv(path)
    try:
        if csv:
            df = spark.read.options(header=True, inferSchema=False, multiLine=True, escape='"').csv(path)
        else:
            df = spark.read.parquet(path)
    except Exception as exc:  # AnalysisException: path does not exist / not Parquet
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "CSV" if csv else "Parquet"
        raise DataError(f"subscriber table '{path}' cannot be read as {kind}: {first[:200]}",
                        hint="pass a Parquet or CSV file, or a folder of Parquet (or CSV) files") from None
    return df.withColumn(ex.SEQ, F.monotonically_increasing_id())


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _cutoffs(spark, df, job: ex.Job, settings: Settings) -> tuple[float, float] | None:
    """`capacity_cutoffs` of the whole input: the top `capacity_high + capacity_medium` probabilities (a
    distributed top-k; only those k numbers reach the driver) decide both cut-offs exactly as the full
    sorted column would (capacity_cutoffs reads positions below k, and whether there are k rows at all)."""
    from pyspark.sql import functions as F

    from engine.decision.assess import capacity_cutoffs

    grades = settings.risk_grades
    if grades.capacity_high is None:
        return None
    k = int(grades.capacity_high) + int(grades.capacity_medium or 0)
    probs = df.drop(ex.SEQ).mapInArrow(functools.partial(ex.probabilities, job), "p double")
    top = np.array([r["p"] for r in _run(probs.orderBy(F.col("p").desc()).limit(k).collect)], dtype=float)
    return capacity_cutoffs(top, grades)


def _final_table(decided, chosen, capacity_left: Mapping[str, int | None], *, broadcast: bool = False,
                 explored_status=None):
    """Apply the allocation to the per-partition decisions (see the module docs, step 4). `explored_status`:
    (subscriber_id, _xstatus) of explored subscribers whose drawn contact budget or capacity refused."""
    from pyspark.sql import functions as F

    t = decided.join(F.broadcast(chosen) if broadcast else chosen, ID, "left")
    if explored_status is not None:
        t = t.join(F.broadcast(explored_status), ID, "left")
    has = F.size("_c_channel") > 0
    picked = has & F.col("_pick").isNotNull()
    refused = has & F.col("_pick").isNull()
    control = picked & F.col(ex.CONTROL_FLAG)
    full = [ch for ch, left in capacity_left.items() if left is not None and left <= 0]

    def at(name: str):
        return F.element_at(F.col(name), F.col("_pick") + 1)

    new = {
        "status": (F.when(control, F.lit(STATUS_CONTROL)).when(picked, F.lit(STATUS_OFFER))
                   .when(refused & F.col("_xstatus").isNotNull() if explored_status is not None else F.lit(False),
                         F.col("_xstatus") if explored_status is not None else F.lit(None))
                   .when(refused & F.element_at("_c_channel", 1).isin(full), F.lit(STATUS_OVER_CAPACITY))
                   .when(refused, F.lit(STATUS_OVER_BUDGET)).otherwise(F.col("status"))),
        "control": F.when(has, control).otherwise(F.col("control")),
        "propensity": (F.when(control, F.col("_c_p_control")).when(picked, F.col("_c_p_sent"))
                       .when(refused, F.col("_c_p_none")).otherwise(F.col("propensity"))),
    }
    for col in ("offer_id", "channel", "rule_id", "stage", "message"):
        new[col] = F.when(picked, at(f"_c_{col}")).when(refused, F.lit(None).cast("string")).otherwise(F.col(col))
    new["priority"] = (F.when(picked, at("_c_priority")).when(refused, F.lit(0)).otherwise(F.col("priority"))
                       .cast(decided.schema["priority"].dataType))
    for col in ("p_accept", "expected_saved_value", "net_value"):
        new[col] = F.when(picked, at(f"_c_{col}")).when(refused, F.lit(0.0)).otherwise(F.col(col))
    for col in ("offer_cost", "channel_cost"):
        new[col] = (F.when(control, F.lit(0.0)).when(picked, at(f"_c_{col}")).when(refused, F.lit(0.0))
                    .otherwise(F.col(col)))
    for col in ("tau",):
        if col in decided.columns:
            new[col] = F.when(picked, at(f"_c_{col}")).when(refused, F.lit(0.0)).otherwise(F.col(col))
    columns = [c for c in decided.columns if not c.startswith("_c_") and c != ex.CONTROL_FLAG]
    return t.select(*[new[c].alias(c) if c in new else F.col(c) for c in columns])


def _explored_first(spark, explored: pd.DataFrame, channels: list[str], budget: float | None,
                    capacity: Mapping[str, int | None]):
    """The explored subscribers' drawn contacts (one candidate each, at most 5% of the rows by default) allocated
    on the driver with `allocate_arrays`, exactly as constrain does before everyone else: (budget left,
    capacity left, picks DataFrame (subscriber_id, _pick), refused DataFrame (subscriber_id, _xstatus))."""
    from engine.decision.arbitration import CHOSEN, allocate_arrays

    codes = np.array([channels.index(ch) for ch in explored["ch"]], dtype=np.int64)
    ids = explored[ID].astype(str).to_numpy(dtype=object)
    n = len(explored)
    res = allocate_arrays(row=np.arange(n), key=ids, channel=codes, channel_names=channels,
                          priority=np.zeros(n), rank=np.zeros(n, dtype=np.int64),
                          total_cost=explored["cost"].to_numpy(dtype=float),
                          net_value=explored["net"].to_numpy(dtype=float), n_rows=n, budget=budget,
                          capacity=capacity, prefer="first")
    picks = spark.createDataFrame(pd.DataFrame({ID: ids[res.chosen], "_pick": explored["k"].to_numpy()[res.chosen]
                                                .astype("int32")}), f"{ID} string, _pick int")
    refused = np.flatnonzero(res.status != CHOSEN)
    status = spark.createDataFrame(pd.DataFrame({ID: ids[refused], "_xstatus": res.status[refused].astype(object)}),
                                   f"{ID} string, _xstatus string")
    return (None if budget is None else res.budget_left), res.capacity_left, picks, status


def _partition_counts(batches):
    from engine.spark.allocate import _part

    n = sum(b.num_rows for b in batches)
    yield pa.RecordBatch.from_arrays([pa.array([_part()], pa.int32()), pa.array([n], pa.int64())],
                                     names=["part", "n"])


def _order_rows(batches, *, offsets: Mapping[int, int], run_id: str, run_date: dt.date, labels: Mapping[str, str],
                columns: list[str]):
    """Work-order rows (the columns of engine.decision.orders.work_orders) numbered in input order."""
    from engine.spark.allocate import _part

    start = offsets.get(_part(), 0)
    for b in batches:
        if b.num_rows == 0:
            continue
        rows = b.to_pandas()
        n = np.arange(start + 1, start + len(rows) + 1)
        start += len(rows)
        out = order_rows(rows, n, run_id, run_date, labels).assign(_n=n)
        yield pa.RecordBatch.from_pandas(out[columns], preserve_index=False)


def _csv_lines(batches, *, headers: Mapping[str, list[str]], window: str):
    """The local files' CSV text (formula cells neutralised) for each run of one channel in the sorted orders."""
    for b in batches:
        if b.num_rows == 0:
            continue
        frame = b.to_pandas()
        ch = frame["channel"].to_numpy(dtype=object)
        cut = np.flatnonzero(np.r_[True, ch[1:] != ch[:-1]])
        texts, names = [], []
        for lo, hi in zip(cut, np.r_[cut[1:], len(frame)], strict=True):
            part = frame.iloc[lo:hi]
            name = str(ch[lo])
            if name in CALL_CHANNELS:
                part = part.assign(call_window=window)
            texts.append(csv_bytes(part[headers[name]], header=False).decode().removesuffix("\n"))
            names.append(name)
        yield pa.RecordBatch.from_arrays([pa.array(names), pa.array(texts)], names=["channel", "value"])


def _work_orders(spark, final, fs: _FS, stage: str, *, settings: Settings, run_id: str, run_date: dt.date,
                 labels: Mapping[str, str]) -> dict[str, str]:
    """Write work_orders/<channel>.csv as the local run does; returns channel -> staged path."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from engine.decision.contact import call_window

    offered = final.filter(F.col("status") == STATUS_OFFER)
    # only the columns a work order reads (reason_text also reads each signal's own column) travel the sort
    signals = {r["reason_signal"] for r in _run(offered.select("reason_signal").distinct().collect)}
    needed = [ID, "channel", "priority", "risk_grade", PROBABILITY, "value_tier", "reason", "reason_signal",
              "offer_id", "offer_cost", "net_value", "message", "rule_id", ex.SEQ]
    needed += sorted(c for c in signals if c and c in final.columns and c not in needed)
    offered = offered.select(*needed).orderBy(ex.SEQ).persist(StorageLevel.MEMORY_AND_DISK)
    per_part = _run(offered.mapInArrow(_partition_counts, "part int, n long").collect)
    counts = sorted((r["part"], r["n"]) for r in per_part)
    offsets, seen = {}, 0
    for part, n in counts:
        offsets[part] = seen
        seen += int(n)
    if seen == 0:
        offered.unpersist()
        return {}
    order_columns = ["order_id", ID, "channel", "priority", "risk_grade", "churn_probability", "value_tier", "reason",
                     "reason_text", "offer_id", "offer_cost", "expected_net_value", "message", "rule_id", "due_date",
                     "_n"]
    schema = ", ".join([f"order_id string, {ID} string, channel string, priority long, risk_grade string",
                        "churn_probability double, value_tier string, reason string, reason_text string",
                        "offer_id string, offer_cost double, expected_net_value double, message string",
                        "rule_id string, due_date string, _n long"])
    body = functools.partial(_order_rows, offsets=offsets, run_id=run_id, run_date=run_date, labels=labels,
                             columns=order_columns)
    orders = offered.mapInArrow(body, schema).persist(StorageLevel.MEMORY_AND_DISK)
    channels = sorted(r["channel"] for r in _run(orders.select("channel").distinct().collect))
    base = [c for c in order_columns if c not in ("channel", "_n")]
    headers = {ch: base + (["call_window"] if ch in CALL_CHANNELS else []) for ch in channels}
    lines = (orders.orderBy(F.col("channel").asc(), F.col("priority").desc(), F.col("expected_net_value").desc(),
                            F.col("_n").asc())
             .mapInArrow(functools.partial(_csv_lines, headers=headers, window=call_window(settings.contact)),
                         "channel string, value string")
             .persist(StorageLevel.MEMORY_AND_DISK))
    written: dict[str, str] = {}
    fs.mkdirs(_join(stage, ORDERS_DIR))
    for ch in channels:
        header = spark.createDataFrame([(",".join(headers[ch]),)], "value string").coalesce(1)
        tmp = _join(stage, "_tmp_orders", ch)
        body = lines.filter(F.col("channel") == ch).select("value")
        _run(header.union(body).coalesce(1).write.text, tmp)
        target = _join(stage, ORDERS_DIR, f"{ch}.csv")
        fs.rename(fs.part_file(tmp), target)
        written[ch] = target
    first = headers[channels[0]]
    for ch in CHANNELS:  # header-only lists for the other channels, as the local run writes them
        if ch not in written:
            target = _join(stage, ORDERS_DIR, f"{ch}.csv")
            fs.write_bytes(target, (",".join(first) + "\n").encode())
            written[ch] = target
    fs.delete(_join(stage, "_tmp_orders"))
    lines.unpersist()
    orders.unpersist()
    offered.unpersist()
    return written


def _summary(final, *, run_id: str, run_date: dt.date, policy_hash: str, model_uri: str, model_version: Any,
             budget: float | None) -> dict[str, Any]:
    """engine.decision.orders.summarise, from distributed aggregates."""
    from pyspark.sql import functions as F

    def counts(df, col: str) -> dict[str, int]:
        rows = _run(df.groupBy(col).count().collect)
        return {str(r[col]): int(r["count"]) for r in sorted(rows, key=lambda r: (-r["count"], str(r[col])))}

    offered = final.filter(F.col("status") == STATUS_OFFER)
    totals = _run(final.agg(F.count("*").alias("n"), F.mean(PROBABILITY).alias("p"),
                            F.sum(F.col("control").cast("long")).alias("control")).collect)[0]
    o = _run(offered.agg(F.sum("offer_cost").alias("offer_cost"), F.sum("channel_cost").alias("channel_cost"),
                         F.sum(F.col(PROBABILITY) * F.col("p_accept")).alias("saves"),
                         F.sum("expected_saved_value").alias("saved"), F.sum("net_value").alias("net")).collect)[0]

    def z(v: Any) -> float:
        return float(v) if v is not None else 0.0

    return {
        "decision_run": run_id,
        "decided_on": run_date.isoformat(),
        "subscribers": int(totals["n"]),
        "model": model_uri,
        "model_version": model_version,
        "policy_hash": policy_hash,
        "risk_grades": counts(final, "risk_grade"),
        "value_tiers": counts(final, "value_tier"),
        "reasons": counts(final.filter(F.col("reason") != NO_REASON), "reason"),
        "status": counts(final, "status"),
        "blocked": counts(final.filter(F.col("blocked_reason") != ""), "blocked_reason"),
        "offers_per_channel": counts(offered, "channel"),
        "offers": counts(offered, "offer_id"),
        "control_group": int(totals["control"] or 0),
        "total_offer_cost": round(z(o["offer_cost"]), 2),
        "total_channel_cost": round(z(o["channel_cost"]), 2),
        "budget": budget,
        "budget_used": round(z(o["offer_cost"]) + z(o["channel_cost"]), 2),
        "expected_saves": round(z(o["saves"]), 1),
        "expected_saved_value": round(z(o["saved"]), 2),
        "expected_net_value": round(z(o["net"]), 2),
        "mean_churn_probability": round(z(totals["p"]), 4),
    }


def _run_notes(final, engine, run_date: dt.date, uplift: Any) -> dict[str, Any]:
    """constrain's run_notes: arbitration mode, where tau came from (the uplift model the executors loaded, or
    the priors), exploration share, seed and how many were explored."""
    from pyspark.sql import functions as F

    from engine.decision.assess import INCREMENTAL, effect_source
    from engine.decision.constrain import run_notes

    ps = engine.policy_set
    explored = _run(final.agg(F.sum(F.col("explored").cast("long")).alias("n")).collect)[0]["n"]
    seed = str(ps.exploration_seed) if ps.exploration_seed is not None else run_date.isoformat()
    return run_notes(ps.arbitration, effect_source(uplift) if ps.arbitration == INCREMENTAL else None,
                     ps.exploration_share, seed, int(explored or 0))


def decide_spark(input_path: str | Path, out_dir: str | Path, *, settings: Settings, model: str | None = None,
                 policy_dir: str | Path | None = None, master: str | None = None, spark=None,
                 contact_history: str | Path | None = None, run_date: dt.date | None = None,
                 learned: Mapping[tuple[str, str], float] | bool = True, log_run: bool = True,
                 partitions: int | None = None, record: bool = True) -> DecisionRunResult:
    """Decide for every subscriber of a Parquet file or folder on Spark and publish into `out_dir`.

    `learned` as in `decide_file` (True: the rates learned from outcomes). The same answer as
    `engine.decision.run.decide_file` per subscriber (offer, channel, status), budget
    and capacity included. `record`: the run goes into the decision store like a local run (read back from
    the staged files batch by batch, engine/spark/record.py), before the folder is published; if publishing
    fails the record is removed again. `contact_history` is read on the driver and sent to the executors
    with the tasks, and this run's contacts (bounded by channel capacity) are appended to it on the driver.
    """
    import time

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from engine.model.registry import load_model
    from engine.spark.java import ensure_java
    from engine.spark.session import spark_session

    _T0[0] = time.perf_counter()
    if spark is None:
        ensure_java()  # first: one line saying what to install, before any other work
    policies = Path(policy_dir or settings.policy_dir)
    engine = load_policy_engine(policies)  # fail fast, before heavy work
    history = read_history(contact_history)
    loaded = load_model(settings, model)
    uplift = uplift_for(settings, engine)  # incremental_value: the registered uplift model, shipped below
    settings = resolve_risk_grades(settings, loaded)
    learned = learned_rates(settings, learned, policies)
    spark = spark or spark_session(master)
    sc = spark.sparkContext
    dir_name, model_dir = _ship_model(sc, loaded, settings)
    uplift_ship = _ship_model(sc, uplift, settings) if uplift is not None else (None, None)

    run_id = new_run_id()
    run_date = run_date or dt.date.today()
    source = str(input_path)
    job = ex.Job(settings=settings, model_dir_name=dir_name, model_local_dir=model_dir, model_uri=loaded.uri,
                 model_name=loaded.name, model_version=loaded.version, model_run_id=loaded.run_id,
                 policy=ex.policy_files(policies), policy_single_file=policies.is_file(), run_id=run_id,
                 run_date=run_date, source=source, learned=dict(learned) if learned else None,
                 history=history if len(history) else None, uplift_dir_name=uplift_ship[0],
                 uplift_local_dir=uplift_ship[1], uplift_uri=getattr(uplift, "uri", None),
                 uplift_version=getattr(uplift, "version", None), uplift_run_id=getattr(uplift, "run_id", None))
    ex._CACHE.setdefault(job.model_key, loaded)
    if uplift is not None:
        ex._CACHE.setdefault(job.uplift_key, uplift)
    ex._CACHE.setdefault(job.policy_key, engine)

    df = _read_input(spark, _as_uri(input_path))
    _mark("policies, model, session")
    job.risk_cutoffs = _cutoffs(spark, df, job, settings)
    sample = _run(df.drop(ex.SEQ).limit(SAMPLE_ROWS).toPandas)
    if len(sample) == 0:
        raise DataError(f"subscriber table '{input_path}' has no rows")
    table, _arrays = ex.decide_rows(sample, job)
    job.output_schema = ex.arrow_schema(table)
    _mark("cutoffs+sample")
    decided = df.mapInArrow(functools.partial(ex.decide_partition, job), _spark_schema(job.output_schema))
    decided = decided.persist(StorageLevel.MEMORY_AND_DISK)
    _run(decided.count)
    _mark("assess")

    cands = decided.select(ID, "_c_explored", F.posexplode(F.arrays_zip("_c_channel", "_c_total_cost",
                                                                         "_c_density", "_c_net_value")))
    cands = cands.select(ID, "_c_explored", F.col("pos").cast("int").alias("k"), F.col("col._c_channel").alias("ch"),
                         F.col("col._c_total_cost").alias("cost"), F.col("col._c_density").alias("density"),
                         F.col("col._c_net_value").alias("net"))
    channels = sorted({r["ch"] for r in _run(cands.select("ch").distinct().collect)} | set(settings.channels))
    capacity = {ch: c.daily_capacity for ch, c in settings.channels.items()}
    budget = settings.arbitration.budget
    explored = _run(cands.filter(F.col("_c_explored")).select(ID, "k", "ch", "cost", "net").toPandas)
    explored_picks = explored_status = None
    if len(explored):  # explored subscribers' drawn contacts are paid first, as constrain does
        budget, capacity, explored_picks, explored_status = _explored_first(spark, explored, channels, budget,
                                                                            capacity)
    alloc = _run(allocate, spark, cands.filter(~F.col("_c_explored")).select(ID, "k", "ch", "cost", "density"),
                 channels=channels, budget=budget, capacity=capacity, partitions=partitions)
    _mark(f"allocate ({alloc.rounds} rounds)")
    chosen = alloc.chosen
    if explored_picks is not None:
        chosen = chosen.unionByName(explored_picks)
        alloc.chosen_rows += explored_picks.count()
    # picks of up to BROADCAST_PICKS subscribers go to every task (the wide decisions table is not shuffled)
    final = _final_table(decided, chosen, alloc.capacity_left, broadcast=alloc.chosen_rows <= BROADCAST_PICKS,
                         explored_status=explored_status).persist(StorageLevel.MEMORY_AND_DISK)
    _run(final.count)

    out = _as_uri(out_dir)
    _mark("final table")
    fs = _FS(spark, out)
    if fs.exists(out) and not fs.fs.getFileStatus(fs.p(out)).isDirectory():
        raise DataError(f"output '{out_dir}' exists and is not a directory")
    stage = _join(out, f".staging-{run_id}")
    fs.mkdirs(stage)
    recorded = None
    try:
        _run(final.drop(ex.SEQ).write.parquet, _join(stage, DECISIONS_DIR))
        _mark("decisions written")
        labels = loaded.reason_labels or settings.reason_labels
        staged = _work_orders(spark, final, fs, stage, settings=settings, run_id=run_id, run_date=run_date,
                              labels=labels)
        _mark("work orders")
        summary = _summary(final, run_id=run_id, run_date=run_date, policy_hash=engine.policy_set.content_hash,
                           model_uri=loaded.uri, model_version=loaded.version, budget=settings.arbitration.budget)
        summary.update(_run_notes(final, engine, run_date, uplift))
        _mark("summary")
        summary["input"] = source if "://" in source else str(Path(source).resolve())
        files = {"decisions": _join(out, DECISIONS_DIR)}
        files.update({ch: _join(out, ORDERS_DIR, f"{ch}.csv") for ch in staged})
        files["summary"] = _join(out, SUMMARY_FILE)
        fs.write_bytes(_join(stage, SUMMARY_FILE),
                       (json.dumps({**summary, "files": files}, indent=2, default=str) + "\n").encode())
        if record:
            from engine.spark.record import record_spark_run

            recorded = record_spark_run(settings, summary, _join(stage, DECISIONS_DIR),
                                        {ch: _join(stage, ORDERS_DIR, f"{ch}.csv") for ch in staged})
            _mark(f"recorded ({recorded.decisions:,} decisions, {recorded.work_orders:,} orders)")
        # publish: each item renamed into place (the old decisions folder goes first)
        fs.delete(_join(out, DECISIONS_DIR))
        fs.rename(_join(stage, DECISIONS_DIR), _join(out, DECISIONS_DIR))
        if staged:
            fs.mkdirs(_join(out, ORDERS_DIR))
            for ch in staged:
                fs.delete(_join(out, ORDERS_DIR, f"{ch}.csv"))
                fs.rename(_join(stage, ORDERS_DIR, f"{ch}.csv"), _join(out, ORDERS_DIR, f"{ch}.csv"))
        fs.delete(_join(out, SUMMARY_FILE))
        fs.rename(_join(stage, SUMMARY_FILE), _join(out, SUMMARY_FILE))
    except BaseException:
        if recorded is not None and recorded.recorded:  # nothing went out: the store must not claim it did
            from engine.feedback.store import open_store

            store = open_store(settings)
            with store.transaction() as conn:
                store.delete_run(conn, run_id)
        raise
    finally:
        fs.delete(stage)

    local_files = {k: Path(v.removeprefix("file:")) for k, v in files.items()}
    if contact_history:
        from engine.decision.contact import append_history

        offered = _run(final.filter(F.col("status") == STATUS_OFFER).select(ID, "channel", "offer_id").toPandas)
        local_files["contact_history"] = append_history(contact_history, history,
                                                        offered.assign(contacted_on=run_date))
    mlflow_run = None
    if log_run:
        from engine.decision.publish import log_decision_run

        mlflow_run = log_decision_run(settings, Decisions(run_id=run_id, run_date=run_date, table=pd.DataFrame(),
                                                          work_orders={}, summary=summary), local_files)
    final.unpersist()
    decided.unpersist()
    return DecisionRunResult(summary=summary, files=local_files, mlflow_run_id=mlflow_run)
