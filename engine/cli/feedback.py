"""`retain feedback` (ingest outcomes, record and list runs, the store, learned acceptance), `retain report`
and `retain data outcomes`.

Thin by design (see engine/cli/main.py): parse options, call one library function (`engine.feedback.ingest`,
`engine.feedback.report`, `engine.feedback.learning`, `engine.feedback.outcomes`), render with
rich. User mistakes are RetainErrors;
this sub-app's group (`engine.cli.common.ErrorGroup`) prints them as `error: <message>` and exits 2, the
same as the root group, so it behaves the same mounted or on its own. `report_command` and
`outcomes_command` are plain functions that the root app registers as `retain report` and
`retain data outcomes`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.common import ErrorGroup, err_console, settings_for

console = Console(soft_wrap=True)


app = typer.Typer(cls=ErrorGroup, no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Outcomes back in: ingest contact outcomes, record and list decision runs, learned "
                       "acceptance rates, the decision store.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings YAML overriding the defaults "
                                                "(also ./retain.yaml or $RETAIN_CONFIG).")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                 help="MLflow store: sqlite:///mlruns/mlflow.db by default, "
                                                      "or a server such as http://mlflow:5000.")]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="RETAIN_STORE_URL",
    help="Decision store: a SQLAlchemy URL (sqlite:///store/retain.db, postgresql+psycopg://host/db). "
         "Default: store/retain.db next to the MLflow store folder.")]


def report_console() -> Console:
    """The terminal's width on a terminal; 140 columns when piped or captured (rich would assume 80)."""
    import os

    out = Console(soft_wrap=True)
    if out.is_terminal or os.environ.get("COLUMNS"):
        return out
    return Console(soft_wrap=True, width=140)


def _fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "signed":
        return f"{v:+.3f}"
    if kind == "money":
        return f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------------------------------
# retain feedback ...
# ---------------------------------------------------------------------------------------------
@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="Outcome file (.csv/.parquet): order_id or subscriber_id + "
                                              "decision_run; contacted, accepted, churned_30d (yes/no); optional "
                                              "churned_60d, churned_90d, revenue_after.")],
    strict: Annotated[bool, typer.Option(help="Refuse the whole file when any row names an unknown order or "
                                              "subscriber (default: store the known rows, report the rest).")] = False,
    rejects: Annotated[Path | None, typer.Option(help="Write the rows naming unknown orders or subscribers to "
                                                      "this CSV, with the problem and whether it was stored.")] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Validate outcome records and store them; re-ingesting the same file changes nothing.

    Each row is stored on its decision (decision run + subscriber): a later file with more columns filled in
    (the 90-day churn flag) updates those rows. Rows naming unknown orders or subscribers are reported with
    a count and examples, never silently dropped.
    """
    from engine.data.io import write_table
    from engine.feedback.ingest import ingest as run_ingest

    result = run_ingest(settings_for(config, tracking_uri), file, url=store, strict=strict)
    console.print(result.one_line, highlight=False)
    for note in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    if len(result.unknown):
        err_console.print(f"[yellow]warning:[/] {len(result.unknown):,} row(s) name an unknown order or subscriber "
                          f"({result.not_stored:,} not stored); for example:", highlight=False)
        for line in result.unknown_examples():
            err_console.print(f"  {escape(line)}", highlight=False)
        if rejects:
            write_table(result.unknown, rejects)
            err_console.print(f"  all of them: {rejects}", highlight=False)


@app.command()
def record(
    decisions: Annotated[Path, typer.Argument(help="Decisions folder written by `retain decide` "
                                                   "(decisions.parquet, summary.json, work_orders/).")],
    replace: Annotated[bool, typer.Option(help="Delete the stored run (and its outcomes) and record it again.")
                       ] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Record a decision run into the decision store (recording it again changes nothing)."""
    from engine.feedback.ingest import record_run_dir

    result = record_run_dir(settings_for(config, tracking_uri), decisions, url=store, replace=replace)
    console.print(result.one_line, highlight=False)


def _open(store: str | None, config: Path | None, tracking_uri: str | None):
    """The decision store, created and migrated if new (open_store only returns None with create=False)."""
    from engine.feedback.store import open_store

    st = open_store(settings_for(config, tracking_uri), url=store)
    assert st is not None
    return st


