"""The decision run on Apache Spark: the same `assess` per subscriber on executors, the run-level
allocation as distributed sorts and running sums, the same outputs as the single-machine run.

Modules: `java` (is there a Java Spark 4 can use), `session` (a SparkSession with the venv's Python),
`executor` (what runs in executor Python workers: model, policies and per-partition functions, loaded
once per process), `allocate` (the round-based allocation of engine/decision/arbitration.py over
DataFrames), `decide` (the run: read, assess, allocate, build the table, write outputs), `score`
(`retain score`: mlflow's spark_udf alone).
"""
