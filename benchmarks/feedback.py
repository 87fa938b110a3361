"""The decision store at scale: record a 1 M-subscriber run, ingest 1 M outcomes (then the same file
again: idempotent), build the report and the learned acceptance rates. Prints rows/s and peak RSS.

The decision table is synthetic (the columns `record_run` stores, shaped like a real run: ~30% offers,
10% of those control), so the figures are the store's, not the model's. SQLite in a temp folder.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SIZES = (100_000, 1_000_000)


def synthetic(n: int, run: str, seed: int = 0) -> tuple[pd.DataFrame, dict, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rules = np.array([f"rule-{i}" for i in range(14)], dtype=object)
    offers = np.array([f"offer_{i}" for i in range(14)], dtype=object)
    channels = np.array(["sms", "app_popup", "outbound_call", "front_desk", "vip_manager"], dtype=object)
    reasons = np.array(["price", "network", "usage_decline", "competitor", "balance", "none"], dtype=object)
    targeted = rng.random(n) < 0.3
    control = targeted & (rng.random(n) < 0.1)
    status = np.where(control, "control", np.where(targeted, "offer", "not_worth_it")).astype(object)
    k = rng.integers(0, 14, n)
    table = pd.DataFrame({
        "subscriber_id": pd.array([f"S{i:08d}" for i in range(n)], dtype=object),
        "status": status, "control": control,
        "rule_id": np.where(targeted, rules[k], None), "offer_id": np.where(targeted, offers[k], None),
        "channel": np.where(targeted, channels[k % 5], None), "policy_rule": np.where(targeted, rules[k], None),
        "stage": np.where(targeted, "intervention", None), "risk_grade": rng.choice(["high", "medium", "low"], n),
        "value_tier": rng.choice(["high", "medium", "low"], n), "lifecycle_stage": "mature", "need_group": "family",
        "reason": reasons[rng.integers(0, 6, n)], "churn_probability": rng.random(n), "p_accept": 0.2,
        "offer_cost": np.where(status == "offer", 10.0, 0.0), "channel_cost": np.where(status == "offer", 0.5, 0.0),
        "expected_saved_value": rng.random(n) * 50, "net_value": rng.random(n) * 40, "arpu_m0": rng.random(n) * 80,
    })
    offered = table[status == "offer"]
    orders = pd.DataFrame({"order_id": [f"{run}-{i:07d}" for i in range(1, len(offered) + 1)],
                           "subscriber_id": offered["subscriber_id"].to_numpy(),
                           "channel": offered["channel"].to_numpy(), "offer_id": offered["offer_id"].to_numpy(),
                           "rule_id": offered["rule_id"].to_numpy(), "priority": 50, "due_date": "2024-03-06"})
    churn = rng.random(n) < 0.2
    contacted = (status == "offer") & (rng.random(n) < 0.7)
    outcomes = pd.DataFrame({"decision_run": run, "subscriber_id": table["subscriber_id"], "contacted": contacted,
                             "accepted": contacted & (rng.random(n) < 0.2), "churned_30d": churn,
                             "churned_60d": churn, "churned_90d": churn, "revenue_after": rng.random(n) * 200})
    summary = {"decision_run": run, "decided_on": "2024-03-01", "model": "bench", "model_version": "1",
               "policy_hash": "0" * 64}
    return table, summary, orders, outcomes


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def main() -> None:
    from engine.config import load_settings
    from engine.feedback.ingest import ingest, record_run
    from engine.feedback.learning import learned_acceptance
    from engine.feedback.report import build_report

    sizes = [int(a) for a in sys.argv[1:]] or SIZES
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")
            table, summary, orders, outcomes = synthetic(n, f"R{n}")
            path = Path(tmp) / "outcomes.parquet"
            outcomes.to_parquet(path, index=False)
            figures = {}
            t = time.perf_counter()
            record_run(settings, table, summary, work_orders=orders)
            figures["record"] = time.perf_counter() - t
            t = time.perf_counter()
            first = ingest(settings, path)
            figures["ingest"] = time.perf_counter() - t
            t = time.perf_counter()
            again = ingest(settings, path)
            figures["re-ingest"] = time.perf_counter() - t
            assert first.inserted == n and again.unchanged == n
            t = time.perf_counter()
            report = build_report(settings)
            figures["report"] = time.perf_counter() - t
            t = time.perf_counter()
            learned = learned_acceptance(settings)
            figures["learn"] = time.perf_counter() - t
            size = sum(f.stat().st_size for f in Path(tmp, "store").glob("retain.db*")) / 1024**2
            print(f"{n:>9,} subscribers ({len(orders):,} orders): "
                  + ", ".join(f"{k} {v:.1f} s ({n / v:,.0f} rows/s)" for k, v in figures.items())
                  + f"; {len(report.tables['rule_id'])} rules, {len(learned)} learned rates; store {size:,.0f} MiB; "
                  f"peak RSS {peak_gib():.2f} GiB")


if __name__ == "__main__":
    main()
