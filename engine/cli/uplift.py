"""`retain uplift`: train the incremental-effect model; evaluate a changed policy on logged decisions.

Thin: parse options, call one library function (training.uplift.train_uplift,
engine.uplift.evaluate.evaluate_policy), render. `evaluate` is also `retain policy evaluate` (the main name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from engine.cli.common import ErrorGroup, rows_table, settings_for

console = Console()
app = typer.Typer(cls=ErrorGroup, no_args_is_help=True, add_completion=False,
                  help="Incremental effect of offers: train the uplift model, evaluate a policy off-policy.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings YAML overriding the defaults.")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                 help="MLflow store (default sqlite:///mlruns/mlflow.db).")]
StoreOpt = Annotated[str | None, typer.Option("--store", envvar="RETAIN_STORE_URL",
                                              help="Decision store URL (default: store/retain.db next to mlruns/).")]
RunsOpt = Annotated[str | None, typer.Option("--runs", help="Comma-separated decision runs (default: all stored).")]
WindowOpt = Annotated[int, typer.Option("--window", help="Churn window in days: 30, 60 or 90.")]


def _runs(text: str | None) -> list[str] | None:
    return [r.strip() for r in text.split(",") if r.strip()] if text else None


def _cell(value, column: str = "") -> str:
    if value is None:
        return ""
    return f"{value:+.4f}" if isinstance(value, float) else str(value)


@app.command("train")
def train_cmd(
    runs: RunsOpt = None,
    window: WindowOpt = 90,
    policies: Annotated[Path | None, typer.Option(help="Policy folder whose offers give the prior effects.")] = None,
    holdout: Annotated[float, typer.Option(help="Share of logged rows held out for Qini / AUUC / uplift@k.")] = 0.3,
    seed: Annotated[int, typer.Option(help="CatBoost seed.")] = 0,
    register: Annotated[bool, typer.Option(help="Register as a version of model 'uplift'.")] = True,
    alias: Annotated[str, typer.Option(help="Alias to point at the new version ('' for none).")] = "champion",
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary as the last line.")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Learn tau(x, offer) = P(churn | no contact) - P(churn | offer) from logged decisions, outcomes and the
    control group (T-learner on CatBoost, shrunk toward the offers' prior effects); register models:/uplift."""
    from training.uplift import train_uplift

    result = train_uplift(settings_for(config, tracking_uri), runs=_runs(runs), window=window, policy_dir=policies,
                          holdout_share=holdout, seed=seed, register=register, alias=alias or None, url=store)
    if as_json:
        typer.echo(json.dumps(result.summary(), default=str))
        return
    rows = [{"offer": r["offer_id"], "treated": r["treated"], "control": r["control"], "mean tau": r["mean_tau"],
             "observed uplift": r["observed_uplift"], "qini": r.get("qini"), "uplift@30%": r.get("uplift_at_30"),
             "weight": result.offers.get(r["offer_id"], {}).get("weight")} for r in result.per_offer]
    console.print(rows_table(f"Uplift model version {result.model_version or '(not registered)'}: hold-out of "
                             f"{result.holdout_rows:,} logged rows", rows, cell=_cell))
    m = result.metrics
    console.print(f"overall: Qini {m.get('qini', float('nan')):+.4f}, AUUC {m.get('auuc', float('nan')):+.4f}, "
                  f"uplift@10% {m.get('uplift_at_10', float('nan')):+.4f}, "
                  f"uplift@30% {m.get('uplift_at_30', float('nan')):+.4f}")