@app.command()
def runs(
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """List the decision runs in the store, newest first, with their work orders and outcomes."""
    st = _open(store, config, tracking_uri)
    frame = st.runs()
    table = Table(title=f"Decision runs in {st.display_url}", title_justify="left")
    for col in ("decision run", "decided on", "subscribers", "offers", "control", "work orders", "outcomes",
                "model", "policy"):
        table.add_column(col, justify="right" if col in ("subscribers", "offers", "control", "work orders",
                                                         "outcomes") else "left")
    for r in frame.itertuples():
        table.add_row(r.decision_run, r.decided_on, f"{r.subscribers:,}", f"{r.offers:,}", f"{r.control:,}",
                      f"{r.work_orders:,}", f"{r.outcomes:,}", str(r.model_version or "-"), (r.policy_hash or "")[:12])
    console.print(table)
    if len(frame) == 0:
        console.print("no runs yet: `retain decide` records each run, or `retain feedback record DIR`")


@app.command("store")
def store_cmd(
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Show the decision store: URL, schema version and applied migrations, row counts (creates and migrates it)."""
    st = _open(store, config, tracking_uri)
    console.print(f"decision store: {st.display_url}", highlight=False)
    for r in st.history().itertuples():
        console.print(f"  migration {r.version}: {r.description} (applied {r.applied_at})", highlight=False)
    from engine.feedback.store import describe

    counts = st.counts()
    for name, columns in describe():
        console.print(f"  {name}: {counts[name]:,} rows ({', '.join(columns)})", highlight=False)


@app.command()
def acceptance(
    min_n: Annotated[int, typer.Option(min=1, help="Contacts an (offer, reason) needs before its learned rate "
                                                   "is used.")] = 10,
    k: Annotated[float, typer.Option(min=0, help="Prior strength: how many contacts the configured rate counts "
                                                 "for when shrinking.")] = 50.0,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Measured acceptance per offer x reason, the configured prior, and the learned (shrunk) rate."""
    from engine.feedback.learning import acceptance_table

    t = acceptance_table(settings_for(config, tracking_uri), k=k, url=store)
    table = Table(title="Acceptance: learned = (accepted + k x prior) / (contacted + k)", title_justify="left")
    for col in ("offer", "reason", "contacted", "accepted", "measured", "prior", "learned", "used"):
        table.add_column(col, justify="left" if col in ("offer", "reason") else "right")
    for r in t.itertuples():
        table.add_row(r.offer_id, r.reason, f"{r.contacted:,}", f"{r.accepted:,}", _fmt(r.measured, "pct"),
                      _fmt(r.prior, "pct"), _fmt(r.learned, "pct"), "yes" if r.contacted >= min_n else "prior")
    console.print(table)
    if len(t) == 0:
        console.print("no outcomes yet: the configured acceptance rates apply")


# ---------------------------------------------------------------------------------------------
# retain report (registered on the root app)
# ---------------------------------------------------------------------------------------------
SHORT_VERDICTS = {"works": "works", "not distinguishable from zero": "~0",
                  "negative, not distinguishable from zero": "<0?", "harmful: uplift below zero": "harmful",
                  "too few control subscribers to tell": "thin", "no control subscribers": "none",
                  "no outcomes yet": "no data"}


def render_report(report: Any, out: Console | None = None, *, rows: int = 20) -> None:
    """Terminal summary: headline figures, per-group tables, flagged rules, overdue orders."""
    out = out or console
    h = report.headline
    out.print(f"[bold]Retention report[/] - run {escape(report.label)}, churn within {report.window} days; "
              f"{report.counts.get('outcomes', 0):,} outcomes for {report.counts.get('decisions', 0):,} decisions",
              highlight=False)
    if h.get("n_treated"):
        out.print(f"  uplift {_fmt(h.get('uplift'), 'signed')} (95% CI {_fmt(h.get('ci_low'), 'signed')} to "
                  f"{_fmt(h.get('ci_high'), 'signed')}): churn {_fmt(h.get('churn_control'), 'pct')} control -> "
                  f"{_fmt(h.get('churn_treated'), 'pct')} treated ({int(h['n_treated']):,} treated, "
                  f"{int(h['n_control']):,} control)", highlight=False)
        out.print(f"  high-risk churn: control {_fmt(h.get('high_risk_churn_control'), 'pct')}, treated "
                  f"{_fmt(h.get('high_risk_churn_treated'), 'pct')}; retention success "
                  f"{_fmt(h.get('retention_success'), 'pct')} (high value "
                  f"{_fmt(h.get('retention_success_high_value'), 'pct')})", highlight=False)
        out.print(f"  saved {_fmt(h.get('saved'), 'money')} subscribers for {_fmt(h.get('cost'), 'money')}: "
                  f"{_fmt(h.get('cost_per_saved'), 'money')} per saved subscriber; net revenue kept "
                  f"{_fmt(h.get('net_revenue_kept'), 'money')}", highlight=False)
    else:
        out.print("  no outcomes for this window yet: `retain feedback ingest FILE`")
    from engine.feedback.report import GROUP_TITLES

    for key, df in report.tables.items():
        if key == "overall" or len(df) == 0:
            continue
        table = Table(title=f"By {GROUP_TITLES[key]}", title_justify="left")
        table.add_column(GROUP_TITLES[key], overflow="fold", min_width=12)
        for col in ("treated/control", "churn C -> T", "uplift [95% CI]", "success", "cost/saved", "net kept"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        shown = df.sort_values("treated", ascending=False).head(rows)
        for r in shown.itertuples():
            uplift = "-" if math.isnan(r.uplift) else f"{r.uplift:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            table.add_row(str(getattr(r, key)), f"{r.treated:,}/{r.control:,}",
                          f"{_fmt(r.churn_control, 'pct')} -> {_fmt(r.churn_treated, 'pct')}", uplift,
                          _fmt(r.retention_success, "pct"), _fmt(r.cost_per_saved, "money"),
                          _fmt(r.net_revenue_kept, "money"), SHORT_VERDICTS.get(r.verdict, r.verdict),
                          style="red" if r.flagged else None)
        out.print(table)
    if report.qini is not None and len(report.qini):
        table = Table(title="Qini per offer (treated vs control ranked by the decision's expected saved value)",
                      title_justify="left")
        for col in ("offer", "treated/control", "Qini", "AUUC", "uplift@30%"):
            table.add_column(col, justify="left" if col == "offer" else "right", no_wrap=True)
        for r in report.qini.sort_values("treated", ascending=False).head(rows).itertuples():
            table.add_row(str(r.offer_id), f"{r.treated:,}/{r.control:,}", _fmt(r.qini, "signed"),
                          _fmt(r.auuc, "signed"), _fmt(r.uplift_at_30, "signed"))
        out.print(table)
    zero = report.no_effect
    names = ", ".join(zero["offer_id"].astype(str).head(8)) if zero is not None and len(zero) else "none"
    out.print(f"cost spent where the measured effect is indistinguishable from zero: "
              f"{_fmt(report.no_effect_cost, 'money')} ({names})", highlight=False)
    out.print("verdicts: works = 95% CI above 0; ~0 = includes 0; <0? = below 0 but includes 0; harmful = CI below "
              "0; thin = under 20 control subscribers; none = no control subscribers", highlight=False)
    if report.flagged:
        out.print(f"[bold]{len(report.flagged)} rule(s) flagged[/] (uplift not shown to be above zero):")
        for f in report.flagged:
            out.print(f"  {escape(f.line())}", highlight=False)
    if report.overdue is not None:
        n = len(report.overdue)
        out.print(f"[bold]{n:,} overdue work order(s)[/] (past due, no outcome)" if n else "no overdue work orders")
        if n:
            table = Table(title_justify="left")
            for col in ("order_id", "channel", "subscriber_id", "offer_id", "due_date", "business_days_overdue"):
                table.add_column(col)
            for r in report.overdue.head(rows).itertuples():
                table.add_row(r.order_id, r.channel, r.subscriber_id, str(r.offer_id), r.due_date,
                              str(r.business_days_overdue))
            out.print(table)


def report_command(
    run: Annotated[str | None, typer.Option("--run", help="Decision run id (see `retain feedback runs`); 'all' "
                                                          "pools every run. Default: the latest run with outcomes.")
                   ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for report.html (charts embedded), report.json "
                                                           "and the chart PNGs, published atomically.")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Also list work orders past their due date (three "
                                                            "business days) without an outcome.")] = False,
    window: Annotated[int, typer.Option("--window", help="Churn window in days: 30, 60 or 90.")] = 90,
    log_run: Annotated[bool, typer.Option("--log/--no-log", help="Log the report to MLflow (experiment "
                                                                 "'churn-reports').")] = True,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Measured retention against the control group: uplift with 95% CIs per rule, offer, channel, value tier
    and risk grade; retention success; cost per saved subscriber; net revenue kept; flagged rules; a Qini
    curve and coefficient per offer; the cost spent where the measured effect is indistinguishable from zero.
    """
    from engine.feedback.report import log_report, write_report
    from engine.uplift.report import spend_report

    settings = settings_for(config, tracking_uri)
    report = spend_report(settings, run, window=window, overdue=overdue, url=store)
    render_report(report, report_console())
    files = write_report(report, out) if out else {}
    if files:
        console.print(f"report: {files['html']}", highlight=False)
    if log_run:
        run_id = log_report(settings, report, files)
        console.print(f"MLflow run {run_id} (experiment 'churn-reports')", highlight=False)


# ---------------------------------------------------------------------------------------------
# retain data outcomes (registered on `retain data`)
# ---------------------------------------------------------------------------------------------
def outcomes_command(
    decisions: Annotated[Path, typer.Option("--decisions", help="Decisions folder of a run on a simulated month "
                                                                "(its summary.json names the input).")],
    out: Annotated[Path | None, typer.Option("--out", help="Outcome file to write (.csv or .parquet); default "
                                                           "DECISIONS/outcomes.csv.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the outcome draws.")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Simulate contact outcomes for a decision run from a known truth (offers answering the true churn reason
    work better; the control group gets nothing), ready for `retain feedback ingest`.
    """
    from engine.data.io import write_table
    from engine.errors import ConfigError
    from engine.feedback.outcomes import simulate_outcomes

    path = out or Path(decisions) / "outcomes.csv"
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ConfigError(f"--out '{path}' must end in .csv or .parquet")
    frame = simulate_outcomes(decisions, seed=seed, settings=settings_for(config, None))
    write_table(frame, path)
    treated = frame["order_id"].notna()
    console.print(f"{len(frame):,} outcomes ({int(treated.sum()):,} treated: {int(frame['contacted'].sum()):,} "
                  f"contacted, {int(frame['accepted'].sum()):,} accepted; churn within 90 days "
                  f"{frame['churned_90d'].mean():.1%}) -> {path}", highlight=False)
