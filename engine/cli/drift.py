"""`retain drift`: the scheduled check (exit code 0 healthy / 1 drift or decay / 2 error) and its history.

Mounted by `engine.cli.main` as `retain drift`. The check is the group's callback (invoke_without_command), so
`retain drift --current FILE --out DIR` runs it and `retain drift history` runs the sub-command; the
callback returns at once when a sub-command follows. Why it catches RetainError itself: the exit-code
contract is what a scheduler acts on, so it must hold even when this sub-app is used on its own.
Thin by design: parse, call `engine.monitoring.check.run_drift_files`, render.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from engine.cli.common import settings_for
from engine.errors import RetainError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(add_completion=False, rich_markup_mode="rich",
                  help="Drift and performance checks with an alerting exit code (0 healthy, 1 drift or decay, "
                       "2 error), and their history.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings YAML overriding the defaults "
                                                "(also ./retain.yaml or $RETAIN_CONFIG); thresholds under drift:.")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                 help="MLflow store (default sqlite:///mlruns/mlflow.db).")]


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)




def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_result(summary: dict[str, Any]) -> None:
    """Signals with thresholds, then the drifted features: what an operator reads before the HTML."""
    t = summary["thresholds"]
    feats = summary["features"]
    table = Table(title=f"Drift check: {summary['status'].upper()}", title_justify="left")
    for col in ("signal", "value", "alert at", "alert"):
        table.add_column(col)
    imp = feats.get("important")
    if imp:
        if imp["rule"] == "any_feature":
            table.add_row("any flagged feature (no importances)", ", ".join(imp["drifted"]) or "none",
                          "any", "yes" if imp["drifted"] else "no")
        else:
            table.add_row(f"top-{imp['k']} important inputs drifted", ", ".join(imp["drifted"]) or "none",
                          f"any of {', '.join(imp['top'])}", "yes" if imp["drifted"] else "no")
    table.add_row("drifted features", f"{feats['drifted_count']}/{feats['count']} ({feats['drifted_share']:.0%})",
                  f">= {t['drift_share']:.0%}", "yes" if feats.get("share_alert", feats["alert"]) else "no")
    if summary["prediction"]:
        p = summary["prediction"]
        table.add_row("score drift (Wasserstein)", _fmt(p["score"]), f">= {t['score_threshold']}",
                      "yes" if p["drifted"] else "no")
        table.add_row("mean churn probability", f"{p['mean_current']:.3f} (ref {p['mean_reference']:.3f})", "", "")
    if summary["risk_mix"]:
        r = summary["risk_mix"]
        mix = ", ".join(f"{g} {r['reference'][g]:.0%}->{r['current'][g]:.0%}" for g in r["current"])
        table.add_row("risk-mix shift (PSI)", f"{_fmt(r['score'])}  [{mix}]", f">= {t['risk_mix_threshold']}",
                      "yes" if r["drifted"] else "no")
    q = summary["quality"]
    if q and q.get("current"):
        ref = q.get("reference") or {}
        table.add_row("ROC AUC", f"{q['current']['roc_auc']:.3f} (ref {_fmt(ref.get('roc_auc'))})",
                      f"drop >= {t['auc_drop']}", "yes" if q["decayed"] else "no")
        table.add_row("PR AUC", f"{q['current']['pr_auc']:.3f} (ref {_fmt(ref.get('pr_auc'))})", "", "")
        table.add_row("calibration error (ECE)", f"{q['current']['ece']:.3f} (ref {_fmt(ref.get('ece'))})", "", "")
    console.print(table)
    drifted = [(c, row) for c, row in feats["columns"].items() if row["drifted"]]
    if drifted:
        ft = Table(title="Drifted features", title_justify="left")
        for col in ("feature", "kind", "method", "score", "threshold"):
            ft.add_column(col)
        for name, row in sorted(drifted, key=lambda item: -(item[1]["score"] or 0)):
            ft.add_row(name, row["kind"], str(row["method"]), _fmt(row["score"]), _fmt(row["threshold"]))
        console.print(ft)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


@app.callback(invoke_without_command=True)
def drift(
    ctx: typer.Context,
    current: Annotated[Path | None, typer.Option("--current", help="This period's subscriber table "
                                                 "(.parquet/.csv); outcomes column optional.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for report.html, report.json and "
                                             "summary.json (published together, never partially).")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="Reference table; default: the hold-out "
                                                   "sample logged with the model at training.")] = None,
    model: Annotated[str, typer.Option("--model", help="Alias, version number or models:/ URI of the model; "
                                       "'none' for feature drift without a model.")] = "champion",
    webhook: Annotated[str | None, typer.Option("--webhook", help="POST summary.json to this URL; if it "
                                                "fails: exit 2 and nothing is published.")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Record the check as an MLflow monitoring "
                                      "run (needed for `retain drift history`).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json as the last line instead of "
                                          "the one-line status.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Check a month for data drift, score drift, risk-mix shift and (with outcomes) AUC decay.

    Exit code: 0 healthy, 1 drift or decay, 2 error. The last line printed is the one-line status.
    """
    if ctx.invoked_subcommand is not None:
        # `retain drift --config X history`: options given before the sub-command still apply to it.
        ctx.obj = {"config": config, "tracking_uri": tracking_uri}
        return
    if current is None or out is None:
        missing = " and ".join(name for name, v in (("--current FILE", current), ("--out DIR", out)) if v is None)
        raise _fail(f"retain drift needs {missing} (see `retain drift --help`)")
    from engine.monitoring.check import run_drift_files

    try:
        settings = settings_for(config, tracking_uri)
        with err_console.status("checking drift..."):
            run = run_drift_files(settings, current=current, reference=reference, model=model, out=out,
                                  webhook=webhook, log=log)
    except RetainError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # a bug, not bad input: still exit 2, never 1 (1 means "drift" to a scheduler)
        if os.environ.get("RETAIN_DEBUG"):
            err_console.print_exception()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _fail(f"unexpected failure ({type(exc).__name__}: {first}); this is a bug in retain, "
                    "set RETAIN_DEBUG=1 for the traceback") from None
    summary = run.summary()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        render_result(summary)
        console.print(f"report: {run.paths['html']}  (JSON: {run.paths['json']}, status: {run.paths['summary']})",
                      highlight=False, soft_wrap=True)
        if run.mlflow_run_id:
            console.print(f"MLflow monitoring run: {run.mlflow_run_id}", highlight=False)
        typer.echo(run.one_line)
    raise typer.Exit(run.exit_code)


