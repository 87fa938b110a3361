"""Simulator throughput and memory: rows/s and peak RSS for 100k and 1M subscribers.

Why one fresh process per size: peak RSS (``ru_maxrss``) only ever grows within a process, so measuring
1M rows after 100k in the same interpreter would report the larger run twice. Each size runs in its
own child and reports generation time, Parquet write time and size, and the child's peak RSS.

Usage: ``.venv/bin/python benchmarks/simulate.py [ROWS ...]`` (default: 100000 1000000).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SIZES = (100_000, 1_000_000)


def measure(rows: int, seed: int = 0) -> dict[str, float]:
    """Generate `rows` subscribers and write them to Parquet; return timings and this process's peak RSS."""
    from engine.data.io import write_table
    from engine.data.simulator import generate, summary

    start = time.perf_counter()
    df = generate(rows, seed=seed)
    gen_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "month.parquet"
        start = time.perf_counter()
        write_table(df, path)
        write_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"rows": rows, "generate_s": gen_s, "rows_per_s": rows / gen_s, "write_parquet_s": write_s,
            "parquet_mb": size_mb, "frame_mb": df.memory_usage(deep=True).sum() / 1e6, "peak_rss_mb": peak_mb,
            "churn_rate": float(summary(df)["churn_rate"])}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        print(json.dumps(measure(int(argv[1]))))
        return
    sizes = [int(a) for a in argv] or list(DEFAULT_SIZES)
    print(f"{'rows':>10} {'generate s':>10} {'rows/s':>12} {'parquet s':>9} {'parquet MB':>10} "
          f"{'frame MB':>9} {'peak RSS MB':>11} {'churn':>6}")
    root = Path(__file__).resolve().parent.parent
    for rows in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(rows)], cwd=root, check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{r['rows']:>10,} {r['generate_s']:>10.2f} {r['rows_per_s']:>12,.0f} "
              f"{r['write_parquet_s']:>9.2f} {r['parquet_mb']:>10.1f} {r['frame_mb']:>9.0f} "
              f"{r['peak_rss_mb']:>11.0f} {r['churn_rate']:>6.1%}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(sys.argv[1:])
