"""Spend on saves, not on acceptances: acceptance vs incremental-value arbitration on the simulator's truth.

Seeded, in one process, no MLflow: a churn model is fitted on a base month (CatBoost on the built-in
pipeline, packaged as the engine's ChurnModel). The logging policy of months 1 and 2 is simulated from the
shared per-row step (`engine.decision.assess`: candidates with P(accept) and expected net value) and the
engine's allocation (`allocate_arrays`, best value first, one budget), with exploration and control drawn
as deployed. The comparison of month 2 is `retain decide`'s own decision function (`decide_frame`) on the
sample policy set switched to `best_value` and to `incremental_value` (tau from the month-1 uplift model,
shrunk toward the offers' `effect:` priors as in production), same budget, no channel capacity, no
exploration; its control group holds back 10% of the chosen offers in both arms.

1. **Month 1, logged under acceptance arbitration**: net value = P(churn) x P(accept) x value kept x horizon
   - cost; budget B; exploration (epsilon, stable per subscriber) and the 10% control group; outcomes drawn
   from the simulator's truth (engine.feedback.outcomes.TRUTH: offers answering the true reason are
   accepted and save far more often, care messages about never; the control group gets nothing). The uplift
   model is trained on that log (T-learner, shrunk toward prior effect 0).
2. **Month 2, same budget B, decided both ways by `decide_frame`**: `arbitration: best_value` (acceptance) and
   `arbitration: incremental_value` (net value = tau x value kept x horizon - cost). For each: the
   simulator's true expected saves within 90 days (`subscriber_effects`, not an estimate) of the offers sent
   (status `offer`) and their cost (offer + channel cost, what the budget counts).
3. **OPE**: month 2 is logged under acceptance arbitration (with exploration and control, outcomes drawn);
   the incremental policy's saves are estimated from that log (doubly robust, uplift model as reward model;
   IPS and SNIPS printed too) with a bootstrap 95% interval, against its true value from step 2.

    .venv/bin/python benchmarks/uplift.py                  # 60 k subscribers a month, epsilon 0.05 (~70 s)
    .venv/bin/python benchmarks/uplift.py --rows 40000 --epsilon 0.2

The last line printed is JSON with the issue's keys (plus a few more).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from catboost import CatBoostClassifier, Pool  # noqa: E402

from engine.config import load_settings  # noqa: E402
from engine.data.labelled import DatasetConfig  # noqa: E402
from engine.data.simulator import generate  # noqa: E402
from engine.decision.arbitration import allocate_arrays  # noqa: E402
from engine.decision.assess import assess  # noqa: E402
from engine.decision.decide import decide_frame  # noqa: E402
from engine.decision.run import load_policy_engine  # noqa: E402
from engine.feedback.outcomes import TRUTH, answered_reasons, subscriber_effects  # noqa: E402
from engine.model.churn import ChurnModel  # noqa: E402
from engine.model.features import FeaturePipeline  # noqa: E402
from engine.model.registry import LoadedModel  # noqa: E402
from engine.uplift.effect import fit_uplift, incremental_effect  # noqa: E402
from engine.uplift.emp import churn_model_emp  # noqa: E402
from engine.uplift.explore import NO_CONTACT, explore, stable_uniforms, with_control  # noqa: E402
from engine.uplift.metrics import uplift_metrics  # noqa: E402
from engine.uplift.ope import OverlapError, action_keys, estimate  # noqa: E402

RUN_DATE = dt.date(2025, 6, 2)
SEEDS = {"base": 1, "month_1": 11, "month_2": 12, "outcomes_1": 101, "outcomes_2": 102}


def churn_model(base: pd.DataFrame, settings) -> LoadedModel:
    cfg = DatasetConfig.builtin()
    pipe = FeaturePipeline(list(cfg.categorical), list(cfg.numeric), derive=True).fit(base)
    booster = CatBoostClassifier(iterations=300, depth=6, learning_rate=0.08, random_seed=0, thread_count=2,
                                 verbose=False, allow_writing_files=False)
    booster.fit(Pool(pipe.transform(base), base["churn"].astype(int), cat_features=pipe.categorical_features_))
    model = ChurnModel.from_parts(booster, pipe, {"reasons": settings.reasons, "reason_labels": settings.reason_labels,
                                                  "value_segmenter": None, "calibration": None})
    return LoadedModel(uri="benchmark", name="churn", version=None, run_id=None, model=model)


def candidates(month: pd.DataFrame, loaded: LoadedModel, engine, settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored rows, contactable candidates: one per subscriber x offer x channel, best rank kept)."""
    a = assess(month.drop(columns=["churn", "churn_reason"]), loaded=loaded, policy_engine=engine, settings=settings,
               run_date=RUN_DATE)
    c = a.candidates
    c = c[c["contactable"].to_numpy(dtype=bool) & c["offer_id"].notna().to_numpy()]
    c = c.sort_values(["row", "rank"], kind="stable").drop_duplicates(["row", "offer_id", "channel"])
    c = c.reset_index(drop=True)
    c["churn_probability"] = a.scored["churn_probability"].to_numpy()[c["row"].to_numpy()]
    c["reason"] = c["reason"].astype(object) if "reason" in c else a.scored["reason"].to_numpy()[c["row"].to_numpy()]
    return a.scored, c


