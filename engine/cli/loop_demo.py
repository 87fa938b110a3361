"""`retain demo --loop`: two monthly cycles of the closed loop, with the measurements checked against the truth.

Cycle 1: decide on month 1 with the champion and the configured acceptance priors (the sample policy set:
acceptance arbitration, 5% exploration with logged propensities), record the run, simulate what the
retention team reports back (`engine.feedback.outcomes`, a known truth), ingest it, report. Then learn
acceptance rates from the outcomes (shrunk toward the priors) and train the uplift model on the logged run
(`retain uplift train`: models:/uplift@champion), and run cycle 2 on month 2 with the same policies under
`arbitration: incremental_value` (a copy of the policy set with that one line changed). After each report
the measured uplift per rule (and overall) is printed next to the simulator's true effect, with whether the
truth lies inside the 95% interval. For month 2 the demo also decides with acceptance arbitration (priors
only, and learned rates; not recorded, nothing sent) and prints the true expected saves and cost of every
way of deciding, so the value of learning and of arbitrating on incremental value is shown on the same
subscribers, not claimed.
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


def incremental_policies(src: Path, dest: Path) -> Path:
    """A copy of the policy set in `src` arbitrating on incremental value (its policy.yaml's one line changed)."""
    import re
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    policy = dest / "policy.yaml"
    text = policy.read_text() if policy.exists() else ""
    line = "arbitration: incremental_value"
    text, n = re.subn(r"(?m)^arbitration:.*$", line, text)
    policy.write_text(text if n else f"{text.rstrip()}\n{line}\n".lstrip())
    return dest


def _cycle(settings: Settings, n: int, month: Path, folder: Path, run_date: dt.date, console: Console,
           learned: dict[tuple[str, str], float] | None, outcome_seed: int,
           policies: Path | None = None) -> dict[str, Any]:
    from engine.cli.feedback import render_report
    from engine.decision.run import decide_file
    from engine.feedback.ingest import ingest, record_run_dir
    from engine.feedback.outcomes import simulate_outcomes, true_effects
    from engine.feedback.report import log_report, write_report
    from engine.uplift.report import spend_report

    label = f"{n}/2"
    rates = f"{len(learned)} learned acceptance rates" if learned else "configured acceptance priors"
    with console.status(f"cycle {label}: deciding..."):
        decided = decide_file(month, folder / "decisions", settings=settings, model="champion", run_date=run_date,
                              learned=learned, policy_dir=policies)
    s = decided.summary
    run = s["decision_run"]
    how = (f"incremental value ({s.get('effect')})" if s.get("arbitration") == "incremental_value"
           else f"arbitration {s.get('arbitration')} with {rates}")
    recorded = record_run_dir(settings, folder / "decisions")  # nothing written if decide_file recorded it
    explored = (s.get("exploration") or {}).get("explored", 0)
    console.print(f"[green]cycle {label}[/] decided run {run} on {how}: {s['status'].get('offer', 0):,} offers, "
                  f"{s['control_group']:,} control, {explored:,} explored (propensities recorded); "
                  f"{'recorded in' if recorded.recorded else 'already in'} the decision store")

    outcomes = simulate_outcomes(folder / "decisions", seed=outcome_seed, settings=settings)
    write_table(outcomes, folder / "outcomes.csv")
    result = ingest(settings, folder / "outcomes.csv")
    console.print(f"[green]cycle {label}[/] simulated outcomes and ingested them: {result.one_line}")
    again = ingest(settings, folder / "outcomes.csv")
    console.print(f"[green]cycle {label}[/] ingested the same file again: {again.inserted} new, {again.updated} "
                  f"updated, {again.unchanged:,} unchanged (idempotent)")

    report = spend_report(settings, run)
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


def _arbitrations(settings: Settings, month: Path, folder: Path, run_date: dt.date, console: Console,
                  learned: dict[tuple[str, str], float] | None) -> dict[str, Any]:
    """Month 2 decided by the policy set's own arbitration (`first` in the sample; acceptance priors, then learned
    rates; nothing recorded or sent) next to the recorded incremental-value run: offers, cost and the
    simulator's true expected saves."""
    from engine.data.io import read_table
    from engine.decision.decide import decide_frame
    from engine.decision.run import load_policy_engine
    from engine.feedback.outcomes import load_run, subscriber_effects
    from engine.model.registry import load_model

    frame = read_table(month, what="subscriber table")
    loaded, engine = load_model(settings, "champion"), load_policy_engine(settings.policy_dir)
    labels = frame[["subscriber_id", "churn", "churn_reason"]].astype({"subscriber_id": str})
    tables = {}
    mode = engine.policy_set.arbitration
    with console.status(f"deciding month 2 again with arbitration {mode}, for comparison..."):
        for name, rates in ((f"{mode}, acceptance priors", None), (f"{mode}, learned rates", learned)):
            t = decide_frame(frame, loaded=loaded, policy_engine=engine, settings=settings, run_date=run_date,
                             source=str(month), learned=rates).table
            tables[name] = t.assign(subscriber_id=t["subscriber_id"].astype(str)).merge(labels, on="subscriber_id")
    tables["incremental value"], _ = load_run(folder / "decisions")
    rows: dict[str, dict[str, float]] = {}
    table = Table(title="Month 2, the same subscribers decided three ways (true expected saves within 90 days, "
                        "from the simulator's truth)", title_justify="left")
    for col in ("arbitration", "offers", "cost", "true saves", "saves per 1,000 spent"):
        table.add_column(col, justify="left" if col == "arbitration" else "right")
    for name, t in tables.items():
        sent = t[t["status"] == "offer"]
        cost = float((sent["offer_cost"] + sent["channel_cost"]).sum())
        saves = float(subscriber_effects(sent, settings).sum())
        rows[name] = {"offers": len(sent), "cost": cost, "true_saves": saves,
                      "saves_per_1000": 1000 * saves / cost if cost else float("nan")}
        table.add_row(name, f"{len(sent):,}", f"{cost:,.0f}", f"{saves:,.1f}",
                      f"{rows[name]['saves_per_1000']:.2f}")
    console.print(table)
    a, i, p = rows[f"{mode}, learned rates"], rows["incremental value"], rows[f"{mode}, acceptance priors"]
    ratio = i["saves_per_1000"] / a["saves_per_1000"] if a["saves_per_1000"] else float("nan")
    console.print(f"[bold]value of learning[/]: learned rates {a['true_saves']:,.1f} saves for {a['cost']:,.0f} vs "
                  f"priors {p['true_saves']:,.1f} for {p['cost']:,.0f}; [bold]incremental value[/]: "
                  f"{i['true_saves']:,.1f} saves for {i['cost']:,.0f}, {ratio:.2f}x the saves per unit cost of "
                  f"arbitration {mode} with learned rates")
    return {"arbitrations": rows, "saves_per_cost_ratio": ratio}


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

    uplift = _train_uplift(settings, first["run"], console)
    policies = incremental_policies(Path(settings.policy_dir), out / "policies_incremental")
    second = _cycle(settings, 2, months[1], out / "month_2", dates[1], console, learned, OUTCOME_SEEDS[1],
                    policies=policies)
    value = _arbitrations(settings, months[1], out / "month_2", dates[1], console, learned)
    console.print("\n[bold]Loop outputs[/]")
    for n, cycle in ((1, first), (2, second)):
        console.print(f"  cycle {n}: run {cycle['run']}, report {cycle['report']}")
    console.print(f"  decision store: {store.display_url}   (retain feedback runs; retain report --run ID)")
    return {"model_version": version, "cycles": [first, second], "learned_rates": len(learned),
            "uplift_model_version": uplift, "value_of_learning": value}


def _train_uplift(settings: Settings, run: str, console: Console) -> str | None:
    """`retain uplift train` on cycle 1's logged run: models:/uplift@champion for cycle 2."""
    from training.uplift import train_uplift

    with console.status("training the uplift model on cycle 1's logged decisions and outcomes..."):
        result = train_uplift(settings, runs=[run], policy_dir=settings.policy_dir)
    fitted = {o: round(i["weight"], 2) for o, i in result.offers.items() if i.get("fitted")}
    q = result.metrics.get("qini", float("nan"))
    console.print(f"[green]loop[/] uplift model version {result.model_version} (alias champion) trained on run {run}: "
                  f"{result.train_rows:,} rows, hold-out Qini {q:+.3f}; offers with a model of their own "
                  f"(weight of the model vs the prior) {fitted or 'none: every offer uses its prior'}")
    return result.model_version
