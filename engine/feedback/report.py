"""Measuring retention: treated vs control churn per rule, offer, channel, value tier and risk grade.

Why against the control group and nothing else: churn among subscribers who got an offer says nothing
alone (they were picked for being at risk). The control group is a stable hash share of the very
subscribers the policies chose, each carrying the rule, offer and channel it *would* have received, so
for every rule (offer, channel, segment) the control subscribers of that rule are its counterfactual:

    uplift = churn rate of its control subscribers - churn rate of its treated subscribers

measured as intention to treat: a treated subscriber counts as treated whether or not the call got
through (reach is part of what a rule achieves), and a control subscriber stays control even if someone
contacted them by mistake (ingest warns). Subscribers with no outcome for the chosen window yet are
left out of both rates and counted as pending.

**Confidence interval**: Newcombe's hybrid score interval (method 10 of Newcombe 1998) for a difference
of two independent proportions, built from the Wilson score interval of each rate, at 95%. Unlike the
plain normal (Wald) interval it stays inside [-1, 1] and keeps its coverage with small control groups
or churn rates near 0, which is what a rule with 40 control subscribers has. A rule is **flagged** when
its interval includes 0 (not distinguishable from zero) or lies below 0 (harmful), or when it has fewer
than `MIN_CONTROL` (20) control subscribers with an outcome: with 5 control subscribers even a correct
interval swings from "harmful" to "works" on one subscriber, and nobody should retire a rule on that.

Other figures, per group: retention success rate = accepted and not churned / contacted (the operators'
"45% overall, over 60% for high value"); cost = channel cost per contact made + offer cost per accepted
offer; subscribers saved = uplift x treated; cost per saved subscriber = cost / saved (empty when
uplift <= 0); net revenue kept = (mean revenue after of treated - of control) x treated - cost.
`--overdue` lists work orders past their due date (three business days after the run) with no outcome.

**Spend on saves** (added by engine.uplift.report.spend_report, which `retain report` runs: engine.uplift
reads this package, so the figures are computed there and only carried and rendered here). Two figures look
at whether money went where it changes churn:
- *Cost spent where the measured effect is indistinguishable from zero*: the cost of the offers whose
  uplift interval includes 0 (engine.uplift.report.cost_without_effect over the per-offer table).
- *Qini per offer*: the offer's treated and control subscribers (with an outcome) ranked by the expected
  saved value the decision carried (the arbitration's own score: P(churn) x P(accept) x value kept x horizon,
  or tau x value kept x horizon under `incremental_value`); the Qini curve counts the extra stayers among the
  top n against the control subscribers scaled to the same size, and the normalised Qini coefficient says
  how well that score ranks who the offer actually keeps (1 perfect, 0 no better than random, below 0
  worse). Offers with fewer than 20 subscribers in an arm get counts only (engine/uplift/metrics.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from engine.config import Settings
from engine.errors import DataError
from engine.feedback.store import StoreError, now_iso, open_store
from engine.feedback.store import outcomes as outcomes_table
from engine.feedback.store import work_orders as orders_table

REPORT_EXPERIMENT = "churn-reports"
GROUPINGS = ("rule_id", "offer_id", "channel", "value_tier", "risk_grade")
GROUP_TITLES = {"overall": "overall", "rule_id": "rule", "offer_id": "offer", "channel": "channel",
                "value_tier": "value tier", "risk_grade": "risk grade"}
WINDOWS = (30, 60, 90)
Z95 = 1.959963984540054
VERDICT_WORKS = "works"
VERDICT_UNCLEAR = "not distinguishable from zero"
VERDICT_NEGATIVE = "negative, not distinguishable from zero"
VERDICT_HARMFUL = "harmful: uplift below zero"
VERDICT_NO_CONTROL = "no control subscribers"
VERDICT_THIN = "too few control subscribers to tell"
#: Below this many control subscribers with an outcome a rule's verdict is "too few to tell", whatever its interval.
MIN_CONTROL = 20
VERDICT_NO_DATA = "no outcomes yet"
#: The one filter for "this rule is not shown to work" (report rows in red, `Report.flagged`, and the warnings
#: `retain policy validate` prints): every verdict but "works" and "no outcomes yet". A rule whose
#: subscribers have no outcome for the window is pending, not failing: there is nothing to say about it yet.
FLAGGED_VERDICTS = frozenset({VERDICT_UNCLEAR, VERDICT_NEGATIVE, VERDICT_HARMFUL, VERDICT_NO_CONTROL, VERDICT_THIN})


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def wilson(successes: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (NaN where n == 0)."""
    s, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def newcombe(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray,
             z: float = Z95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p1 - p2 and its Newcombe hybrid score interval (method 10). NaN where either n is 0."""
    x1, n1, x2, n2 = (np.asarray(a, dtype=float) for a in (x1, n1, x2, n2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def verdict(uplift: float, low: float, high: float, n_treated: int, n_control: int) -> str:
    if n_treated == 0 and n_control == 0:
        return VERDICT_NO_DATA
    if n_control == 0:
        return VERDICT_NO_CONTROL
    if n_treated == 0 or math.isnan(low):
        return VERDICT_NO_DATA
    if n_control < MIN_CONTROL:
        return VERDICT_THIN
    if high < 0:
        return VERDICT_HARMFUL
    if uplift < 0:
        return VERDICT_NEGATIVE
    if low <= 0:
        return VERDICT_UNCLEAR
    return VERDICT_WORKS


@dataclass(frozen=True)
class RuleFlag:
    """A rule whose measured uplift does not show that it works."""

    rule_id: str
    verdict: str
    uplift: float
    ci_low: float
    ci_high: float
    n_treated: int
    n_control: int

    def line(self) -> str:
        if self.verdict in (VERDICT_NO_CONTROL, VERDICT_NO_DATA) or math.isnan(self.uplift):
            return f"rule '{self.rule_id}': {self.verdict} ({self.n_treated:,} treated, {self.n_control:,} control)"
        return (f"rule '{self.rule_id}': uplift {self.uplift:+.3f} (95% CI {self.ci_low:+.3f} to {self.ci_high:+.3f}; "
                f"{self.n_treated:,} treated vs {self.n_control:,} control) - {self.verdict}")

    def as_dict(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "verdict": self.verdict, "uplift": _num(self.uplift),
                "ci_low": _num(self.ci_low), "ci_high": _num(self.ci_high), "n_treated": self.n_treated,
                "n_control": self.n_control, "line": self.line()}


def _num(v: Any) -> Any:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return None if math.isnan(f) or math.isinf(f) else f


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
#: The dimensions a report groups by, plus status: the key of a "cell" (see `cells`).
CELL_KEYS = ("rule_id", "offer_id", "channel", "value_tier", "risk_grade", "status")
#: Additive counts per cell. Everything a report shows is a ratio or difference of their sums.
CELL_SUMS = ("n", "known", "churned", "contacted", "accepted", "retain_base", "retained", "rev_n", "rev", "cost")


def cells(frame: pd.DataFrame, window: int = 90) -> pd.DataFrame:
    """Row-level decisions + outcomes (`engine.feedback.ingest.stored_outcomes`) -> additive counts per cell.

    The store computes the same in SQL (`_cells_sql`); this is for frames held in memory.
    """
    frame = frame[frame["status"].isin(["offer", "control"])]
    num = {c: pd.to_numeric(frame[c], errors="coerce").astype(float)
           for c in ("contacted", "accepted", "revenue_after", f"churned_{window}d")}
    churn = num[f"churned_{window}d"]
    known = churn.notna()
    c, con, acc = churn.fillna(0) > 0.5, num["contacted"].fillna(0) > 0.5, num["accepted"].fillna(0) > 0.5
    helper = pd.DataFrame({
        "n": 1, "known": known, "churned": known & c, "contacted": con, "accepted": acc,
        "retain_base": con & known, "retained": con & acc & known & ~c,
        "rev_n": num["revenue_after"].notna(), "rev": num["revenue_after"].fillna(0.0),
        "cost": frame["channel_cost"].fillna(0).astype(float) * con + frame["offer_cost"].fillna(0).astype(float) * acc,
    }, index=frame.index).astype(float)
    keys = frame[list(CELL_KEYS)].astype(object).fillna("(none)")
    return pd.concat([keys, helper], axis=1).groupby(list(CELL_KEYS), sort=True, dropna=False).sum().reset_index()


def _cells_sql(store: Any, runs: list[str], window: int) -> pd.DataFrame:
    """`cells` computed by the database: one GROUP BY over decisions joined with outcomes."""
    from engine.feedback.store import decisions as d
    from engine.feedback.store import outcomes as o

    def flag(col: sa.ColumnElement) -> sa.ColumnElement:
        return sa.case((col.is_(True), 1), else_=0)

    churn = o.c[f"churned_{window}d"]
    known = sa.case((churn.is_not(None), 1), else_=0)
    contacted, accepted = flag(o.c.contacted), flag(o.c.accepted)
    stayed = sa.case((churn.is_(False), 1), else_=0)
    revenue_known = sa.case((o.c.revenue_after.is_not(None), 1), else_=0)
    keys = [sa.func.coalesce(d.c[k], "(none)").label(k) for k in CELL_KEYS]
    q = (sa.select(*keys, sa.func.count().label("n"), sa.func.sum(known).label("known"),
                   sa.func.sum(flag(churn)).label("churned"), sa.func.sum(contacted).label("contacted"),
                   sa.func.sum(accepted).label("accepted"), sa.func.sum(contacted * known).label("retain_base"),
                   sa.func.sum(contacted * accepted * stayed).label("retained"),
                   sa.func.sum(revenue_known).label("rev_n"),
                   sa.func.sum(sa.func.coalesce(o.c.revenue_after, 0.0)).label("rev"),
                   sa.func.sum(sa.func.coalesce(d.c.channel_cost, 0.0) * contacted
                               + sa.func.coalesce(d.c.offer_cost, 0.0) * accepted).label("cost"))
         .select_from(d.outerjoin(o, sa.and_(o.c.decision_run == d.c.decision_run,
                                             o.c.subscriber_id == d.c.subscriber_id)))
         .where(d.c.status.in_(["offer", "control"]), d.c.decision_run.in_(runs))
         .group_by(*keys).order_by(*keys))
    out = store.read(q)
    for col in CELL_SUMS:
        out[col] = pd.to_numeric(out[col]).fillna(0).astype(float)
    return out


def measure(cell_table: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """Treated vs control per value of `by` (None: one 'all' row), from `cells`."""
    treated = (cell_table["status"] == "offer").to_numpy()
    control = (cell_table["status"] == "control").to_numpy()
    sums = pd.DataFrame({
        "t_all": cell_table["n"] * treated, "c_all": cell_table["n"] * control,
        "t_n": cell_table["known"] * treated, "t_churned": cell_table["churned"] * treated,
        "c_n": cell_table["known"] * control, "c_churned": cell_table["churned"] * control,
        # contacts, acceptances and cost are the treated subscribers' only: a contacted control subscriber is
        # a field mistake (ingest warns) and still counts as control, never as treated
        "contacted": cell_table["contacted"] * treated, "accepted": cell_table["accepted"] * treated,
        "retain_base": cell_table["retain_base"] * treated, "retained": cell_table["retained"] * treated,
        "cost": cell_table["cost"] * treated,
        "t_rev_n": cell_table["rev_n"] * treated, "t_rev": cell_table["rev"] * treated,
        "c_rev_n": cell_table["rev_n"] * control, "c_rev": cell_table["rev"] * control,
    })
    key = cell_table[by].astype(str).to_numpy() if by else np.full(len(cell_table), "all", dtype=object)
    sums = sums.groupby(key, sort=True).sum()
    out = pd.DataFrame(index=sums.index)
    out.index.name = by or "group"
    out["treated"] = sums["t_all"].astype(int)
    out["control"] = sums["c_all"].astype(int)
    out["n_treated"] = sums["t_n"].astype(int)
    out["n_control"] = sums["c_n"].astype(int)
    out["pending"] = (sums["t_all"] + sums["c_all"] - sums["t_n"] - sums["c_n"]).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["churn_treated"] = sums["t_churned"] / sums["t_n"]
        out["churn_control"] = sums["c_churned"] / sums["c_n"]
        uplift, low, high = newcombe(sums["c_churned"], sums["c_n"], sums["t_churned"], sums["t_n"])
        out["uplift"], out["ci_low"], out["ci_high"] = uplift, low, high
        out["contacted"] = sums["contacted"].astype(int)
        out["accepted"] = sums["accepted"].astype(int)
        out["retention_success"] = sums["retained"] / sums["retain_base"]
        out["cost"] = sums["cost"]
        out["saved"] = out["uplift"] * out["n_treated"]
        out["cost_per_saved"] = np.where(out["saved"] > 0, out["cost"] / out["saved"], np.nan)
        revenue_gain = sums["t_rev"] / sums["t_rev_n"] - sums["c_rev"] / sums["c_rev_n"]
        out["revenue_kept"] = revenue_gain * out["treated"]
        out["net_revenue_kept"] = out["revenue_kept"] - out["cost"]
    cols = [out[c] for c in ("uplift", "ci_low", "ci_high", "n_treated", "n_control")]
    out["verdict"] = [verdict(*values) for values in zip(*cols, strict=True)]
    out["flagged"] = out["verdict"].isin(FLAGGED_VERDICTS)
    return out.reset_index()


def check_window(window: int) -> None:
    if window not in WINDOWS:
        raise DataError(f"--window must be one of {', '.join(map(str, WINDOWS))} days, got {window}")


def rule_uplift(store: Any, runs: list[str], window: int = 90, *,
                cell_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per rule, `runs` pooled: the `measure` table by rule_id. The one per-rule uplift computation.

    Both the report (one run or all) and `engine.feedback.learning.flagged_rules` (all runs) read it, so a
    rule has the same uplift, interval, verdict and flag wherever it is shown. `cell_table`: the runs'
    `_cells_sql`, when the caller already has it.
    """
    check_window(window)
    return measure(_cells_sql(store, runs, window) if cell_table is None else cell_table, "rule_id")


def flags_from(table: pd.DataFrame) -> list[RuleFlag]:
    """RuleFlags for the flagged rows (`FLAGGED_VERDICTS`) of a per-rule `measure` table, worst first."""
    rows = table[table["flagged"].astype(bool)].sort_values(["uplift", "rule_id"], na_position="first")
    return [RuleFlag(str(r["rule_id"]), r["verdict"], float(r["uplift"]), float(r["ci_low"]), float(r["ci_high"]),
                     int(r["n_treated"]), int(r["n_control"])) for _, r in rows.iterrows()]


@dataclass
class Report:
    """A measurement of one decision run (or all runs pooled). Tables are `measure` outputs."""

    runs: list[str]
    window: int
    generated_at: str
    store: str
    headline: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    flagged: list[RuleFlag]
    overdue: pd.DataFrame | None = None
    counts: dict[str, int] = field(default_factory=dict)
    qini: pd.DataFrame | None = None  # per offer: treated, control, qini, auuc, uplift_at_30 (+ curve points)
    no_effect_cost: float = 0.0  # cost of offers whose uplift interval includes 0
    no_effect: pd.DataFrame | None = None  # those offers: offer_id, uplift, ci_low, ci_high, cost

    @property
    def label(self) -> str:
        return self.runs[0] if len(self.runs) == 1 else f"{len(self.runs)} runs"

    @property
    def one_line(self) -> str:
        h = self.headline
        if not h.get("n_treated"):
            return f"run {self.label}: no outcomes for the {self.window}-day window yet"
        return (f"run {self.label}: uplift {h['uplift']:+.3f} (95% CI {h['ci_low']:+.3f} to {h['ci_high']:+.3f}) on "
                f"{h['n_treated']:,} treated vs {h['n_control']:,} control; {len(self.flagged)} rule(s) flagged")

    def as_dict(self) -> dict[str, Any]:
        def cell(v: Any) -> Any:
            if isinstance(v, (bool, np.bool_)):
                return bool(v)
            return v if isinstance(v, str) else _num(v)

        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: cell(v) for k, v in row.items()} for row in df.to_dict(orient="records")]

        return {"runs": self.runs, "window_days": self.window, "generated_at": self.generated_at,
                "store": self.store, "counts": self.counts, "headline": {k: _num(v) for k, v in self.headline.items()},
                "tables": {k: records(v) for k, v in self.tables.items()},
                "flagged_rules": [f.as_dict() for f in self.flagged],
                "overdue": None if self.overdue is None else records(self.overdue),
                "qini_by_offer": [] if self.qini is None else records(self.qini),
                "cost_without_measured_effect": {"total": _num(self.no_effect_cost),
                                                 "offers": [] if self.no_effect is None else records(self.no_effect)},
                "method": "uplift = control churn - treated churn (intention to treat); 95% CI: Newcombe hybrid "
                          "score interval (Wilson per rate)"}


