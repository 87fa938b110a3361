"""Issue 15: the decision run on Spark (local[2]) at 1 M, 5 M and 10 M simulated subscribers.

Data is generated in partitions by Spark itself (`spark.range` + `mapInPandas` calling the simulator with
a seed per partition and renumbering subscriber ids globally), written to Parquet first; no process ever
holds a whole month in one pandas frame. A small model is trained once into a throw-away MLflow store
(or `--store` reuses one whose champion exists). Each size then runs `decide_spark` in a fresh process
(its own Spark driver), and at 1 M the single-machine engine (`decide_file`) runs on the same rows in a
fresh process for the ratio.

Prints per size: wall, subscribers/s, allocation rounds, peak driver RSS (the Python driver; and the
JVM, which in local mode also hosts the executors' Java side), the step timings, and the ratio to the
single-machine engine at 1 M. The load average is printed too: other processes on a shared 2-core machine
inflate wall time.

    .venv/bin/python benchmarks/spark.py                         # 1 M, 5 M, 10 M
    .venv/bin/python benchmarks/spark.py --sizes 1000000         # a subset
    .venv/bin/python benchmarks/spark.py --sizes 200000 --no-local --store /tmp/store/mlruns
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1_000_000, 5_000_000, 10_000_000)
ROWS_PER_PARTITION = 250_000


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


class _JvmPeak:
    """Peak RSS of this process's child JVM (Spark's driver), sampled every half second."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.5):
            for child in me.children(recursive=True):
                try:
                    if "java" in child.name():
                        self.peak = max(self.peak, child.memory_info().rss)
                except psutil.Error:
                    pass

    def stop(self) -> float:
        self._stop.set()
        return self.peak / 1024**3


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONWARNINGS": "ignore"}


