"""`retain score`: churn probability per subscriber, nothing else (no policies, no allocation).

`--engine spark` uses `mlflow.pyfunc.spark_udf` alone: the executors run the registered model's own code
(logged with it), nothing of this project; `--engine local` loads the same pyfunc in this process.
Output: subscriber_id and churn_probability, as Parquet (a file for local, a folder for Spark).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import Settings
from engine.data.schema import ID
from engine.errors import DataError
from engine.model.churn import PROBABILITY


@dataclass
class ScoreResult:
    rows: int
    out: str
    model_uri: str
    model_version: str | None
    mean_probability: float


def _input_names(uri: str) -> list[str]:
    from mlflow.models import get_model_info

    signature = get_model_info(uri).signature
    if signature is None or signature.inputs is None:
        raise DataError(f"model '{uri}' has no input signature", hint="retrain it with `retain train`")
    return list(signature.inputs.input_names())


def score_local(input_path: str | Path, out: str | Path, *, settings: Settings, model: str | None = None
                ) -> ScoreResult:
    """Score with the pyfunc loaded in this process; write subscriber_id, churn_probability to Parquet."""
    import pandas as pd

    from engine.data.io import read_table, write_table
    from engine.model.registry import load_model

    loaded = load_model(settings, model)
    frame = read_table(input_path, what="subscriber table")
    p = loaded.predict_proba(frame)
    result = pd.DataFrame({ID: frame[ID].astype(str).to_numpy(), PROBABILITY: p})
    target = Path(out)
    if target.suffix.lower() not in (".parquet", ".csv"):
        target = target / "scores.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_table(result, target)
    return ScoreResult(len(result), str(target), loaded.uri, loaded.version, float(p.mean()) if len(p) else 0.0)


def score_spark(input_path: str | Path, out: str | Path, *, settings: Settings, model: str | None = None,
                master: str | None = None, spark=None) -> ScoreResult:
    """Score with `mlflow.pyfunc.spark_udf(..., env_manager="local")`; write a Parquet folder."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from engine.model.registry import _resolve_version, connect, model_uri
    from engine.spark.decide import _as_uri, _read_input, _run
    from engine.spark.executor import SEQ
    from engine.spark.java import ensure_java
    from engine.spark.session import spark_session

    if spark is None:
        ensure_java()  # first: one line saying what to install, before any other work
    client = connect(settings)
    uri = model_uri(settings, model)
    version = _resolve_version(client, settings, uri)
    names = _input_names(uri)
    spark = spark or spark_session(master)
    df = _read_input(spark, _as_uri(input_path)).drop(SEQ)
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise DataError(f"subscriber table '{input_path}': missing column(s) {missing}",
                        hint="see `retain data schema`")
    udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local", result_type="double")
    scored = df.select(F.col(ID).cast("string").alias(ID), udf(*[F.col(c) for c in names]).alias(PROBABILITY))
    target = _as_uri(out)
    _run(scored.write.mode("overwrite").parquet, target)
    stats = _run(spark.read.parquet(target).agg(F.count("*").alias("n"), F.mean(PROBABILITY).alias("p")).collect)[0]
    return ScoreResult(int(stats["n"]), target, uri, str(version.version) if version else None,
                       float(stats["p"] or 0.0))
