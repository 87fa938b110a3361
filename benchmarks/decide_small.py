"""Per-call cost of `decide_frame` for the small frames `retain serve` decides (1 and 8 subscribers).

The service's fixed cost per request is this call: it is what limits latency and throughput at a few
concurrent clients. The call is made as the service makes it (request rows as the app builds them from
JSON, contact history from the store's shape, a RunState with today's allowance and threshold grading).
Prints the median, best and 90th percentile wall time of `--repeat` calls per size, and the median CPU time
of the calling thread (steadier than wall time on a machine shared with other jobs); `--profile` prints the
top of a cProfile.

    .venv/bin/python benchmarks/decide_small.py                              # trains a small model first
    .venv/bin/python benchmarks/decide_small.py --config C --tracking-uri U --profile
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SIZES = (1, 8)


def request_frames(n_calls: int, size: int) -> list[pd.DataFrame]:
    """Frames as the app builds them: JSON rows -> the request model -> one dict per row -> DataFrame."""
    from engine.data.simulator import generate
    from engine.serve.schema import DecisionRequest

    df = generate(n_calls * size, seed=11).drop(columns=["churn", "churn_reason"])
    rows = json.loads(df.to_json(orient="records"))
    out = []
    for i in range(n_calls):
        body = DecisionRequest.model_validate({"subscribers": rows[i * size:(i + 1) * size]})
        out.append(pd.DataFrame([r.model_dump() for r in body.subscribers]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from engine.config import load_settings
    from engine.decision.constrain import RunState
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.model.registry import load_model
    from engine.serve.ledger import _EMPTY_HISTORY

    with tempfile.TemporaryDirectory() as tmp:
        if args.config and args.tracking_uri:
            cfg, uri = args.config, args.tracking_uri
        else:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from serve import make_store

            print("training a small model into a throw-away store ...", flush=True)
            cfg, uri = make_store(Path(tmp))
        settings = load_settings(Path(cfg), tracking_uri=uri)
        loaded = load_model(settings, "champion")
        engine = load_policy_engine(ROOT / "policies")
        today = dt.date.today()

        def call(frame: pd.DataFrame) -> None:
            state = RunState(budget_left=settings.arbitration.budget,
                             capacity_left={ch: c.daily_capacity for ch, c in settings.channels.items()},
                             control=settings.control_group,
                             risk_cutoffs=(settings.risk_grades.high, settings.risk_grades.medium))
            decide_frame(frame, loaded=loaded, policy_engine=engine, settings=settings, run_date=today,
                         source="request", history=_EMPTY_HISTORY.copy(), learned=None, state=state)

        for size in SIZES:
            frames = request_frames(args.repeat + 5, size)
            for f in frames[:5]:  # warm-up: first calls build caches
                call(f)
            times, cpu = [], []
            prof = cProfile.Profile() if args.profile else None
            for f in frames[5:]:
                t, c = time.perf_counter(), time.thread_time()
                if prof:
                    prof.enable()
                call(f)
                if prof:
                    prof.disable()
                times.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
            ms, cpu_ms = np.array(times) * 1000, np.array(cpu) * 1000
            print(json.dumps({"rows": size, "calls": len(ms), "median_ms": round(float(np.median(ms)), 2),
                              "best_ms": round(float(ms.min()), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
                              "cpu_median_ms": round(float(np.median(cpu_ms)), 2)}),
                  flush=True)
            if prof:
                pstats.Stats(prof).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