def _headline(cell_table: pd.DataFrame, tables: dict[str, pd.DataFrame], not_targeted: float) -> dict[str, Any]:
    h: dict[str, Any] = {}
    if len(tables["overall"]):
        overall = tables["overall"].iloc[0]
        for k in ("treated", "control", "n_treated", "n_control"):
            h[k] = int(overall[k])
        for k in ("churn_treated", "churn_control", "uplift", "ci_low", "ci_high", "retention_success", "cost",
                  "saved", "cost_per_saved", "net_revenue_kept"):
            h[k] = float(overall[k])
    grades = tables["risk_grade"]
    high = grades[grades["risk_grade"] == "high"]
    if len(high):
        h["high_risk_churn_treated"] = high["churn_treated"].iloc[0]
        h["high_risk_churn_control"] = high["churn_control"].iloc[0]
    vip = cell_table[(cell_table["value_tier"] == "high") & (cell_table["status"] == "offer")]
    base = vip["retain_base"].sum()
    h["retention_success_high_value"] = vip["retained"].sum() / base if base else np.nan
    h["churn_not_targeted"] = not_targeted
    return h


def _not_targeted_churn(store: Any, runs: list[str], window: int) -> float:
    """Churn of the subscribers neither treated nor control (context only: they were not at risk enough)."""
    from engine.feedback.store import decisions as d
    from engine.feedback.store import outcomes as o

    churn = o.c[f"churned_{window}d"]
    q = (sa.select(sa.func.count().label("n"), sa.func.sum(sa.case((churn.is_(True), 1), else_=0)).label("churned"))
         .select_from(d.join(o, sa.and_(o.c.decision_run == d.c.decision_run,
                                        o.c.subscriber_id == d.c.subscriber_id)))
         .where(d.c.status.not_in(["offer", "control"]), d.c.decision_run.in_(runs), churn.is_not(None)))
    row = store.read(q).iloc[0]
    n = int(row["n"] or 0)
    return float(row["churned"] or 0) / n if n else float("nan")