def allocate(c: pd.DataFrame, net_value: np.ndarray, n_rows: int, budget: float | None, keys: np.ndarray) -> np.ndarray:
    """Per subscriber the chosen candidate index (or NO_CONTACT), best value first within one budget."""
    codes, names = pd.factorize(c["channel"].to_numpy(dtype=object))
    res = allocate_arrays(row=c["row"].to_numpy(), key=keys, channel=codes.astype(np.int64),
                          channel_names=[str(x) for x in names], priority=c["priority"].fillna(0).to_numpy(float),
                          rank=c["rank"].to_numpy(), total_cost=c["total_cost"].to_numpy(float), net_value=net_value,
                          n_rows=n_rows, budget=budget, capacity={}, prefer="best_value")
    chosen = np.full(n_rows, NO_CONTACT, dtype=np.int64)
    chosen[c["row"].to_numpy()[res.chosen]] = res.chosen
    return chosen


def acceptance_value(c: pd.DataFrame) -> np.ndarray:
    return c["net_value"].to_numpy(dtype=float)  # P(churn) x P(accept) x value kept x horizon - cost (assess)




def policies_with(arbitration: str, folder: Path) -> Path:
    """The sample policy set with another arbitration mode (a copy under `folder`)."""
    import shutil

    out = folder / f"policies-{arbitration}"
    shutil.copytree(ROOT / "policies", out)
    text = (out / "policy.yaml").read_text()
    assert "arbitration: first" in text
    (out / "policy.yaml").write_text(text.replace("arbitration: first", f"arbitration: {arbitration}"))
    return out


def decide_month(month: pd.DataFrame, loaded: LoadedModel, policies: Path, settings, budget: float,
                 uplift=None) -> pd.DataFrame:
    """`retain decide`'s decision table for the month: the given budget, no channel capacity, no exploration."""
    arb = settings.arbitration.model_copy(update={"budget": budget})
    channels = {k: v.model_copy(update={"daily_capacity": None}) for k, v in settings.channels.items()}
    run = settings.model_copy(update={"arbitration": arb, "channels": channels})
    engine = load_policy_engine(policies)
    d = decide_frame(month.drop(columns=["churn", "churn_reason"]), loaded=loaded, policy_engine=engine,
                     settings=run, run_id=f"benchmark-{policies.name}", run_date=RUN_DATE, uplift=uplift,
                     explore=False)
    return d.table


