"""`retain demo --loop`: two monthly cycles of the closed loop, with the measurements checked against the truth.

Cycle 1: decide on month 1 with the champion and the configured acceptance priors, record the run,
simulate what the retention team reports back (`engine.feedback.outcomes`, a known truth), ingest it, report.
Then learn acceptance rates from the outcomes (shrunk toward the priors) and run cycle 2 on month 2
with them. After each report the measured uplift per rule (and overall) is printed next to the
simulator's true effect, with whether the truth lies inside the 95% interval. For month 2 the demo also
decides once more with the priors only (not recorded, nothing sent) and compares the true expected saves
of both decision sets, so the value of learning is shown on the same subscribers, not claimed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from engine.config import Settings
from engine.data.io import write_table

BASE_SEED, MONTH_SEEDS, OUTCOME_SEEDS = 1, (11, 12), (101, 102)


def measured_vs_true(report_table: pd.DataFrame, truth: pd.DataFrame, key: str) -> pd.DataFrame:
    """Join a report table (`engine.feedback.report.measure`) with `engine.feedback.outcomes.true_effects` on `key`."""
    m = report_table[[key, "n_treated", "n_control", "uplift", "ci_low", "ci_high", "verdict"]]
    t = truth[[key, "true_uplift"]]
    out = m.merge(t, on=key, how="inner")
    out["within_ci"] = (out["ci_low"] <= out["true_uplift"]) & (out["true_uplift"] <= out["ci_high"])
    return out


def _champion(settings: Settings, base: Path, trials: int, console: Console) -> str:
    """The champion's version: reuse one if the store has it, else train on the base month and promote."""
    from engine.errors import ModelError
    from engine.model.registry import load_model

    try:
        loaded = load_model(settings, "champion")
        console.print(f"[green]loop[/] using the champion, model version {loaded.version}")
        return str(loaded.version)
    except ModelError:
        pass
    from engine.model.governance import promote
    from training.train import train

    with console.status(f"training the champion: Optuna study, {trials} trials..."):
        result = train(str(base), settings=settings, trials=trials)
    promote(settings, str(result.model_version), "champion", reason="retain demo --loop")
    console.print(f"[green]loop[/] trained and promoted model version {result.model_version} "
                  f"(hold-out ROC AUC {result.roc_auc:.3f})")
    return str(result.model_version)


