"""`mlflow.pyfunc.spark_udf` scores the registered champion in a local Spark session (issue 11 item 4).

Executors unpickle the model from its own code (`code_paths`), so nothing of this repository has to be
importable there; with `env_manager="local"` they use the driver's Python (STYLE.md, Spark facts).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from engine.data.simulator import generate


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as env:  # executors run this interpreter; restored afterwards
        env.setenv("PYSPARK_PYTHON", sys.executable)
        env.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = (SparkSession.builder.master("local[1]").appName("retain-test-spark-udf")
                   .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1")
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
        yield session
        session.stop()


def test_spark_udf_scores_the_champion(trained, spark):
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from engine.model.registry import load_model

    loaded = load_model(trained.settings(), "champion")
    rows = generate(200, seed=31).drop(columns=["churn", "churn_reason"])
    rows = rows.astype({"subscriber_id": str})
    mlflow.set_tracking_uri(trained.uri)
    udf = mlflow.pyfunc.spark_udf(spark, "models:/churn@champion", env_manager="local", result_type="double")
    sdf = spark.createDataFrame(rows)
    scored = sdf.withColumn("p", udf(*[F.col(c) for c in loaded.input_columns])).select("subscriber_id", "p")
    got = scored.toPandas().set_index("subscriber_id")["p"].reindex(rows["subscriber_id"]).to_numpy()
    np.testing.assert_allclose(got, loaded.predict_proba(rows), rtol=1e-9, atol=1e-12)
