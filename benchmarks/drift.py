"""Benchmark `retain drift`: 1 M current rows against a 50 k reference. Target: <= 60 s and <= 4 GiB on 2 cores.

What is timed is the whole check as the CLI runs it (`engine.monitoring.check.run_drift_files`): read the
1 M-row Parquet file, sample it (seeded) to `drift.sample_rows`, score the sample and the reference with a
registered model, run Evidently, write report.html / report.json / summary.json and log the MLflow
monitoring run. It runs in a fresh process so peak RSS is the check's own, not the set-up's (simulating
1 M rows and training a tiny model happen first, untimed).

    .venv/bin/python benchmarks/drift.py                  # default sample_rows (200 k)
    .venv/bin/python benchmarks/drift.py --sample-rows 1000000   # no sampling, for comparison
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(folder: Path, current_rows: int, reference_rows: int) -> dict[str, str]:
    """Simulate the months, train and register a tiny model (untimed)."""
    import yaml

    from engine.config import load_settings
    from engine.data.io import write_table
    from engine.data.simulator import generate
    from engine.model.governance import promote
    from training.train import train

    config = folder / "retain.yaml"
    config.write_text(yaml.safe_dump({"training": {"trials": 1, "folds": 2, "max_iterations": 200,
                                                   "early_stopping_rounds": 20, "reference_sample_rows": 2000}}))
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    t0 = time.perf_counter()
    write_table(generate(20_000, seed=1), folder / "train.parquet")
    write_table(generate(reference_rows, seed=2), folder / "reference.parquet")
    write_table(generate(current_rows, seed=3, scenario="competitor_campaign"), folder / "current.parquet")
    print(f"set-up: simulated {current_rows:,} + {reference_rows:,} rows in {time.perf_counter() - t0:.1f} s",
          flush=True)
    settings = load_settings(config, tracking_uri=uri)
    t0 = time.perf_counter()
    result = train(str(folder / "train.parquet"), settings=settings, trials=1)
    promote(settings, str(result.model_version), "champion", reason="benchmark")
    print(f"set-up: trained model version {result.model_version} in {time.perf_counter() - t0:.1f} s", flush=True)
    return {"config": str(config), "uri": uri}


def check(folder: Path, config: str, uri: str, sample_rows: int | None) -> None:
    """The timed part, in its own process: prints one JSON line with seconds and peak RSS."""
    from engine.config import load_settings
    from engine.monitoring.check import run_drift_files

    settings = load_settings(config, tracking_uri=uri)
    if sample_rows:
        settings = settings.model_copy(update={"drift": settings.drift.model_copy(update={"sample_rows": sample_rows})})
    t0 = time.perf_counter()
    run = run_drift_files(settings, current=folder / "current.parquet", reference=folder / "reference.parquet",
                          model="champion", out=folder / "report")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    r = run.result
    print(json.dumps({"seconds": seconds, "check_seconds": r.seconds, "peak_rss_bytes": peak,
                      "rows": r.current_sampling.rows, "rows_used": r.current_sampling.rows_used,
                      "reference_rows": r.reference_sampling.rows_used, "status": r.status,
                      "one_line": r.one_line}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--current-rows", type=int, default=1_000_000)
    parser.add_argument("--reference-rows", type=int, default=50_000)
    parser.add_argument("--sample-rows", type=int, default=None, help="Override drift.sample_rows")
    parser.add_argument("--_check", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._check:
        folder, config, uri = args._check.split("|")
        check(Path(folder), config, uri, args.sample_rows)
        return 0
    import psutil

    with tempfile.TemporaryDirectory(prefix="retain-drift-bench-") as tmp:
        folder = Path(tmp)
        env = prepare(folder, args.current_rows, args.reference_rows)
        cmd = [sys.executable, __file__, "--_check", f"{folder}|{env['config']}|{env['uri']}"]
        if args.sample_rows:
            cmd += ["--sample-rows", str(args.sample_rows)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = figures["peak_rss_bytes"] / 2**30
    sampled = "seeded sample" if figures["rows_used"] < figures["rows"] else "no sampling"
    print(f"cores: {psutil.cpu_count()}  current rows: {figures['rows']:,}  used: {figures['rows_used']:,} "
          f"({sampled})  reference rows: {figures['reference_rows']:,}")
    print(f"retain drift check: {figures['seconds']:.1f} s (Evidently + quality: {figures['check_seconds']:.1f} s; "
          f"process incl. imports: {wall:.1f} s)  peak RSS: {gib:.2f} GiB")
    print(f"status: {figures['one_line']}")
    ok = figures["seconds"] <= 60 and gib <= 4
    print(f"target <= 60 s and <= 4 GiB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
