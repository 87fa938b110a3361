"""What a policy set would do to a population: the figures and report of `retain policy simulate`.

The run itself is `engine.decision.whatif.simulate`: the decision function of `retain decide`
(`engine.decision.decide.decide_frame` on scored rows: the table's churn probability, grades, segments and
reasons are kept) with the policy set, the decision date and the settings: candidates, arbitration
(`first` or `best_value`), contact rules (opt-out, and contact limits / cool-downs when a contact history
is given), the control group, the budget and channel capacity. So on the same input, date and settings,
its counts per offer, channel and status are decide's.

Figures, per rule, offer, channel and segment (risk_grade x value_tier):
- **reach**: subscribers sent an offer (status `offer`; the control group is counted apart);
- **cost**: offer cost plus channel cost of the offers sent (decide's budget_used);
- **expected saves**: sum over the offers sent of `churn_probability x value_kept` - the monthly revenue
  at risk that the offers address, if every offer kept its subscriber (use it to compare policies);
  `summary["expected_saves"]` is decide's: churn probability x P(accept), summed.
Per rule also: how many subscribers it suppressed, and how many it would have sent to the control group.

With a baseline (`--against`), the same table is decided with both sets: how many change offer (including
to or from no offer), and the change in cost and in expected saves (this set minus the baseline).

`summary` has the keys and meaning of `retain decide`'s summary.json (`--json` prints it, merged into the
figures, as the last line): offers (count per offer_id with status offer), channels (offers per channel),
status (count per status), cost (budget_used: offer plus channel cost of the offers sent) and
expected_saves (sum over offers sent of churn probability x P(accept)).

This module builds from decision tables; it does not import engine.decision (the decision engine depends on
the policy package). The run itself is `engine.decision.whatif.simulate`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.data.io import staged_outputs
from engine.policy.evaluate import PolicyEngine

NONE = "(none)"


@dataclass
class Simulation:
    subscribers: int
    policy_hash: str
    policy_root: str
    decided_on: dt.date
    totals: dict[str, Any]
    by_rule: pd.DataFrame
    by_offer: pd.DataFrame
    by_channel: pd.DataFrame
    by_segment: pd.DataFrame
    comparison: dict[str, Any] | None = None
    transitions: pd.DataFrame | None = None
    baseline_by_offer: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # decide's summary.json keys (see module docs)
    table: pd.DataFrame | None = None  # the decision table (decide's columns), one row per subscriber
    acceptance: pd.DataFrame | None = None  # per (offer, reason) sent: the prior, the learned rate, the rate used

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.summary,
            "subscribers": self.subscribers, "policy_hash": self.policy_hash, "policies": self.policy_root,
            "decided_on": self.decided_on.isoformat(), "totals": self.totals,
            "by_rule": self.by_rule.to_dict(orient="records"), "by_offer": self.by_offer.to_dict(orient="records"),
            "by_channel": self.by_channel.to_dict(orient="records"),
            "by_segment": self.by_segment.to_dict(orient="records"),
        }
        if self.acceptance is not None:
            out["acceptance"] = self.acceptance.astype(object).where(self.acceptance.notna(), None).to_dict(
                orient="records")
        if self.comparison is not None:
            out["comparison"] = self.comparison
            out["transitions"] = self.transitions.to_dict(orient="records") if self.transitions is not None else []
        return out


SUMMARY_KEYS = ("offers", "channels", "status", "cost", "expected_saves")


def summary_of(decide_summary: Mapping[str, Any]) -> dict[str, Any]:
    """simulate --json's summary object from decide's summary.json (same values, simulate's key names)."""
    return {"offers": dict(decide_summary["offers"]), "channels": dict(decide_summary["offers_per_channel"]),
            "status": dict(decide_summary["status"]), "cost": decide_summary["budget_used"],
            "expected_saves": decide_summary["expected_saves"]}


def _outcome(table: pd.DataFrame, engine: PolicyEngine) -> pd.DataFrame:
    offers = engine.policy_set.offers
    sent = (table["status"] == "offer").to_numpy()
    kept = table["offer_id"].map({k: o.value_kept for k, o in offers.items()}).astype(float).fillna(0.0)
    prob = pd.to_numeric(table["churn_probability"], errors="coerce").fillna(0.0).astype(float)
    cost = (table["offer_cost"].astype(float) + table["channel_cost"].astype(float)).to_numpy()
    return pd.DataFrame({
        "offer_id": table["offer_id"].where(sent, None).to_numpy(dtype=object),
        "channel": table["channel"].where(sent, None).to_numpy(dtype=object),
        "rule_id": table["rule_id"].to_numpy(dtype=object),
        "status": table["status"].to_numpy(dtype=object),
        "cost": np.where(sent, cost, 0.0),
        "expected_saves": np.where(sent, (prob * kept).to_numpy(), 0.0),
        "risk_grade": table["risk_grade"].to_numpy(dtype=object),
        "value_tier": table["value_tier"].to_numpy(dtype=object),
    })


def _group(out: pd.DataFrame, by: str | list[str], n: int) -> pd.DataFrame:
    reached = out[out["offer_id"].notna()]
    g = reached.groupby(by, dropna=False, observed=True).agg(reach=("offer_id", "size"), cost=("cost", "sum"),
                                                              expected_saves=("expected_saves", "sum"))
    g["share"] = g["reach"] / max(n, 1)
    return g.reset_index()


def figures(engine: PolicyEngine, table: pd.DataFrame, decide_summary: Mapping[str, Any], *, on: dt.date,
            acceptance: pd.DataFrame | None = None, against: PolicyEngine | None = None,
            baseline: pd.DataFrame | None = None) -> Simulation:
    """The simulation figures of a decision run: `table` and `decide_summary` are what `retain decide`'s
    function returned for `engine`'s policy set (engine.decision.whatif.simulate runs it); `baseline` the
    decision table of the same rows with the `against` set."""
    n = len(table)
    out = _outcome(table, engine)
    ps = engine.policy_set
    by_rule = _group(out, "rule_id", n)
    rules = pd.DataFrame({"rule_id": [r.id for r in ps.rules], "priority": [r.priority for r in ps.rules],
                          "stage": [r.stage for r in ps.rules],
                          "offer_id": [r.offer if r.offer is not None else "(suppression)" for r in ps.rules]})
    by_rule = rules.merge(by_rule, on="rule_id", how="left").fillna({"reach": 0, "cost": 0.0,
                                                                      "expected_saves": 0.0, "share": 0.0})
    by_rule["reach"] = by_rule["reach"].astype(int)
    for status, col in (("suppressed", "suppressed"), ("control", "control")):
        counts = out.loc[out["status"] == status, "rule_id"].value_counts()
        by_rule[col] = by_rule["rule_id"].map(counts).fillna(0).astype(int)
    by_offer = _group(out, "offer_id", n).sort_values("reach", ascending=False, kind="stable")
    by_channel = _group(out, "channel", n).sort_values("reach", ascending=False, kind="stable")
    sizes = out.groupby(["risk_grade", "value_tier"], observed=True).size().rename("subscribers").reset_index()
    by_segment = sizes.merge(_group(out, ["risk_grade", "value_tier"], n).drop(columns="share"),
                             on=["risk_grade", "value_tier"], how="left").fillna(0)
    by_segment["reach"] = by_segment["reach"].astype(int)
    by_segment["reach_share"] = by_segment["reach"] / by_segment["subscribers"].clip(lower=1)
    reached = int(out["offer_id"].notna().sum())
    totals = {
        "subscribers": n, "reached": reached, "no_offer": n - reached,
        "cost": round(float(out["cost"].sum()), 2),
        "expected_saves": round(float(out["expected_saves"].sum()), 2),
        "cost_per_expected_save": round(float(out["cost"].sum() / out["expected_saves"].sum()), 4)
        if out["expected_saves"].sum() > 0 else None,
        "status": {str(k): int(v) for k, v in out["status"].value_counts().items()},
    }
    sim = Simulation(n, ps.content_hash, ps.root, on, totals, by_rule, by_offer, by_channel, by_segment,
                     table=table, acceptance=acceptance)
    sim.summary = summary_of(decide_summary)
    if against is not None and baseline is not None:
        base = _outcome(baseline, against)
        a = out["offer_id"].astype(object).where(out["offer_id"].notna(), NONE)
        b = base["offer_id"].astype(object).where(base["offer_id"].notna(), NONE)
        changed = (a.to_numpy() != b.to_numpy())
        trans = pd.DataFrame({"from_offer": b.to_numpy()[changed], "to_offer": a.to_numpy()[changed]})
        trans = trans.value_counts().rename("subscribers").reset_index()
        sim.transitions = trans
        sim.baseline_by_offer = _group(base, "offer_id", n)
        sim.comparison = {
            "against": against.policy_set.root, "against_hash": against.policy_set.content_hash,
            "changed_offer": int(changed.sum()), "changed_share": round(float(changed.mean()), 4) if n else 0.0,
            "baseline_reached": int(base["offer_id"].notna().sum()),
            "baseline_cost": round(float(base["cost"].sum()), 2),
            "baseline_expected_saves": round(float(base["expected_saves"].sum()), 2),
            "cost_change": round(float(out["cost"].sum() - base["cost"].sum()), 2),
            "expected_saves_change": round(float(out["expected_saves"].sum() - base["expected_saves"].sum()), 2),
        }
    return sim



# ---------------------------------------------------------------------------------------------
# HTML report
# ---------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _charts(sim: Simulation) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = []
    offers = sim.by_offer.set_index("offer_id")
    if sim.baseline_by_offer is not None:
        base = sim.baseline_by_offer.set_index("offer_id")
        idx = offers.index.union(base.index)
        data = pd.DataFrame({"this policy set": offers["reach"].reindex(idx).fillna(0),
                             "baseline": base["reach"].reindex(idx).fillna(0)}).sort_values("this policy set")
    else:
        data = pd.DataFrame({"this policy set": offers["reach"]}).sort_values("this policy set")
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(data) + 1)))
    data.plot.barh(ax=ax)
    ax.set_xlabel("subscribers reached")
    ax.set_title("Reach per offer")
    charts.append(("Reach per offer", _png(fig)))
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(offers) + 1)))
    offers["cost"].sort_values().plot.barh(ax=ax, color="tab:red")
    ax.set_xlabel("offer cost")
    ax.set_title("Cost per offer")
    charts.append(("Cost per offer", _png(fig)))
    fig, ax = plt.subplots(figsize=(6, 3))
    sim.by_channel.set_index("channel")["reach"].sort_values().plot.barh(ax=ax, color="tab:green")
    ax.set_xlabel("subscribers reached")
    ax.set_title("Reach per channel")
    charts.append(("Reach per channel", _png(fig)))
    per_sub = sim.by_segment["cost"] / sim.by_segment["subscribers"].clip(lower=1)
    seg = sim.by_segment.assign(cost_per_subscriber=per_sub)
    pivot = seg.pivot_table(index="risk_grade", columns="value_tier", values="cost_per_subscriber", aggfunc="sum")
    pivot = pivot.reindex(index=[g for g in ("high", "medium", "low") if g in pivot.index],
                          columns=[t for t in ("high", "medium", "low") if t in pivot.columns])
    values = pivot.to_numpy(dtype=float)
    top = float(np.nanmax(values)) if values.size and np.isfinite(values).any() else 1.0
    fig, ax = plt.subplots(figsize=(5, 3.5))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(top, 1e-9))
    ax.set_xticks(range(len(pivot.columns)), [f"value {c}" for c in pivot.columns])
    ax.set_yticks(range(len(pivot.index)), [f"risk {r}" for r in pivot.index])
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:,.1f}", ha="center", va="center",
                color="white" if v > top * 0.6 else "black")
    fig.colorbar(im, ax=ax, label="offer cost per subscriber")
    ax.set_title("Offer cost per subscriber, by segment")
    charts.append(("Offer cost per subscriber by segment", _png(fig)))
    return charts


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:,.2f}", border=0, classes="t", na_rep="")