def _comparison_table(title: str, rows: pd.DataFrame, key: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in (key, "treated", "control", "measured uplift", "95% CI", "true uplift", "truth in CI"):
        table.add_column(col, justify="left" if col == key else "right")
    for r in rows.sort_values("n_treated", ascending=False).itertuples():
        ci = "-" if np.isnan(r.ci_low) else f"{r.ci_low:+.3f}..{r.ci_high:+.3f}"
        table.add_row(str(getattr(r, key)), f"{r.n_treated:,}", f"{r.n_control:,}",
                      "-" if np.isnan(r.uplift) else f"{r.uplift:+.3f}", ci, f"{r.true_uplift:+.3f}",
                      "[green]yes[/]" if r.within_ci else ("-" if np.isnan(r.ci_low) else "[red]no[/]"))
    return table


def _cycle(settings: Settings, n: int, month: Path, folder: Path, run_date: dt.date, console: Console,
           learned: dict[tuple[str, str], float] | None, outcome_seed: int) -> dict[str, Any]:
    from engine.cli.feedback import render_report
    from engine.decision.run import decide_file
    from engine.feedback.ingest import ingest, record_run_dir
    from engine.feedback.outcomes import simulate_outcomes, true_effects
    from engine.feedback.report import build_report, log_report, write_report

    label = f"{n}/2"
    rates = f"{len(learned)} learned acceptance rates" if learned else "configured acceptance priors"
    with console.status(f"cycle {label}: deciding with {rates}..."):
        decided = decide_file(month, folder / "decisions", settings=settings, model="champion", run_date=run_date,
                              learned=learned)
    run = decided.summary["decision_run"]
    recorded = record_run_dir(settings, folder / "decisions")  # nothing written if decide_file recorded it
    console.print(f"[green]cycle {label}[/] decided run {run} with {rates}: "
                  f"{decided.summary['status'].get('offer', 0):,} offers, {decided.summary['control_group']:,} "
                  f"control; {'recorded in' if recorded.recorded else 'already in'} the decision store")

    outcomes = simulate_outcomes(folder / "decisions", seed=outcome_seed, settings=settings)
    write_table(outcomes, folder / "outcomes.csv")
    result = ingest(settings, folder / "outcomes.csv")
    console.print(f"[green]cycle {label}[/] simulated outcomes and ingested them: {result.one_line}")
    again = ingest(settings, folder / "outcomes.csv")
    console.print(f"[green]cycle {label}[/] ingested the same file again: {again.inserted} new, {again.updated} "
                  f"updated, {again.unchanged:,} unchanged (idempotent)")

    report = build_report(settings, run)
    files = write_report(report, folder / "report")
    log_report(settings, report, files)
    render_report(report, console, rows=12)

    overall = measured_vs_true(report.tables["overall"].rename(columns={"group": "rule_id"}),
                               true_effects(folder / "decisions", by=None, settings=settings)
                               .rename(columns={"group": "rule_id"}), "rule_id")
    by_rule = measured_vs_true(report.tables["rule_id"], true_effects(folder / "decisions", settings=settings),
                               "rule_id")
    console.print(_comparison_table(f"Cycle {label}: measured vs true uplift per rule (90 days)",
                                    pd.concat([overall, by_rule], ignore_index=True), "rule_id"))
    testable = by_rule.dropna(subset=["ci_low"])
    o = overall.iloc[0]
    console.print(f"[bold]cycle {label}[/]: overall measured uplift {o['uplift']:+.3f} (95% CI {o['ci_low']:+.3f} to "
                  f"{o['ci_high']:+.3f}) vs true {o['true_uplift']:+.3f}: "
                  f"{'within' if o['within_ci'] else 'OUTSIDE'} its CI; {int(testable['within_ci'].sum())} of "
                  f"{len(testable)} rules' true uplift within their CI (95% expected)")
    return {"run": run, "report": files["html"], "overall_within_ci": bool(o["within_ci"]),
            "overall_uplift": float(o["uplift"]), "overall_ci": [float(o["ci_low"]), float(o["ci_high"])],
            "overall_true_uplift": float(o["true_uplift"]), "rules_within_ci": int(testable["within_ci"].sum()),
            "rules_tested": len(testable), "flagged_rules": [f.rule_id for f in report.flagged]}


def _value_of_learning(settings: Settings, month: Path, folder: Path, run_date: dt.date,
                       console: Console) -> dict[str, float]:
    """Month 2 decided again with priors only (nothing recorded or sent): true expected saves, both ways."""
    from engine.data.io import read_table
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.feedback.outcomes import load_run, subscriber_effects
    from engine.model.registry import load_model

    frame = read_table(month, what="subscriber table")
    with console.status("deciding month 2 again with the priors only, for comparison..."):
        priors = decide_frame(frame, loaded=load_model(settings, "champion"),
                              policy_engine=load_policy_engine(settings.policy_dir), settings=settings,
                              run_date=run_date, source=str(month)).table
    labels = frame[["subscriber_id", "churn", "churn_reason"]].astype({"subscriber_id": str})
    priors = priors.assign(subscriber_id=priors["subscriber_id"].astype(str)).merge(labels, on="subscriber_id")
    learned, _ = load_run(folder / "decisions")
    out = {}
    for name, table in (("priors", priors), ("learned", learned)):
        sent = table[table["status"] == "offer"]
        cost = float((sent["offer_cost"] + sent["channel_cost"]).sum())
        out[f"{name}_true_saves"] = float(subscriber_effects(sent, settings).sum())
        out[f"{name}_offers"] = len(sent)
        out[f"{name}_cost"] = cost
    changed = priors.set_index("subscriber_id")["offer_id"].ne(learned.set_index("subscriber_id")["offer_id"])
    out["offers_changed"] = int(changed.sum())
    console.print(f"[bold]value of learning[/] (month 2, same subscribers, true expected saves within 90 days): "
                  f"priors {out['priors_true_saves']:,.1f} saves from {out['priors_offers']:,} offers costing "
                  f"{out['priors_cost']:,.0f}; learned rates {out['learned_true_saves']:,.1f} saves from "
                  f"{out['learned_offers']:,} offers costing {out['learned_cost']:,.0f}; "
                  f"{out['offers_changed']:,} subscribers got a different offer (or none)")
    return out


def run_loop_demo(settings: Settings, *, rows: int, trials: int, out: Path, console: Console) -> dict[str, Any]:
    """Two monthly cycles: decide, simulate outcomes, ingest, report; learn; decide, simulate, ingest, report."""
    from engine.data.simulator import generate
    from engine.feedback.learning import acceptance_table, learned_acceptance
    from engine.feedback.store import open_store

    out = Path(out) / "loop"
    data = out / "data"
    months = [data / "month_1.parquet", data / "month_2.parquet"]
    with console.status("simulating subscribers..."):
        base = data / "month_base.parquet"
        write_table(generate(rows, seed=BASE_SEED), base)
        for path, seed in zip(months, MONTH_SEEDS, strict=True):
            write_table(generate(rows, seed=seed), path)
    console.print(f"[green]loop[/] simulated {rows:,} subscribers: a base month and months 1 and 2 -> {data}")
    version = _champion(settings, base, trials, console)
    store = open_store(settings)
    assert store is not None
    console.print(f"[green]loop[/] decision store: {store.display_url}")

    today = dt.date.today()
    dates = (today - dt.timedelta(days=30), today)
    first = _cycle(settings, 1, months[0], out / "month_1", dates[0], console, None, OUTCOME_SEEDS[0])

    table = acceptance_table(settings)
    learned = learned_acceptance(settings)
    shown = table.assign(change=(table["learned"] - table["prior"]).abs()).sort_values("change", ascending=False)
    t = Table(title=f"Learned acceptance (k = 50 contacts of prior weight; {len(learned)} pairs used)",
              title_justify="left")
    for col in ("offer", "reason", "contacted", "measured", "prior", "learned"):
        t.add_column(col, justify="left" if col in ("offer", "reason") else "right")
    for r in shown.head(12).itertuples():
        t.add_row(r.offer_id, r.reason, f"{r.contacted:,}", f"{r.measured:.1%}", f"{r.prior:.1%}", f"{r.learned:.1%}")
    console.print(t)

    second = _cycle(settings, 2, months[1], out / "month_2", dates[1], console, learned, OUTCOME_SEEDS[1])
    value = _value_of_learning(settings, months[1], out / "month_2", dates[1], console)
    console.print("\n[bold]Loop outputs[/]")
    for n, cycle in ((1, first), (2, second)):
        console.print(f"  cycle {n}: run {cycle['run']}, report {cycle['report']}")
    console.print(f"  decision store: {store.display_url}   (retain feedback runs; retain report --run ID)")
    return {"model_version": version, "cycles": [first, second], "learned_rates": len(learned),
            "value_of_learning": value}