@app.command("history")
def history(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", help="Only checks of this alias or version "
                                              "(default: all versions).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write history.html (trend chart + table) and "
                                             "history.csv here.")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="Only checks against this reference data "
                                                  "set (its fingerprint, or the start of it).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most recent checks to show.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Past drift checks per model version and reference data set, oldest first, from the MLflow monitoring runs."""
    from engine.monitoring import tracking
    from engine.monitoring.history import write_history

    parent = ctx.obj if isinstance(ctx.obj, dict) else {}
    try:
        settings = settings_for(config or parent.get("config"), tracking_uri or parent.get("tracking_uri"))
        version = _resolve_version(settings, model) if model else None
        frame = tracking.history(settings, version=version, reference=reference, limit=limit)
        paths = None
        if out is not None:
            title = f"Drift checks of model '{settings.model_name}'" + (f" version {version}" if version else "")
            paths = write_history(frame, settings, out, title=title)
    except RetainError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(frame.to_json(orient="records"))
        return
    if frame.empty:
        console.print("No drift checks logged yet" + (f" for version {version}" if version else "")
                      + ": run `retain drift --current FILE --out DIR`.")
    else:
        # One table per series (a model version judged against one reference data set): checks of unrelated
        # data sets are never read as one trend.
        shown = {"checked_at": "checked (UTC)", "status": "status", "drifted_share": "drifted",
                 "score_drift": "score", "risk_mix_psi": "PSI", "roc_auc": "AUC", "reference_roc_auc": "ref AUC"}
        for series, group in frame.groupby("series", sort=True):
            table = Table(title=f"Drift checks of {series} (oldest first)", title_justify="left")
            for header in shown.values():
                table.add_column(header, no_wrap=True)
            for row in group[list(shown)].itertuples(index=False):
                cells = [_fmt(v) if not isinstance(v, float) or v == v else "-" for v in row]
                cells[0] = cells[0][:16]  # minutes are enough on screen; history.csv keeps seconds
                table.add_row(*cells)
            console.print(table)
    if paths:
        console.print(f"trend chart: {paths['html']}  (table: {paths['csv']})", highlight=False, soft_wrap=True)


def _resolve_version(settings, model: str) -> str:
    """A version number stays as is; an alias is looked up in the registry (ModelError when unknown)."""
    if model.isdigit():
        return model
    from engine.errors import ModelError
    from engine.model.registry import connect

    client = connect(settings)
    try:
        return str(client.get_model_version_by_alias(settings.model_name, model).version)
    except Exception:
        raise ModelError(f"no version of model '{settings.model_name}' has alias '{model}'",
                         hint="see `retain models list`") from None