def _pick_runs(store: Any, run: str | None, runs: pd.DataFrame) -> list[str]:
    if len(runs) == 0:
        raise DataError(f"the decision store ({store.display_url}) holds no decision runs",
                        hint="decide with `retain decide` (recorded automatically) or `retain feedback record DIR`")
    if run == "all":
        return list(runs["decision_run"])
    if run is None:
        with_outcomes = runs[runs["outcomes"] > 0]
        return [str((with_outcomes if len(with_outcomes) else runs)["decision_run"].iloc[0])]
    if run not in set(runs["decision_run"]):
        raise DataError(f"decision run '{run}' is not in the decision store ({store.display_url})",
                        hint="see `retain feedback runs`")
    return [run]


def build_report(settings: Settings, run: str | None = None, *, window: int = 90, overdue: bool = False,
                 today: dt.date | None = None, url: str | None = None) -> Report:
    """Measure a run (default: the latest run with outcomes; 'all': every run pooled) from the store.

    The database aggregates decisions x outcomes into cells (one GROUP BY), so a 1 M-subscriber run is
    measured without loading its rows.
    """
    check_window(window)
    store = open_store(settings, url=url)
    assert store is not None
    all_runs = store.runs()
    runs = _pick_runs(store, run, all_runs)
    cell_table = _cells_sql(store, runs, window)
    tables = {"overall": measure(cell_table, None)}
    for by in GROUPINGS:
        tables[by] = (rule_uplift(store, runs, window, cell_table=cell_table) if by == "rule_id"
                      else measure(cell_table, by))
    chosen = all_runs[all_runs["decision_run"].isin(runs)]
    treated = int(cell_table.loc[cell_table["status"] == "offer", "n"].sum())
    counts = {"decisions": int(chosen["subscribers"].sum()), "outcomes": int(chosen["outcomes"].sum()),
              "treated": treated, "control": int(cell_table.loc[cell_table["status"] == "control", "n"].sum())}
    return Report(runs=runs, window=window, generated_at=now_iso(), store=store.display_url,
                  headline=_headline(cell_table, tables, _not_targeted_churn(store, runs, window)), tables=tables,
                  flagged=flags_from(tables["rule_id"]),
                  overdue=overdue_orders(settings, today=today, url=url) if overdue else None, counts=counts)


