"""`retain demo`: the closed loop on built-in data, so a new user sees every stage work in minutes.

Why these months: a base month to train on; a second sample of the same month (a drift check must stay
quiet on it); and a later month where a competitor campaign really moved the data (a drift check
must fire). Decisions are made on the later month, as an operator would at the start of a month.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from engine.config import Settings
from engine.data.io import write_table
from engine.errors import ModelError

BASE_SEED, SAME_SEED, DRIFT_SEED = 1, 2, 3
DRIFT_SCENARIO = "competitor_campaign"


def run_demo(settings: Settings, *, rows: int, trials: int, out: Path, console: Console) -> dict[str, object]:
    from engine.cli.main import render_decision_summary
    from engine.data.simulator import generate
    from engine.decision.run import decide_file
    from engine.model.governance import promote
    from engine.monitoring.check import run_drift_files
    from training.train import train

    data = out / "data"
    paths = {"base": data / "month_base.parquet", "same": data / "month_same.parquet",
             "drifted": data / "month_drifted.parquet"}
    with console.status("1/5 simulating subscribers..."):
        write_table(generate(rows, seed=BASE_SEED), paths["base"])
        write_table(generate(rows, seed=SAME_SEED), paths["same"])
        write_table(generate(rows, seed=DRIFT_SEED, scenario=DRIFT_SCENARIO), paths["drifted"])
    console.print(f"[green]1/5[/] simulated {rows:,} subscribers x 3 months -> {data}")

    with console.status(f"2/5 training: Optuna study, {trials} trials..."):
        result = train(str(paths["base"]), settings=settings, trials=trials)
    console.print(f"[green]2/5[/] trained model version {result.model_version}: hold-out ROC AUC "
                  f"{result.roc_auc:.3f}, PR AUC {result.pr_auc:.3f}, log loss {result.log_loss:.3f}")

    try:
        _, verdict = promote(settings, str(result.model_version), "champion", reason="retain demo",
                             data=str(paths["same"]))
        console.print(f"[green]3/5[/] promoted version {result.model_version} to alias 'champion' ({verdict})")
    except ModelError as exc:  # a re-run whose new version is worse than the champion: keep the champion
        console.print(f"[yellow]3/5[/] kept the current champion: {exc}")

    with console.status("4/5 deciding..."):
        decided = decide_file(paths["drifted"], out / "decisions", settings=settings, model="champion")
    console.print("[green]4/5[/] decisions:")
    render_decision_summary(decided.summary)

    checks = {}
    with console.status("5/5 drift checks..."):
        for name, current in (("drift_same_month", paths["same"]), ("drift_competitor_month", paths["drifted"])):
            checks[name] = run_drift_files(settings, current=current, reference=paths["base"], model="champion",
                                           out=out / name)
    for name, check in checks.items():
        console.print(f"[green]5/5[/] {name}: {check.one_line} -> {out / name / 'report.html'}")

    uri = settings.tracking_uri
    console.print("\n[bold]Outputs[/]")
    console.print(f"  data:         {data}")
    console.print(f"  decisions:    {out / 'decisions' / 'decisions.parquet'}")
    console.print(f"  work orders:  {out / 'decisions' / 'work_orders'}/<channel>.csv")
    for name in checks:
        console.print(f"  drift report: {out / name / 'report.html'}")
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    shown = os.path.relpath(mlflow_bin) if mlflow_bin.exists() else "mlflow"
    console.print(f"  MLflow:       {shown} ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)")
    return {"train": result.summary(), "decisions": decided.summary,
            "drift": {k: v.one_line for k, v in checks.items()}}
