"""Issue target: 1 M subscribers end to end (load, score, reasons, segments, policy, arbitration, contact
rules, work orders written) in <= 60 s wall and <= 4 GiB peak RSS on 2 cores; 100 k shown for growth.

A small model is trained once into a throw-away MLflow store; each size then runs `decide_file` in a
fresh process so its peak RSS is its own. Prints subscribers/s and peak RSS per size.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (100_000, 1_000_000)


def child(store: str, data: str, out: str) -> None:
    from engine.config import load_settings
    from engine.decision.run import decide_file

    settings = load_settings(tracking_uri=f"sqlite:///{store}/mlflow.db")
    start = time.perf_counter()
    policies = Path(__file__).resolve().parent.parent / "policies"
    result = decide_file(data, out, settings=settings, model="champion", policy_dir=policies, log_run=False)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # KiB -> GiB
    print(json.dumps({"rows": result.summary["subscribers"], "wall": wall, "peak_gib": peak,
                      "offers": result.summary["status"].get("offer", 0)}))


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return
    from engine.config import load_settings
    from engine.data.io import write_table
    from engine.data.simulator import generate
    from engine.model.governance import promote
    from training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlruns"
        settings = load_settings(tracking_uri=f"sqlite:///{store}/mlflow.db")
        train_file = Path(tmp) / "train.parquet"
        write_table(generate(20_000, seed=1), train_file)
        result = train(str(train_file), settings=settings, trials=2)
        promote(settings, str(result.model_version), "champion", reason="benchmark")
        figures = []
        for n in SIZES:
            data = Path(tmp) / f"month_{n}.parquet"
            write_table(generate(n, seed=11), data)
            cmd = [sys.executable, __file__, "--child", str(store), str(data), str(Path(tmp) / f"out{n}")]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                raise SystemExit(1)
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            figures.append(fig)
            print(f"decide {fig['rows']:>9,} subscribers: {fig['wall']:6.1f} s  "
                  f"{fig['rows'] / fig['wall']:>9,.0f} subscribers/s  peak RSS {fig['peak_gib']:.2f} GiB  "
                  f"offers {fig['offers']:,}")
        small, big = figures[0], figures[-1]
        print(f"growth 100k -> 1M: time x{big['wall'] / small['wall']:.1f}, "
              f"memory x{big['peak_gib'] / small['peak_gib']:.1f} (rows x{big['rows'] / small['rows']:.0f})")
        print(f"target 1M <= 60 s: {'MET' if big['wall'] <= 60 else 'NOT MET'} ({big['wall']:.1f} s); "
              f"<= 4 GiB: {'MET' if big['peak_gib'] <= 4 else 'NOT MET'} ({big['peak_gib']:.2f} GiB); "
              f"stretch <= 30 s: {'MET' if big['wall'] <= 30 else 'not met'}")


if __name__ == "__main__":
    main()