def overdue_orders(settings: Settings, *, today: dt.date | None = None, url: str | None = None) -> pd.DataFrame:
    """Work orders (every run) past their due date with no outcome (or contact not reported), oldest first."""
    today = today or dt.date.today()
    store = open_store(settings, url=url)
    if store is None:
        raise StoreError("no decision store yet")
    w, o = orders_table, outcomes_table
    q = (sa.select(w.c.order_id, w.c.decision_run, w.c.subscriber_id, w.c.channel, w.c.offer_id, w.c.rule_id,
                   w.c.priority, w.c.due_date)
         .select_from(w.outerjoin(o, sa.and_(o.c.decision_run == w.c.decision_run,
                                             o.c.subscriber_id == w.c.subscriber_id)))
         .where(w.c.due_date < today.isoformat(), sa.or_(o.c.decision_run.is_(None), o.c.contacted.is_(None)))
         .order_by(w.c.due_date, w.c.channel, w.c.priority.desc(), w.c.order_id))
    out = store.read(q)
    due = pd.to_datetime(out["due_date"]).to_numpy(dtype="datetime64[D]")
    out["business_days_overdue"] = np.busday_count(due, np.datetime64(today)) if len(out) else []
    return out


# ---------------------------------------------------------------------------------------------
# publishing: HTML + JSON + charts, MLflow
# ---------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def charts(report: Report) -> dict[str, bytes]:
    """PNG charts: uplift per rule with CIs; churn treated vs control per risk grade; net revenue per offer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    rules = report.tables["rule_id"].dropna(subset=["uplift"]).sort_values("uplift")
    if len(rules):
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(rules) + 1.5))
        y = np.arange(len(rules))
        colors = ["#c0392b" if f else "#27ae60" for f in rules["flagged"]]
        err = np.vstack([rules["uplift"] - rules["ci_low"], rules["ci_high"] - rules["uplift"]])
        ax.errorbar(rules["uplift"], y, xerr=err, fmt="none", ecolor="#7f8c8d", capsize=3)
        ax.scatter(rules["uplift"], y, c=colors, zorder=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, rules["rule_id"])
        ax.set_xlabel(f"uplift: control churn - treated churn ({report.window} days), 95% CI")
        ax.set_title("Uplift per rule (red: flagged)")
        out["uplift_by_rule.png"] = _png(fig)
    grades = report.tables["risk_grade"]
    if len(grades):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = np.arange(len(grades))
        ax.bar(x - 0.2, grades["churn_control"].fillna(0), 0.4, label="control", color="#95a5a6")
        ax.bar(x + 0.2, grades["churn_treated"].fillna(0), 0.4, label="treated", color="#2980b9")
        ax.set_xticks(x, grades["risk_grade"])
        ax.set_ylabel(f"churn rate within {report.window} days")
        ax.set_title("Churn treated vs control per risk grade")
        ax.legend()
        out["churn_by_risk_grade.png"] = _png(fig)
    offers = report.tables["offer_id"].dropna(subset=["net_revenue_kept"]).sort_values("net_revenue_kept")
    if len(offers):
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(offers) + 1.5))
        colors = ["#27ae60" if v > 0 else "#c0392b" for v in offers["net_revenue_kept"]]
        ax.barh(offers["offer_id"], offers["net_revenue_kept"], color=colors)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("net revenue kept (revenue gain vs control - cost)")
        ax.set_title("Net revenue kept per offer")
        out["net_revenue_by_offer.png"] = _png(fig)
    curves = report.qini[report.qini["curve_x"].map(len) > 0] if report.qini is not None else pd.DataFrame()
    if len(curves):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in curves.sort_values("treated", ascending=False).head(10).itertuples():
            ax.plot(r.curve_x, r.curve_y, label=f"{r.offer_id} (Qini {r.qini:+.2f})")
            ax.plot([0, 1], [0, r.curve_y[-1]], color="#bdc3c7", lw=0.6, ls="--")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("share of the offer's subscribers, highest expected saved value first")
        ax.set_ylabel(f"extra stayers vs control ({report.window} days)")
        ax.set_title("Qini curve per offer (dashed: random targeting)")
        ax.legend(fontsize=7)
        out["qini_by_offer.png"] = _png(fig)
    return out


DISPLAY_COLUMNS = ["treated", "control", "pending", "churn_treated", "churn_control", "uplift", "ci_low", "ci_high",
                   "contacted", "accepted", "retention_success", "cost", "saved", "cost_per_saved",
                   "net_revenue_kept", "verdict"]


def _fmt(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if col in ("churn_treated", "churn_control", "retention_success"):
        return f"{v:.1%}"
    if col in ("uplift", "ci_low", "ci_high"):
        return f"{v:+.3f}"
    if col in ("cost", "cost_per_saved", "net_revenue_kept", "saved"):
        return f"{v:,.1f}"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    return str(v)


def _html_table(df: pd.DataFrame, key: str) -> str:
    cols = [key, *DISPLAY_COLUMNS]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for _, r in df.iterrows():
        cls = ' class="flag"' if r.get("flagged") else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(c, r[c]))}</td>" for c in cols) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report, images: dict[str, bytes]) -> str:
    h = report.headline

    def pct(k: str) -> str:
        return _fmt("churn_treated", h.get(k))

    items = [
        f"Uplift (control churn - treated churn, {report.window} days): <b>{_fmt('uplift', h.get('uplift'))}</b> "
        f"(95% CI {_fmt('uplift', h.get('ci_low'))} to {_fmt('uplift', h.get('ci_high'))}), "
        f"{_fmt('n', h.get('n_treated'))} treated vs {_fmt('n', h.get('n_control'))} control",
        f"High-risk churn: treated {pct('high_risk_churn_treated')} vs control {pct('high_risk_churn_control')}",
        f"Retention success (accepted and stayed / contacted): {pct('retention_success')}; "
        f"high value {pct('retention_success_high_value')}",
        f"Subscribers saved: {_fmt('saved', h.get('saved'))}; cost {_fmt('cost', h.get('cost'))}; "
        f"cost per saved subscriber {_fmt('cost', h.get('cost_per_saved'))}; "
        f"net revenue kept {_fmt('cost', h.get('net_revenue_kept'))}",
        f"Churn of subscribers not targeted (context, not a comparison): {pct('churn_not_targeted')}",
    ]
    parts = [f"<h1>Retention report - {html.escape(report.label)}</h1>",
             f"<p>Runs: {html.escape(', '.join(report.runs))}; store {html.escape(report.store)}; generated "
             f"{html.escape(report.generated_at)}; {report.counts.get('outcomes', 0):,} outcomes for "
             f"{report.counts.get('decisions', 0):,} decisions.</p>",
             "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"]
    parts.append(f"<p>Cost spent where the measured effect is indistinguishable from zero (offers whose uplift "
                 f"interval includes 0): <b>{_fmt('cost', report.no_effect_cost)}</b>"
                 + (f" ({html.escape(', '.join(report.no_effect['offer_id'].astype(str)))})"
                    if report.no_effect is not None and len(report.no_effect) else "") + "</p>")
    if report.qini is not None and len(report.qini):
        q = report.qini.drop(columns=["curve_x", "curve_y"])
        parts.append("<h2>Qini per offer</h2>" + q.to_html(index=False, border=0, float_format=lambda v: f"{v:+.3f}"))
    if report.flagged:
        parts.append("<h2>Flagged rules</h2><ul>" + "".join(f"<li>{html.escape(f.line())}</li>"
                                                             for f in report.flagged) + "</ul>")
    for name, png in images.items():
        parts.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    for key, df in report.tables.items():
        parts.append(f"<h2>By {html.escape(GROUP_TITLES[key])}</h2>" + _html_table(df, key if key != "overall"
                                                                                  else "group"))
    if report.overdue is not None:
        parts.append(f"<h2>Overdue work orders ({len(report.overdue):,})</h2>"
                     + report.overdue.head(500).to_html(index=False, border=0))
    parts.append("<h2>Method</h2><p>" + html.escape(
        "Uplift = churn rate of control subscribers - churn rate of treated subscribers of the same rule (offer, "
        "channel, segment), intention to treat; subscribers without an outcome for the window are pending. 95% "
        "confidence interval: Newcombe hybrid score interval (Wilson interval per rate). A rule is flagged when "
        "the interval includes 0 or lies below it. Cost = channel cost per contact made + offer cost per accepted "
        "offer. Net revenue kept = (mean revenue after of treated - of control) x treated - cost.") + "</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0;"
             "font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}"
             "tr.flag td{background:#fdecea}img{max-width:100%;margin:1em 0;display:block}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>retain report {html.escape(report.label)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """report.html (charts embedded), report.json, the chart PNGs, overdue.csv: published together."""
    from engine.data.io import staged_outputs

    out = Path(out_dir)
    images = charts(report)
    files: dict[str, Path] = {}
    with staged_outputs(out) as stage:
        (stage / "report.html").write_text(render_html(report, images))
        (stage / "report.json").write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
        files["html"], files["json"] = out / "report.html", out / "report.json"
        for name, png in images.items():
            (stage / name).write_bytes(png)
            files[name] = out / name
        if report.overdue is not None:
            report.overdue.to_csv(stage / "overdue.csv", index=False)
            files["overdue"] = out / "overdue.csv"
    return files


def log_report(settings: Settings, report: Report, files: dict[str, Path]) -> str:
    """One MLflow run per report in experiment 'churn-reports': headline metrics, flagged rules, the files."""
    import mlflow

    from engine.model.registry import connect, ensure_experiment

    connect(settings)
    experiment_id = ensure_experiment(settings, REPORT_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"report-{report.label}") as run:
        mlflow.set_tags({"retain.kind": "report", "retain.decision_runs": ",".join(report.runs)[:5000],
                         "retain.flagged_rules": ",".join(f.rule_id for f in report.flagged)[:5000]})
        mlflow.log_params({"window_days": report.window, "runs": len(report.runs)})
        metrics = {k: float(v) for k, v in report.headline.items() if _num(v) is not None}
        metrics["flagged_rules"] = len(report.flagged)
        if report.overdue is not None:
            metrics["overdue_orders"] = len(report.overdue)
        mlflow.log_metrics(metrics)
        for path in files.values():
            mlflow.log_artifact(str(path))
        return run.info.run_id