def decided_saves_and_cost(table: pd.DataFrame, month: pd.DataFrame, settings) -> tuple[float, float, int]:
    """True expected saves (simulator) and cost of the offers a decision table sends (status offer)."""
    sent = np.flatnonzero(table["status"].to_numpy(dtype=object) == "offer")
    truth = month.iloc[sent]
    frame = pd.DataFrame({"offer_id": table["offer_id"].to_numpy(dtype=object)[sent],
                          "channel": table["channel"].to_numpy(dtype=object)[sent], "churn": truth["churn"].to_numpy(),
                          "churn_reason": truth["churn_reason"].to_numpy(dtype=object)})
    cost = float(table["offer_cost"].to_numpy(float)[sent].sum() + table["channel_cost"].to_numpy(float)[sent].sum())
    return float(subscriber_effects(frame, settings).sum()), cost, len(sent)




def draw_outcomes(offer: np.ndarray, channel: np.ndarray, month: pd.DataFrame, settings, seed: int) -> dict:
    """contacted, accepted, churned within 90 days per subscriber for the final actions (None: no contact)."""
    answers = answered_reasons(settings)
    reason = month["churn_reason"].astype(object).to_numpy()
    sent = np.array([isinstance(o, str) for o in offer])
    match = np.array([s and isinstance(r, str) and r in answers.get(o, ()) for s, o, r in
                      zip(sent, offer, reason, strict=True)])
    reach = pd.Series(channel).map(dict(TRUTH.reach)).fillna(TRUTH.reach_default).to_numpy(float)
    u = np.random.default_rng(seed).random((5, len(month)))
    churn = month["churn"].to_numpy(float) > 0.5
    contacted = sent & (u[0] < reach)
    accepted = contacted & (u[1] < np.where(match, TRUTH.accept_match, TRUTH.accept_other))
    saved = churn & accepted & (u[2] < np.where(match, TRUTH.save_match, TRUTH.save_other))
    churned = (churn & ~saved) | (u[3] < TRUTH.later_churn) | (u[4] < TRUTH.later_churn)
    return {"contacted": contacted, "accepted": accepted, "churned": churned}


