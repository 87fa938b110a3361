"""A SparkSession for retain: Java checked first, executors on this venv's Python, Arrow on.

Why the interpreter variables: without PYSPARK_PYTHON, local workers start the system python and fail
with `No module named 'pyarrow'` (STYLE.md, Spark facts). On a cluster (spark-submit) the submitter sets
them, so they are only defaulted here.
"""

from __future__ import annotations

import os
import sys

from engine.spark.java import ensure_java

DEFAULT_MASTER = "local[2]"


def spark_session(master: str | None = None, *, app_name: str = "retain", shuffle_partitions: int | None = None,
                  conf: dict[str, str] | None = None):
    """The active session (e.g. under spark-submit) or a new one on `master` (default local[2])."""
    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if master or "PYSPARK_GATEWAY_PORT" not in os.environ:  # under spark-submit the master comes from it
        builder = builder.master(master or DEFAULT_MASTER)
    settings = {
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "50000",
        "spark.sql.shuffle.partitions": str(shuffle_partitions or 4),
        "spark.sql.adaptive.enabled": "false",  # partition counts stay as planned: the allocation walks them
        "spark.driver.memory": os.environ.get("RETAIN_SPARK_DRIVER_MEMORY", "2g"),
        "spark.python.worker.reuse": "true",
        "spark.ui.showConsoleProgress": "false",
        **(conf or {}),
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