def report_html(sim: Simulation) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Policy simulation</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table.t{border-collapse:collapse;"
        "margin:0.5em 0 1.5em}table.t td,table.t th{padding:3px 10px;border-bottom:1px solid #ddd;"
        "text-align:right}table.t th{background:#f4f4f4}img{max-width:100%}.kpi{display:inline-block;"
        "margin:0 2em 1em 0}.kpi b{display:block;font-size:1.6em}</style></head><body>",
        f"<h1>Policy simulation</h1><p>Policy set <code>{esc(sim.policy_root)}</code> "
        f"(hash <code>{sim.policy_hash[:12]}</code>) on {sim.subscribers:,} subscribers, decision date "
        f"{sim.decided_on}.</p>",
    ]
    t = sim.totals
    kpis = [("reached", f"{t['reached']:,}"), ("no offer", f"{t['no_offer']:,}"), ("offer cost", f"{t['cost']:,.2f}"),
            ("expected saves / month", f"{t['expected_saves']:,.2f}")]
    if sim.comparison:
        c = sim.comparison
        kpis += [("changed offer", f"{c['changed_offer']:,} ({c['changed_share']:.1%})"),
                 ("cost change", f"{c['cost_change']:+,.2f}"),
                 ("expected saves change", f"{c['expected_saves_change']:+,.2f}")]
    parts.append("".join(f"<div class='kpi'><b>{esc(v)}</b>{esc(k)}</div>" for k, v in kpis))
    if sim.comparison:
        parts.append(f"<p>Compared with baseline <code>{esc(sim.comparison['against'])}</code> (hash "
                     f"<code>{sim.comparison['against_hash'][:12]}</code>); changes are this set minus the "
                     f"baseline.</p>")
    parts.append("<p>Decided as <code>retain decide</code> decides (arbitration, contact rules, control group, "
                 "budget, capacity). Cost: offer plus channel cost of the offers sent. Expected saves: sum of churn "
                 "probability x offer value kept per month over the offers sent, assuming every offer is "
                 "accepted.</p>")
    for title, png in _charts(sim):
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{png}'>")
    for title, df in (("Per rule", sim.by_rule), ("Per offer", sim.by_offer), ("Per channel", sim.by_channel),
                      ("Per segment", sim.by_segment)):
        parts.append(f"<h2>{title}</h2>{_table_html(df)}")
    if sim.transitions is not None:
        parts.append(f"<h2>Offer changes vs baseline</h2>{_table_html(sim.transitions.head(50))}")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(sim: Simulation, out_dir: str | Path) -> dict[str, Path]:
    """simulation.html and simulation.json, published together (atomically) into `out_dir`."""
    import json

    page = report_html(sim)
    with staged_outputs(out_dir) as stage:
        (stage / "simulation.html").write_text(page, encoding="utf-8")
        (stage / "simulation.json").write_text(json.dumps(sim.as_dict(), indent=2, default=str) + "\n")
    out = Path(out_dir)
    return {"html": out / "simulation.html", "json": out / "simulation.json"}
