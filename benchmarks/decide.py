"""Issue target: 1 M subscribers decided end to end (load, validate, score, reasons, segments, policies,
contact rules, arbitration, work orders, outputs written) in <= 15 s wall and <= 2 GiB peak RSS on 2 cores.

A small model is trained once into a throw-away MLflow store and data is generated with
`engine.data.simulator`. Each size then runs in a fresh process, so its peak RSS is its own:
1. the reference: load the model and predict churn probabilities for the same rows (`ChurnModel.score`);
2. `decide_file` on the same rows, outputs written.
Prints, per size: wall, CPU seconds, peak RSS, subscribers/s, and decide's wall over the reference's.
The machine's load average is printed too: on a shared 2-core machine other processes inflate wall time.

    .venv/bin/python benchmarks/decide.py             # 100 k and 1 M
    .venv/bin/python benchmarks/decide.py 200000      # any sizes
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
TARGET_WALL, TARGET_GIB = 15.0, 2.0
ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # KiB -> GiB


def child_predict(store: str, data: str) -> None:
    """Reference: read the rows, load the model, predict (what any scorer must do at least)."""
    from engine.config import load_settings
    from engine.data.io import read_table
    from engine.decision.run import decide_file  # noqa: F401  (the same imports as the decide child, untimed)
    from engine.model.registry import load_model

    settings = load_settings(tracking_uri=f"sqlite:///{store}/mlflow.db")
    start, cpu = time.perf_counter(), _cpu()
    frame = read_table(data)
    loaded = load_model(settings, "champion")
    scores = loaded.model.score(frame)
    print(json.dumps({"rows": len(scores), "wall": time.perf_counter() - start, "cpu": _cpu() - cpu,
                      "peak_gib": _peak_gib()}))


def child_decide(store: str, data: str, out: str) -> None:
    from engine.config import load_settings
    from engine.decision.run import decide_file

    settings = load_settings(tracking_uri=f"sqlite:///{store}/mlflow.db")
    stages: dict[str, float] = {}
    start, cpu = time.perf_counter(), _cpu()
    last = [start]

    def progress(stage: str, done: int, total: int) -> None:
        if done == total:
            now = time.perf_counter()
            stages[stage] = stages.get(stage, 0.0) + now - last[0]
            last[0] = now

    result = decide_file(data, out, settings=settings, model="champion", policy_dir=ROOT / "policies",
                         log_run=False, record=False, learned=False, progress=progress)
    wall = time.perf_counter() - start
    stages["outputs"] = time.perf_counter() - last[0]
    print(json.dumps({"rows": result.summary["subscribers"], "wall": wall, "cpu": _cpu() - cpu,
                      "peak_gib": _peak_gib(), "offers": result.summary["status"].get("offer", 0),
                      "stages": stages}))


def _run(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(1)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--predict":
        child_predict(*sys.argv[2:])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "--decide":
        child_decide(*sys.argv[2:])
        return
    sizes = tuple(int(a) for a in sys.argv[1:]) or SIZES
    sys.path.insert(0, str(ROOT))
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
        for n in sizes:
            data = Path(tmp) / f"month_{n}.parquet"
            write_table(generate(n, seed=11), data)
            ref = _run(["--predict", str(store), str(data)])
            fig = _run(["--decide", str(store), str(data), str(Path(tmp) / f"out{n}")])
            load = os.getloadavg()[0]
            print(f"decide {fig['rows']:>9,} subscribers: {fig['wall']:6.1f} s wall, {fig['cpu']:6.1f} s CPU, "
                  f"{fig['rows'] / fig['wall']:>9,.0f} subscribers/s, peak RSS {fig['peak_gib']:.2f} GiB, "
                  f"offers {fig['offers']:,}")
            print(f"  load + predict the same rows: {ref['wall']:.1f} s wall, {ref['cpu']:.1f} s CPU, peak RSS "
                  f"{ref['peak_gib']:.2f} GiB; decide / predict = x{fig['wall'] / ref['wall']:.1f} wall "
                  f"(load average {load:.1f} on {os.cpu_count()} cores)")
            print("  stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in fig["stages"].items()))
            if n == 1_000_000:
                ok_t, ok_m = fig["wall"] <= TARGET_WALL, fig["peak_gib"] <= TARGET_GIB
                print(f"target 1M <= {TARGET_WALL:.0f} s: {'MET' if ok_t else 'NOT MET'} ({fig['wall']:.1f} s); "
                      f"<= {TARGET_GIB:.0f} GiB: {'MET' if ok_m else 'NOT MET'} ({fig['peak_gib']:.2f} GiB)")


if __name__ == "__main__":
    main()
