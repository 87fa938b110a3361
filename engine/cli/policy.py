"""`retain policy`: validate, test, explain, simulate and match retention policies.

Thin by design (see engine/cli/main.py): parse options, call one `engine.policy` function, render with rich.
User mistakes are RetainErrors; this sub-app's group prints them as `error: <message>` and exits 2 (the
same as the root `retain` group), so it behaves the same mounted or on its own. `validate` and `test`
print every problem of a broken policy set, one `file:line: ...` per line, before exiting 2.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.common import ErrorGroup, rows_table
from engine.errors import PolicyError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


app = typer.Typer(cls=ErrorGroup, no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Retention policies: validate, test, explain, simulate, match; evaluate a changed set on "
                       "logged decisions (off-policy).")

PoliciesOpt = Annotated[Path, typer.Option("--policies", help="Policy folder (all *.yaml except tests/) or one "
                                                              "policy file.")]
DateOpt = Annotated[dt.datetime | None, typer.Option("--date", formats=["%Y-%m-%d"],
                                                     help="Decision date for offer validity (default: today).")]
InputOpt = Annotated[Path, typer.Option("--input", help="Decisions table (.parquet/.csv) with the policy "
                                                        "attributes, e.g. decisions.parquet of `retain decide`.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings YAML, as for `retain decide` (arbitration, "
                                                                 "channel costs and capacity, budget, control "
                                                                 "group, contact rules).")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                 help="MLflow store; its decision store gives learned "
                                                      "acceptance rates.")]
HistoryOpt = Annotated[Path | None, typer.Option("--contact-history", help="Contact history (.csv/.parquet), as "
                                                                           "for `retain decide`: contact limits "
                                                                           "and cool-downs (read only).")]
LearnedOpt = Annotated[bool, typer.Option("--learned/--no-learned", help="Use acceptance rates learned from "
                                                                         "ingested outcomes, as `retain decide` "
                                                                         "does (else the priors).")]


def _run_inputs(config: Path | None, tracking_uri: str | None, contact_history: Path | None, learned: bool):
    """Settings, contact history and learned rates, read exactly as `retain decide` reads them."""
    from engine.cli.common import settings_for
    from engine.decision.contact import read_history

    settings = settings_for(config, tracking_uri)
    rates = None
    if learned:
        from engine.feedback.learning import learned_acceptance

        rates = learned_acceptance(settings)
    return settings, read_history(contact_history), rates


def _day(date: dt.datetime | None) -> dt.date | None:
    return date.date() if date else None


def _load(policies: Path, *, show_problems: bool = True):
    from engine.policy import load_policy_set

    try:
        return load_policy_set(policies)
    except PolicyError as exc:
        if show_problems and len(exc.problems) > 1:
            for problem in exc.problems:
                err_console.print(problem, highlight=False, soft_wrap=True, markup=False)
            err_console.print(f"[bold red]error:[/] {len(exc.problems)} problems in policy set '{policies}'",
                              highlight=False)
            raise typer.Exit(2) from None
        raise


def _engine(policies: Path, date: dt.datetime | None = None):
    from engine.policy import PolicyEngine

    return PolicyEngine(_load(policies), decision_date=_day(date))


def _read(path: Path):
    from engine.data.io import read_table

    return read_table(path, what="decisions table")


def _rows_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    return rows_table(title, rows, columns, cell=_cell)


def _cell(v: Any, column: str = "") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float) and "share" in column:
        return f"{v:.1%}"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


# ---------------------------------------------------------------------------------------------
@app.command()
def validate(
    policies: PoliciesOpt = Path("policies"),
    date: DateOpt = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when there are warnings (for CI).")] = False,
    input: Annotated[Path | None, typer.Option("--input", help="Decisions table (.parquet/.csv) to count coverage "
                                                               "on (default: a synthetic population).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Settings YAML (locates the decision store "
                                                                 "whose measured uplift flags rules).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                     help="MLflow store; the decision store sits next to it.")] = None,
) -> None:
    """Check a policy set: errors exit 2; warnings name dead, shadowed and overlapping rules, suppressions that
    silence every later rule, conditions that contradict the engine's grading, unused offers, uncovered
    segments, subscribers no rule reaches (counted on --input, else on a synthetic population), and rules
    whose measured uplift (from ingested outcomes) is not above zero."""
    from engine.cli.common import settings_for
    from engine.feedback.learning import flagged_rules
    from engine.policy import validate as checks

    ps = _load(policies)
    settings = settings_for(config, tracking_uri)
    population = (checks.from_table(ps, _read(input), str(input)) if input is not None
                  else checks.synthetic(ps, settings))
    result = checks.validate_policy_set(ps, today=_day(date), population=population, settings=settings)
    findings = result.findings
    for f in findings:
        console.print(f"[yellow]{f.where}: warning:[/] {f.message}", highlight=False, soft_wrap=True)
    if result.coverage is not None:
        console.print(result.coverage.line(), highlight=False, soft_wrap=True)
    rule_ids = {r.id for r in ps.rules}
    measured = [f for f in flagged_rules(settings) if f.rule_id in rule_ids]
    for f in measured:
        console.print(f"[yellow]warning:[/] {f.line()}", highlight=False, soft_wrap=True)
    warnings = len(findings) + len(measured)
    console.print(f"policy set '{policies}' is valid: {len(ps.rules)} rules, {len(ps.offers)} offers in "
                  f"{len(ps.files)} file(s); hash {ps.content_hash[:12]}; {warnings} warning(s)",
                  highlight=False)
    if strict and warnings:
        raise typer.Exit(1)


@app.command("test")
def test_cmd(
    policies: PoliciesOpt = Path("policies"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List passing cases too.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run the YAML test cases next to the policies (tests/*.yaml) through `retain decide`'s decision function:
    pass/fail table, exit 1 on any failure."""
    from engine.cli.common import settings_for
    from engine.decision.whatif import run_cases
    from engine.policy import PolicyEngine
    from engine.policy.testing import load_cases

    ps = _load(policies)
    engine = PolicyEngine(ps)
    settings = settings_for(config, None)
    try:
        cases = load_cases(policies, ps, settings=settings)
    except PolicyError as exc:
        if len(exc.problems) > 1:
            for problem in exc.problems:
                err_console.print(problem, highlight=False, soft_wrap=True, markup=False)
            err_console.print(f"[bold red]error:[/] {len(exc.problems)} problems in the test cases", highlight=False)
            raise typer.Exit(2) from None
        raise
    results = run_cases(engine, cases, settings=settings)
    failed = [r for r in results if not r.passed]
    shown = results if verbose or len(results) <= 40 else failed
    table = Table(title=f"Policy tests ({policies})", title_justify="left")
    for col in ("", "test", "where", "expected", "actual"):
        table.add_column(col, overflow="fold")
    for r in shown:
        mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
        table.add_row(mark, escape(r.name), r.where, escape(r.expected),
                      escape(r.actual if r.passed else "\n".join(r.failures)))
    console.print(table)
    colour = "red" if failed else "green"
    console.print(f"[{colour}]{len(results) - len(failed)} passed, {len(failed)} failed[/]", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def explain(
    input: InputOpt,
    subscriber: Annotated[str, typer.Option("--subscriber", help="subscriber_id to explain.")],
    policies: PoliciesOpt = Path("policies"),
    date: DateOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
    contact_history: HistoryOpt = None,
    learned: LearnedOpt = True,
) -> None:
    """Every rule for one subscriber (matched or not, the first failing condition), then the arbitration step
    of `retain decide` on the input table: each candidate's acceptance, expected value, cost and net value,
    and why the winner won or why nothing was sent."""
    from engine.decision.whatif import explain as run_explain
    from engine.policy.explain import find_subscriber

    engine = _engine(policies, date)
    frame = _read(input)
    engine.policy_set.require_declared(frame.columns)
    record = find_subscriber(frame, subscriber, source=str(input))
    settings, history, rates = _run_inputs(config, tracking_uri, contact_history, learned)
    ex = run_explain(engine, record, _day(date), frame=frame, settings=settings, history=history, learned=rates,
                     source=str(input))
    d = ex.decision
    table = Table(title=f"Subscriber {ex.subscriber_id} - policy {ex.policy_hash[:12]}, decision date {ex.decided_on}"
                        f", arbitration {ex.arbitration}", title_justify="left")
    for col in ("#", "rule", "priority", "stage", "offer", "channel", "dates", "verdict", "why"):
        table.add_column(col, overflow="fold")
    styles = {"winner": "bold green", "matched (fallback)": "green", "candidate": "green", "suppresses": "bold magenta",
              "engine disagreement": "bold red"}
    for v in ex.verdicts:
        style = styles.get(v.status)
        verdict = f"[{style}]{v.status}[/]" if style else v.status
        offer_cell = "no offer (suppression)" if v.suppresses else v.offer_id
        table.add_row(str(v.position), v.rule_id, str(v.priority), v.stage, offer_cell, v.channel, v.dates, verdict,
                      escape(v.detail))
    console.print(table)
    if ex.candidates:
        arb = Table(title=f"Arbitration ({ex.arbitration}), as retain decide takes it", title_justify="left")
        for col in ("#", "rule", "offer", "channel", "acceptance (prior / learned)", "expected value", "cost",
                    "net value", "outcome"):
            arb.add_column(col, overflow="fold")
        for c in ex.candidates:
            learned_text = "-" if c["p_learned"] is None else f"{c['p_learned']:.1%}"
            arb.add_row(str(c["rank"]), c["rule_id"], c["offer_id"], c["channel"],
                        f"{c['p_accept']:.1%} ({c['p_prior']:.1%} / {learned_text})", f"{c['expected_value']:,.2f}",
                        f"{c['cost']:,.2f}", f"{c['net_value']:,.2f}", escape(c["outcome"]))
        console.print(arb)
    console.print(f"status: [bold]{ex.status or '-'}[/]", highlight=False)
    if ex.why:
        console.print(escape(ex.why), highlight=False)
    if d.get("offer_id"):
        console.print(f"message: {d['message']}", highlight=False, markup=False)
    rec = ex.recorded
    if rec.get("policy_hash") and rec["policy_hash"] != ex.policy_hash:
        console.print(f"[yellow]note:[/] the input was decided with policy {str(rec['policy_hash'])[:12]}, "
                      f"explained with {ex.policy_hash[:12]}", highlight=False)
    if "offer_id" in rec and (rec["offer_id"] if rec["offer_id"] == rec["offer_id"] else None) != d.get("offer_id"):
        console.print(f"[yellow]note:[/] the input table records offer {rec['offer_id']!s} for this subscriber "
                      f"(decided then with its policy set, settings and date)", highlight=False)


@app.command()
def simulate(
    input: InputOpt,
    policies: PoliciesOpt = Path("policies"),
    against: Annotated[Path | None, typer.Option("--against", help="Baseline policy folder to compare with "
                                                                   "(e.g. the live set); changes are "
                                                                   "--policies minus --against.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for simulation.html (charts) and "
                                                           "simulation.json, written atomically.")] = None,
    date: DateOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead of tables; the last "
                                                         "line is one object whose offers, channels, status, cost "
                                                         "and expected_saves mean what they mean in decide's "
                                                         "summary.json.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
    contact_history: HistoryOpt = None,
    learned: LearnedOpt = True,
) -> None:
    """What `retain decide` would do with this policy set on a decisions table (the same decision function:
    arbitration, contact rules, control group, budget, capacity): reach, cost and expected saves per rule,
    offer, channel and segment; with --against, what changes."""
    from engine.decision.whatif import simulate as run_simulation
    from engine.policy.simulate import write_report

    engine = _engine(policies, date)
    baseline = _engine(against, date) if against is not None else None
    frame = _read(input)
    engine.policy_set.require_declared(frame.columns)
    settings, history, rates = _run_inputs(config, tracking_uri, contact_history, learned)
    sim = run_simulation(engine, frame, against=baseline, on=_day(date), settings=settings, history=history,
                         learned=rates, source=str(input))
    paths = write_report(sim, out) if out is not None else None
    if as_json:
        typer.echo(json.dumps(sim.as_dict(), default=str))
        return
    t = sim.totals
    console.print(f"{sim.subscribers:,} subscribers, policy {sim.policy_hash[:12]}: {t['reached']:,} reached, "
                  f"cost {t['cost']:,.2f}, expected saves {t['expected_saves']:,.2f}/month", highlight=False)
    console.print("status: " + ", ".join(f"{k} {v:,}" for k, v in sim.summary["status"].items()), highlight=False)
    console.print(_rows_table("Per offer", sim.by_offer.to_dict(orient="records")))
    console.print(_rows_table("Per rule", sim.by_rule.to_dict(orient="records")))
    console.print(_rows_table("Per channel", sim.by_channel.to_dict(orient="records")))
    console.print(_rows_table("Per segment", sim.by_segment.to_dict(orient="records")))
    if sim.acceptance is not None and len(sim.acceptance):
        console.print(_rows_table("Acceptance of the offers sent (prior from offers.yaml, learned from outcomes)",
                                  sim.acceptance.to_dict(orient="records")))
    if sim.comparison:
        c = sim.comparison
        console.print(_rows_table(f"Against {c['against']} ({c['against_hash'][:12]})", [
            {"": "changed offer", "value": f"{c['changed_offer']:,} ({c['changed_share']:.1%})"},
            {"": "cost change", "value": f"{c['cost_change']:+,.2f}"},
            {"": "expected saves change", "value": f"{c['expected_saves_change']:+,.2f}"},
        ]))
        if sim.transitions is not None and len(sim.transitions):
            console.print(_rows_table("Largest offer changes", sim.transitions.head(15).to_dict(orient="records")))
    if paths:
        console.print(f"report: {paths['html']} (figures: {paths['json']})", highlight=False)


@app.command()
def match(
    offer: Annotated[str, typer.Option("--offer", help="Offer id to find the audience of.")],
    input: InputOpt,
    policies: PoliciesOpt = Path("policies"),
    out: Annotated[Path | None, typer.Option("--out", help="Write the audience to this .csv/.parquet file "
                                                           "(atomically).")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Rows to show in the terminal.")] = 20,
    date: DateOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
    contact_history: HistoryOpt = None,
    learned: LearnedOpt = True,
) -> None:
    """Forward matching: the subscribers an offer suits (a rule giving it matches and the offer is eligible),
    and those `retain decide` would actually send it to (arbitration, contact rules, control, budget, capacity)."""
    from engine.decision.whatif import match_offer

    engine = _engine(policies, date)
    frame = _read(input)
    engine.policy_set.require_declared(frame.columns)
    settings, history, rates = _run_inputs(config, tracking_uri, contact_history, learned)
    audience = match_offer(engine, frame, offer, _day(date), settings=settings, history=history, learned=rates,
                           source=str(input))
    receives = int(audience["receives"].sum())
    console.print(f"offer '{offer}': {len(audience):,} of {len(frame):,} subscribers qualify "
                  f"({len(audience) / max(len(frame), 1):.1%}); {receives:,} would receive it, "
                  f"{len(audience) - receives:,} only qualify", highlight=False)
    if limit and len(audience):
        shown = [c for c in ("subscriber_id", "matching_rules", "receives", "status", "channel", "current_offer",
                             "churn_probability", "risk_grade", "value_tier", "reason") if c in audience.columns]
        console.print(_rows_table(f"Top {min(limit, len(audience))} (all columns in --out)",
                             audience.head(limit).to_dict(orient="records"), shown))
    if out is not None:
        from engine.data.io import write_table

        write_table(audience, out)
        console.print(f"audience written to {out}", highlight=False)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON Schema here instead of printing it.")]
    = None,
) -> None:
    """The JSON Schema of policy files, for editor completion and checks."""
    from engine.data.io import write_text
    from engine.policy.model import schema_text

    text = schema_text()
    if out is None:
        typer.echo(text, nl=False)
        return
    write_text(text, out)
    console.print(f"wrote {out}", highlight=False)


# `retain policy evaluate` (off-policy evaluation on logged runs) is defined with the uplift commands, where it is
# also `retain uplift evaluate`.
def _register_evaluate() -> None:
    from engine.cli.uplift import evaluate_cmd

    app.command("evaluate")(evaluate_cmd)


_register_evaluate()