def evaluate_cmd(
    policies: Annotated[Path, typer.Option("--policies", help="The changed policy set (or arbitration mode) to "
                                                              "evaluate.")],
    runs: RunsOpt = None,
    window: WindowOpt = 90,
    model: Annotated[str, typer.Option(help="Churn model the target policy decides with.")] = "champion",
    rounds: Annotated[int, typer.Option(min=50, help="Bootstrap rounds for the 95% intervals.")] = 500,
    min_ess: Annotated[float, typer.Option(help="Refuse below this effective sample size.")] = 100.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates as JSON.")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Estimate what a changed policy set would have achieved on logged decisions: IPS, self-normalised IPS and
    doubly robust saves, cost and net value with bootstrap 95% intervals; refused when overlap is too poor.

    Logged decisions are weighed by the propensities `retain decide` recorded (exploration and control group
    included); runs recorded before propensities were stored use the control-group share."""
    from engine.decision.run import policy_target
    from engine.uplift.evaluate import evaluate_policy
    from engine.uplift.registry import load_uplift

    settings = settings_for(config, tracking_uri)
    ev = evaluate_policy(settings, target_actions=policy_target(settings, policies, model), runs=_runs(runs),
                         uplift=load_uplift(settings), window=window, rounds=rounds, min_ess=min_ess, url=store)
    if as_json:
        typer.echo(json.dumps(ev.as_dict(), default=str))
        return
    rows = [{"quantity": comp, "estimator": e.upper(), "estimate": est.value, "95% CI": f"{est.ci_low:,.1f} .. "
             f"{est.ci_high:,.1f}"} for comp, by in ev.result.estimates.items() for e, est in by.items()]
    console.print(rows_table(f"{policies} on runs {', '.join(ev.runs)} ({ev.result.n:,} logged decisions, "
                             f"{ev.window}-day churn)", rows, cell=lambda v, c: f"{v:,.1f}" if isinstance(v, float)
                             else str(v)))
    console.print(f"effective sample size {ev.result.ess:,.1f} of the target's {ev.result.changed:,} contacts "
                  f"({ev.result.matched:,} logged decisions agree); DR reward model: {ev.reward_model}; "
                  f"propensities: {ev.propensities}")


EVALUATE_ALIAS_HELP = ("Alias of `retain policy evaluate`: what a changed policy set would have achieved on logged "
                       "decisions (IPS, self-normalised IPS, doubly robust; 95% intervals).")
app.command("evaluate", help=EVALUATE_ALIAS_HELP)(evaluate_cmd)


@app.command("emp")
def emp_cmd(
    data: Annotated[Path, typer.Option("--data", help="Labelled subscriber table (with the churn column).")],
    model: Annotated[str, typer.Option(help="Churn model alias, version number or URI.")] = "champion",
    clv: Annotated[float | None, typer.Option(help="Customer lifetime value (default: mean arpu_m0 x "
                                                   "horizon).")] = None,
    incentive: Annotated[float | None, typer.Option(help="Cost of the retention incentive (default: median "
                                                         "offer cost).")] = None,
    contact: Annotated[float | None, typer.Option(help="Cost of one contact (default: median channel cost).")] = None,
    save: Annotated[bool, typer.Option("--save", help="Record the EMP threshold on the model version (tags "
                                                      "emp_threshold, emp_contact_share), for risk_grades.mode: "
                                                      "emp.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Expected maximum profit (EMP, Verbraken et al. 2013) of the churn model and the contact share it implies.

    With `risk_grades.mode: emp` in the config, `retain decide` grades 'high' above the EMP threshold the model
    version carries (measured on the hold-out by `retain train`, or recorded here with --save)."""
    from dataclasses import asdict

    from engine.data.io import read_table
    from engine.model.registry import load_model
    from engine.policy import load_policy_set
    from engine.uplift.emp import churn_model_emp

    settings = settings_for(config, tracking_uri)
    costs = None if incentive is not None else [o.cost for o in load_policy_set(settings.policy_dir).offers.values()]
    loaded = load_model(settings, model)
    out = churn_model_emp(settings, loaded, read_table(data, what="labelled table"), clv=clv,
                          incentive=incentive, contact=contact, offer_costs=costs)
    if save:
        from engine.model.registry import save_version_tags

        save_version_tags(settings, loaded, {"emp_threshold": f"{out.result.threshold:.6g}",
                                             "emp_contact_share": f"{out.result.contact_share:.6g}"})
    if as_json:
        typer.echo(json.dumps(asdict(out), default=str))
        return
    r = out.result
    console.print(f"EMP {r.emp:,.2f} per subscriber ({out.rows:,} rows, churn rate {r.churn_rate:.1%}; CLV "
                  f"{out.clv:,.2f}, incentive {out.incentive:,.2f}, contact {out.contact:,.2f}, acceptance ~ "
                  f"Beta(6, 14)): contact the top {r.contact_share:.1%} (churn probability >= {r.threshold:.3f})")
    if save:
        console.print(f"recorded on model version {loaded.version}: risk_grades.mode emp grades 'high' from "
                      f"{r.threshold:.3f}")
