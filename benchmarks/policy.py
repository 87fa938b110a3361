"""Benchmark: the sample policy set over 1,000,000 subscribers, and agreement with the per-subscriber path.

    .venv/bin/python benchmarks/policy.py [--rows 1000000] [--check-rows 20000] [--policies policies]

Prints subscribers/s of PolicyEngine.decide, the number of distinct combinations of rule inputs that
durable-rules actually evaluated, and checks on a smaller population that the batch result equals
(a) the per-subscriber path (every subscriber asserted to durable-rules on its own) and (b) decide_one
for EVERY subscriber. Target (issue 5): 1 M subscribers in <= 10 s on 2 cores.
The frame is built with numpy (engine.policy.synthetic): every DECISION_ATTRIBUTE, engine outputs drawn
directly, so no model is needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.policy import PolicyEngine, load_policy_set  # noqa: E402
from engine.policy.synthetic import synthetic_frame  # noqa: E402


def _plain(v):
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="population for the timing")
    ap.add_argument("--check-rows", type=int, default=20_000, help="population checked subscriber by subscriber")
    ap.add_argument("--policies", default="policies", help="policy folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    day = dt.date(2026, 6, 1)

    ps = load_policy_set(args.policies)
    engine = PolicyEngine(ps, decision_date=day)
    print(f"policy set {args.policies}: {len(ps.rules)} rules, {len(ps.offers)} offers, "
          f"{len(ps.attributes)} attributes, hash {ps.content_hash[:12]}; cpus {os.cpu_count()}")

    t0 = time.perf_counter()
    frame = synthetic_frame(args.rows, seed=args.seed)
    print(f"built {len(frame):,} synthetic subscribers in {time.perf_counter() - t0:.1f} s")
    engine.decide(frame.head(1000))  # warm-up
    t0 = time.perf_counter()
    ev = engine.evaluate(frame)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = engine.decide(frame)
    t_decide = time.perf_counter() - t0
    rate = len(frame) / t_decide
    print(f"decide: {len(frame):,} subscribers in {t_decide:.2f} s = {rate:,.0f} subscribers/s "
          f"({'meets' if t_decide <= 10 * len(frame) / 1_000_000 else 'MISSES'} the 10 s per 1 M target)")
    print(f"  distinct combinations of rule inputs: {ev.distinct_inputs:,}; after merging don't-care "
          f"attributes: {ev.n_classes:,} facts asserted to durable-rules (evaluate alone {t_eval:.2f} s)")
    print(f"  with an offer: {out['offer_id'].notna().mean():.1%}; top offers: "
          + ", ".join(f"{k} {v:,}" for k, v in out["offer_id"].value_counts().head(5).items()))
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")

    sample = frame.sample(1000, random_state=args.seed)
    batch = out.loc[sample.index]
    agree = sum(engine.decide_one(r) == {k: _plain(v) for k, v in batch.loc[i].items()}
                for i, r in zip(sample.index, sample.to_dict(orient="records"), strict=True))
    print(f"decide_one vs decide on a sample of {len(sample):,} of the {len(frame):,}: {agree:,} agree")

    small = synthetic_frame(args.check_rows, seed=args.seed + 1)
    t0 = time.perf_counter()
    batch = engine.decide(small)
    t_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    each = engine.decide(small, per_row=True)
    t_e = time.perf_counter() - t0
    same = (batch.fillna("<NA>") == each.fillna("<NA>")).all(axis=1)
    print(f"per-subscriber path (each of {len(small):,} asserted alone to durable-rules, {t_e:.1f} s, "
          f"{len(small) / t_e:,.0f}/s) vs batch ({t_b:.2f} s): {int(same.sum()):,} of {len(small):,} agree")
    t0 = time.perf_counter()
    ones = 0
    for i, rec in enumerate(small.to_dict(orient="records")):
        ones += engine.decide_one(rec) == {k: _plain(v) for k, v in batch.iloc[i].items()}
    print(f"decide_one on every one of the {len(small):,} subscribers ({time.perf_counter() - t0:.1f} s): "
          f"{ones:,} of {len(small):,} agree with decide")
    ok = agree == len(sample) and bool(same.all()) and ones == len(small)
    print("AGREEMENT OK" if ok else "AGREEMENT FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