def log_month(c: pd.DataFrame, greedy: np.ndarray, month: pd.DataFrame, settings, epsilon: float, seed: str,
              outcome_seed: int) -> dict:
    """The logging policy as deployed: exploration, then the control group, then outcomes drawn."""
    n = len(month)
    keys = month["subscriber_id"].astype(str).to_numpy(dtype=object)
    ex = explore(c["row"].to_numpy(), n, greedy, keys, epsilon=epsilon, seed=seed)
    share = settings.control_group.share
    control = stable_uniforms(keys, settings.control_group.salt, streams=1)[0] < share
    action, propensity = with_control(ex, control, share)
    held = control & (ex.action != NO_CONTACT)
    would = np.where(ex.action >= 0, ex.action, 0)
    offer = np.where(action >= 0, c["offer_id"].to_numpy(dtype=object)[np.where(action >= 0, action, 0)], None)
    channel = np.where(action >= 0, c["channel"].to_numpy(dtype=object)[np.where(action >= 0, action, 0)], None)
    out = draw_outcomes(offer, channel, month, settings, outcome_seed)
    would_offer = np.where(ex.action >= 0, c["offer_id"].to_numpy(dtype=object)[would], None)
    would_channel = np.where(ex.action >= 0, c["channel"].to_numpy(dtype=object)[would], None)
    return {"action": action, "propensity": propensity, "offer": offer, "channel": channel, "control": held,
            "label_offer": np.where(held, would_offer, offer), "label_channel": np.where(held, would_channel, channel),
            "explored": ex.explored, **out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--budget-share", type=float, default=0.5,
                    help="budget B as a share of what unconstrained acceptance arbitration would spend in month 1")
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}")
    engine = load_policy_engine(ROOT / "policies")
    months = {k: generate(args.rows, seed=SEEDS[k]) for k in ("base", "month_1", "month_2")}
    loaded = churn_model(months["base"], settings)
    print(f"churn model fitted on {args.rows:,} base-month subscribers ({time.time() - t0:.0f} s)")

    # ---- month 1: logged under acceptance arbitration, uplift model trained on the log
    m1 = months["month_1"]
    _, c1 = candidates(m1, loaded, engine, settings)
    keys1 = m1["subscriber_id"].astype(str).to_numpy(dtype=object)
    unconstrained = allocate(c1, acceptance_value(c1), len(m1), None, keys1)
    budget = args.budget_share * float(c1["total_cost"].to_numpy()[unconstrained[unconstrained >= 0]].sum())
    greedy1 = allocate(c1, acceptance_value(c1), len(m1), budget, keys1)
    log1 = log_month(c1, greedy1, m1, settings, args.epsilon, "month-1", SEEDS["outcomes_1"])
    treated = log1["action"] >= 0
    print(f"month 1: {len(c1):,} contactable candidates, budget B = {budget:,.0f} ({args.budget_share:.0%} of the "
          f"unconstrained acceptance spend); logged {treated.sum():,} contacts, {log1['control'].sum():,} control, "
          f"{log1['explored'].sum():,} explored")
    cfg = DatasetConfig.builtin()
    raw1 = m1.drop(columns=["churn", "churn_reason"])
    hold = stable_uniforms(keys1, "benchmark-holdout", streams=1)[0] < 0.3
    fit_rows = np.flatnonzero(~hold)
    uplift = fit_uplift(raw1.iloc[fit_rows].reset_index(drop=True), offer_id=log1["label_offer"][fit_rows],
                        treated=treated[fit_rows], churned=log1["churned"][fit_rows],
                        channel=log1["label_channel"][fit_rows], randomised_control=log1["control"][fit_rows],
                        pipeline=FeaturePipeline(list(cfg.categorical), list(cfg.numeric), derive=True),
                        seed=0, threads=2)
    ev = np.flatnonzero(hold & np.array([isinstance(o, str) for o in log1["label_offer"]]))
    tau_ev = uplift.effect(raw1.iloc[ev], log1["label_offer"][ev], log1["label_channel"][ev])
    quality = uplift_metrics(1 - log1["churned"][ev].astype(float), treated[ev].astype(float), tau_ev)
    fitted = {o: round(i["weight"], 2) for o, i in uplift.offers.items() if i["fitted"]}
    print(f"uplift model on month 1's log: offers with a model (shrinkage weight) {fitted}; hold-out "
          f"({len(ev):,} rows with an offer): Qini {quality['qini']:+.3f}, AUUC {quality['auuc']:+.4f}, "
          f"uplift@30% {quality['uplift_at_30']:+.3f} ({time.time() - t0:.0f} s)")

    # ---- month 2: the same budget decided both ways by retain decide's function, true saves
    m2 = months["month_2"]
    _, c2 = candidates(m2, loaded, engine, settings)  # the logging policy's candidates (OPE below)
    keys2 = m2["subscriber_id"].astype(str).to_numpy(dtype=object)
    acc = allocate(c2, acceptance_value(c2), len(m2), budget, keys2)
    with tempfile.TemporaryDirectory() as folder:
        by_acceptance = decide_month(m2, loaded, policies_with("best_value", Path(folder)), settings, budget)
        by_increment = decide_month(m2, loaded, policies_with("incremental_value", Path(folder)), settings, budget,
                                    uplift=uplift)
    saves_a, cost_a, n_a = decided_saves_and_cost(by_acceptance, m2, settings)
    saves_i, cost_i, n_i = decided_saves_and_cost(by_increment, m2, settings)
    ratio = (saves_i / cost_i) / (saves_a / cost_a) if cost_i and cost_a and saves_a else float("nan")
    for name, saves, cost, n, table in (("acceptance", saves_a, cost_a, n_a, by_acceptance),
                                        ("incremental", saves_i, cost_i, n_i, by_increment)):
        offers = table["offer_id"].to_numpy(dtype=object)[table["status"].to_numpy(dtype=object) == "offer"]
        top = pd.Series(offers).value_counts().head(4).to_dict()
        print(f"month 2, {name:<11} arbitration (decide_frame): {n:,} offers sent, cost {cost:,.0f}, true saves "
              f"{saves:,.1f}, saves per 1,000 spent {1000 * saves / max(cost, 1e-9):.2f}; top offers {top}")
    print(f"true saves per unit cost, incremental / acceptance: {ratio:.2f}x (target >= 1.3x)")
    costs = [o.cost for o in engine.policy_set.offers.values()]
    emp_out = churn_model_emp(settings, loaded.model, m2, offer_costs=costs)
    print(f"EMP of the churn model on month 2: {emp_out.result.emp:,.2f} per subscriber (CLV {emp_out.clv:,.0f}, "
          f"incentive {emp_out.incentive:g}, contact {emp_out.contact:g}): contact the top "
          f"{emp_out.result.contact_share:.1%} (P(churn) >= {emp_out.result.threshold:.3f})")

    # ---- OPE: month 2 logged under acceptance arbitration; the incremental policy estimated from it
    log2 = log_month(c2, acc, m2, settings, args.epsilon, "month-2", SEEDS["outcomes_2"])
    logged = action_keys(log2["offer"], log2["channel"])
    intended = by_increment["status"].to_numpy(dtype=object) == "offer"  # the policy as sent (control: no contact)
    tgt_offer = np.where(intended, by_increment["offer_id"].to_numpy(dtype=object), None)
    tgt_channel = np.where(intended, by_increment["channel"].to_numpy(dtype=object), None)
    target = action_keys(tgt_offer, tgt_channel)
    raw2 = m2.drop(columns=["churn", "churn_reason"])
    p0 = uplift.churn_under(raw2, [None] * len(m2))
    q_l = 1 - (p0 - incremental_effect(uplift, raw2, log2["offer"], {}, channels=log2["channel"]))
    q_t = 1 - (p0 - incremental_effect(uplift, raw2, tgt_offer, {}, channels=tgt_channel))
    ope_fields = {"ope_estimate": None, "ope_ci_low": None, "ope_ci_high": None, "ope_ess": None}
    try:
        res = estimate(logged, log2["propensity"], target, {"stayed": 1 - log2["churned"].astype(float)},
                       q_logged={"stayed": q_l}, q_target={"stayed": q_t}, q_baseline={"stayed": 1 - p0},
                       rounds=args.rounds, seed=0, min_ess=30)
        for e in ("ips", "snips", "dr"):
            s = res.estimates["saves"][e]
            print(f"OPE {e.upper():<5} saves of the incremental policy from the acceptance log: {s.value:,.1f} "
                  f"(95% CI {s.ci_low:,.1f} .. {s.ci_high:,.1f}); truth {saves_i:,.1f}")
        dr = res.estimates["saves"]["dr"]
        print(f"effective sample size {res.ess:,.1f} for the target's {res.changed:,} contacts; {res.matched:,} logged "
              f"decisions agree with it")
        ope_fields = {"ope_estimate": round(dr.value, 2), "ope_ci_low": round(dr.ci_low, 2),
                      "ope_ci_high": round(dr.ci_high, 2), "ope_ess": round(res.ess, 1)}
    except OverlapError as exc:
        print(f"OPE refused: {exc}")
    print(f"wall {time.time() - t0:.0f} s")
    print(json.dumps({"true_saves_acceptance": round(saves_a, 2), "cost_acceptance": round(cost_a, 2),
                      "true_saves_incremental": round(saves_i, 2), "cost_incremental": round(cost_i, 2),
                      **{k: v for k, v in ope_fields.items() if k != "ope_ess"}, "ope_truth": round(saves_i, 2),
                      "saves_per_cost_ratio": round(ratio, 3), "ope_ess": ope_fields["ope_ess"],
                      "epsilon": args.epsilon, "budget": round(budget, 2), "rows": args.rows,
                      "uplift_holdout_qini": round(quality["qini"], 4), "emp": round(emp_out.result.emp, 3),
                      "emp_contact_share": round(emp_out.result.contact_share, 4)}))


if __name__ == "__main__":
    main()