def generate_parquet(spark, n: int, out: str, *, seed: int = 11, rows_per_partition: int = ROWS_PER_PARTITION) -> None:
    """`n` simulated subscribers written to a Parquet folder, one simulator call per partition."""
    import pandas as pd
    import pyarrow as pa

    from engine.data.simulator import generate

    parts = max(1, -(-n // rows_per_partition))
    sample = generate(10, seed=seed).drop(columns=["churn", "churn_reason"])
    schema = pa.Schema.from_pandas(sample.astype({"subscriber_id": str}), preserve_index=False)
    from pyspark.sql.pandas.types import from_arrow_schema

    def body(frames):
        for frame in frames:
            for part in frame["id"].tolist():
                start = part * rows_per_partition
                rows = min(rows_per_partition, n - start)
                if rows <= 0:
                    continue
                g = generate(rows, seed=seed * 100_003 + part).drop(columns=["churn", "churn_reason"])
                g["subscriber_id"] = pd.Series([f"S{start + i + 1:09d}" for i in range(rows)], dtype=object)
                yield g

    ids = spark.range(0, parts, numPartitions=parts)
    ids.mapInPandas(body, from_arrow_schema(schema)).write.mode("overwrite").parquet(out)


def child_spark(store: str, data: str, out: str, config: str | None, master: str, partitions: int) -> None:
    from engine.config import load_settings
    from engine.spark.decide import decide_spark
    from engine.spark.session import spark_session

    watch = _JvmPeak()
    settings = load_settings(config, tracking_uri=f"sqlite:///{store}/mlflow.db")
    start = time.perf_counter()
    spark = spark_session(master, shuffle_partitions=partitions)
    session = time.perf_counter() - start
    result = decide_spark(data, out, settings=settings, model="champion", policy_dir=ROOT / "policies",
                          spark=spark, log_run=False, learned=False, record=False)
    wall = time.perf_counter() - start
    print(json.dumps({"rows": result.summary["subscribers"], "wall": wall, "session": session,
                      "peak_gib": _peak_gib(), "jvm_gib": watch.stop(),
                      "offers": result.summary["status"].get("offer", 0), "status": result.summary["status"]}))
    spark.stop()


def child_local(store: str, data: str, out: str, config: str | None) -> None:
    from engine.config import load_settings
    from engine.decision.run import decide_file

    settings = load_settings(config, tracking_uri=f"sqlite:///{store}/mlflow.db")
    start = time.perf_counter()
    result = decide_file(data, out, settings=settings, model="champion", policy_dir=ROOT / "policies",
                         log_run=False, record=False, learned=False)
    print(json.dumps({"rows": result.summary["subscribers"], "wall": time.perf_counter() - start,
                      "peak_gib": _peak_gib(), "status": result.summary["status"]}))


def child_generate(data: str, n: str, master: str) -> None:
    from engine.spark.session import spark_session

    spark = spark_session(master)
    generate_parquet(spark, int(n), data)
    spark.stop()


def _child(args: list[str], *, timing: bool = False) -> dict:
    env = _python_env()
    if timing:
        env["RETAIN_SPARK_TIMING"] = "1"
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    steps = [line for line in proc.stderr.splitlines() if line.startswith("[spark]")]
    if proc.returncode != 0:
        log = Path(tempfile.gettempdir()) / f"retain-spark-bench-{args[0].removeprefix('--child-')}.log"
        log.write_text(proc.stderr)
        causes = [line for line in proc.stderr.splitlines()
                  if ("Error" in line or "Caused by" in line or "Exception:" in line) and not line.startswith("\t")]
        print("\n".join(causes[:8]) or proc.stderr[-3000:])
        print(f"(full log: {log})")
        raise SystemExit(1)
    out = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    out["steps"] = steps
    return out


def _single_file(folder: Path, target: Path) -> None:
    """The 1 M Parquet folder as one file for the single-machine engine (which reads files)."""
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(folder), target)


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1].startswith("--child-"):
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "--child-spark":
            child_spark(rest[0], rest[1], rest[2], rest[3] or None, rest[4], int(rest[5]))
        elif kind == "--child-local":
            child_local(rest[0], rest[1], rest[2], rest[3] or None)
        else:
            child_generate(*rest)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated subscriber counts")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--partitions", type=int, default=4, help="spark.sql.shuffle.partitions")
    ap.add_argument("--store", help="an MLflow store folder (holding mlflow.db) with a champion; else trains one")
    ap.add_argument("--config", default="", help="settings YAML (default: the built-in defaults)")
    ap.add_argument("--no-local", action="store_true", help="skip the single-machine reference at 1 M")
    ap.add_argument("--workdir", help="keep data and outputs here (default: a temporary folder)")
    args = ap.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    sys.path.insert(0, str(ROOT))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(args.workdir or tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        store = args.store
        if not store:
            from engine.config import load_settings
            from engine.data.io import write_table
            from engine.data.simulator import generate
            from engine.model.governance import promote
            from training.train import train

            store = str(tmp / "mlruns")
            settings = load_settings(tracking_uri=f"sqlite:///{store}/mlflow.db")
            train_file = tmp / "train.parquet"
            write_table(generate(20_000, seed=1), train_file)
            result = train(str(train_file), settings=settings, trials=2)
            promote(settings, str(result.model_version), "champion", reason="benchmark")
        local_1m = None
        for n in sizes:
            data = tmp / f"month_{n}"
            start = time.perf_counter()
            if not data.exists():
                _child(["--child-generate", str(data), str(n), args.master])
            gen = time.perf_counter() - start
            fig = _child(["--child-spark", store, str(data), str(tmp / f"spark_out_{n}"), args.config, args.master,
                          str(args.partitions)], timing=True)
            load = os.getloadavg()[0]
            rounds = next((s.split("(")[1].split(" ")[0] for s in fig["steps"] if "rounds)" in s), "?")
            print(f"spark {fig['rows']:>11,} subscribers: {fig['wall']:7.1f} s wall ({fig['session']:.0f} s session "
                  f"start), {fig['rows'] / fig['wall']:>8,.0f} subscribers/s, {rounds} allocation rounds, peak RSS "
                  f"driver {fig['peak_gib']:.2f} GiB + JVM {fig['jvm_gib']:.2f} GiB, offers {fig['offers']:,} "
                  f"(data generated in {gen:.0f} s; load average {load:.1f} on {os.cpu_count()} cores)")
            top, alloc = [], 0.0
            for line in fig["steps"]:
                seconds = float(line.rsplit(": ", 1)[1].rstrip("s"))
                if line.startswith("[spark]  ") or "rounds)" in line:
                    alloc += seconds  # the allocation's rounds report their steps one by one
                    if "rounds)" in line:
                        top.append(f"allocation {line.split('(')[1].split(')')[0]}: {alloc:.1f}s")
                else:
                    top.append(line.removeprefix("[spark] "))
            print("  steps: " + "; ".join(top))
            if n == 1_000_000 and not args.no_local:
                single = tmp / "month_1000000.parquet"
                _single_file(data, single)
                local_1m = _child(["--child-local", store, str(single), str(tmp / "local_out_1m"), args.config])
                same = local_1m["status"] == fig["status"]
                print(f"  single machine, same 1 M rows: {local_1m['wall']:.1f} s wall, peak RSS "
                      f"{local_1m['peak_gib']:.2f} GiB; spark / single = x{fig['wall'] / local_1m['wall']:.1f} wall; "
                      f"status counts {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
