"""Policies mean what they say (issue 12), the policy-package side: validate's new warnings and coverage on
a population, test cases with derived signals, declared attributes and suppressions, explain's verdicts,
simulate --json's summary object, and the marketers' guide against the sample set."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from engine.config import Settings
from engine.decision.whatif import acceptance
from engine.errors import DataError
from engine.policy import load_policy_set
from engine.policy.explain import (
    CUT_SUPPRESSED,
    NO_OFFER,
    RULE_NOT_VALID,
    SUPPRESSES,
    WINNER,
    explain_record,
)
from engine.policy.simulate import SUMMARY_KEYS
from engine.policy.synthetic import synthetic_frame, synthetic_population
from engine.policy.testing import (
    DEFAULT_SUBSCRIBER,
    CaseResult,
    compare_case,
    load_cases,
    subscriber_record,
)
from engine.policy.validate import check_policy_set, from_table, synthetic, validate_policy_set

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "policies"
DECLARED = ROOT / "tests" / "fixtures" / "policies_declared"
GUIDE = SAMPLE / "README.md"
DAY = dt.date(2026, 6, 1)

OFFERS = """\
offers:
  - {id: a, description: A, cost: 1, value_kept: 10, channels: [sms, app_popup, outbound_call]}
  - {id: b, description: B, cost: 2, value_kept: 20, channels: [outbound_call]}
"""


def defaults() -> Settings:
    """The shipped settings (engine/defaults/config.yaml), whatever retain.yaml the working directory has."""
    from engine.config import _defaults

    return Settings.model_validate(_defaults())


def policy(tmp_path: Path, rules: str, extra: str = "") -> Path:
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(OFFERS + extra + "rules:\n" + rules)
    return folder


def findings_of(folder: Path, **kw) -> list:
    return check_policy_set(load_policy_set(folder), today=kw.pop("today", DAY), settings=kw.pop("settings",
                                                                                               Settings()), **kw)


def assert_located(findings) -> None:
    for f in findings:
        assert re.match(r".+\.yaml:\d+$", f.where), f"{f} names no file:line"


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
def test_suppression_shadowing_every_later_rule(tmp_path):
    folder = policy(tmp_path, """\
  - {id: hold, description: d, priority: 9, stage: intervention, when: {risk_grade: [high, medium, low]},
     then: {no_offer: true, note: finance hold}}
  - {id: r1, description: d, priority: 5, stage: intervention, when: {risk_grade: high}, then: {offer: a}}
  - {id: r2, description: d, priority: 1, stage: preventive, when: {tenure_months: {min: 3}}, then: {offer: b}}
""")
    found = findings_of(folder)
    assert_located(found)
    text = "\n".join(map(str, found))
    assert [f.check for f in found if f.check == "suppression-shadows-all"] == ["suppression-shadows-all"]
    assert "p.yaml:5: warning: suppression rule 'hold' (finance hold) shadows every rule after it" in text
    assert "never wins" not in text, "the later rules are covered by the suppression's warning"
    assert "offer 'a' is not used" not in text


def test_narrow_suppression_is_fine_and_named_in_never_wins(tmp_path):
    folder = policy(tmp_path, """\
  - {id: hold, description: d, priority: 9, stage: intervention, when: {reason: balance},
     then: {no_offer: true}}
  - {id: bal, description: d, priority: 5, stage: intervention, when: {reason: balance, risk_grade: high},
     then: {offer: a}}
  - {id: all, description: d, priority: 1, stage: preventive, then: {offer: b}}
""")
    found = findings_of(folder)
    text = "\n".join(map(str, found))
    assert "shadows every rule" not in text
    assert "rule 'bal' never wins: every subscriber it matches is suppressed first by higher-priority rule 'hold'" \
        in text


def test_grade_against_probability_contradicts_configured_thresholds(tmp_path):
    folder = policy(tmp_path, """\
  - {id: odd, description: d, priority: 5, stage: intervention,
     when: {risk_grade: low, churn_probability: {gt: 0.6}}, then: {offer: a}}
  - {id: mid, description: d, priority: 4, stage: intervention,
     when: {risk_grade: medium, churn_probability: {gt: 0.6}}, then: {offer: b}}
  - {id: new-but-old, description: d, priority: 3, stage: intervention,
     when: {lifecycle_stage: new, tenure_months: {min: 24}}, then: {offer: a}}
  - {id: all, description: d, priority: 1, stage: preventive, then: {offer: b}}
""")
    found = [f for f in findings_of(folder) if f.check == "contradicts-engine"]
    assert_located(found)
    text = "\n".join(map(str, found))
    assert "rule 'odd' can never fire: its conditions (risk_grade = low; churn_probability > 0.6) contradict how " \
           "the engine derives risk_grade: the engine grades churn_probability >= 0.5 high, >= 0.25 medium" in text
    assert "rule 'mid'" in text
    assert "rule 'new-but-old' can never fire" in text and "new below 6 months" in text
    # the thresholds come from the settings: with high at 0.8, medium above 0.6 is possible
    wide = Settings(risk_grades={"high": 0.8, "medium": 0.25})
    text = "\n".join(map(str, findings_of(folder, settings=wide)))
    assert "rule 'mid'" not in text and "rule 'odd' can never fire" in text


def test_rule_dates_like_offer_dates(tmp_path):
    folder = policy(tmp_path, """\
  - {id: old, description: d, priority: 5, stage: intervention, valid_to: 2020-01-31, then: {offer: a}}
  - {id: later, description: d, priority: 4, stage: intervention, valid_from: 2030-01-01, then: {offer: a}}
  - {id: now, description: d, priority: 3, stage: intervention, valid_from: 2026-01-01, valid_to: 2026-12-31,
     when: {risk_grade: high}, then: {offer: b}}
  - {id: all, description: d, priority: 1, stage: preventive, then: {offer: a}}
""")
    text = "\n".join(map(str, findings_of(folder)))
    assert "rule 'old': cannot fire on 2026-06-01: it expired on 2020-01-31 (valid_to)" in text
    assert "rule 'later': cannot fire on 2026-06-01: it starts on 2030-01-01 (valid_from)" in text
    assert "'now'" not in text


def test_declared_attributes_are_checked_like_built_ins(tmp_path):
    extra = """\
attributes:
  - {name: open_complaint, type: boolean, description: d}
  - {name: nps, type: numeric, description: d, min: 0, max: 10}
  - {name: segment, type: categorical, description: d, values: [gold, silver]}
"""
    folder = policy(tmp_path, """\
  - {id: complaint, description: d, priority: 9, stage: intervention, when: {open_complaint: true},
     then: {offer: b, exclude_channels: [sms]}}
  - {id: complaint-too, description: d, priority: 8, stage: intervention,
     when: {open_complaint: true, segment: gold}, then: {offer: a}}
  - {id: impossible, description: d, priority: 7, stage: intervention,
     when: {all: [{nps: {gt: 8}}, {nps: {lt: 3}}]}, then: {offer: a}}
  - {id: all, description: d, priority: 1, stage: preventive, then: {offer: a}}
""", extra)
    ps = load_policy_set(folder)
    found = check_policy_set(ps, today=DAY, settings=Settings())
    text = "\n".join(map(str, found))
    assert "rule 'complaint-too' never wins: every subscriber it matches is also matched by higher-priority rule " \
           "'complaint'" in text
    assert "rule 'impossible' can never fire: its conditions contradict each other" in text
    # coverage on a synthetic population carries the declared columns
    pop = synthetic(ps, Settings(), n=2000)
    assert {"open_complaint", "nps", "segment"} <= set(pop.frame.columns)
    assert pop.frame["nps"].between(0, 10).all() and set(pop.frame["segment"]) <= {"gold", "silver"}
    assert "declared attributes drawn at random" in pop.label


def test_coverage_on_a_population_when_rules_test_other_attributes(tmp_path):
    folder = tmp_path / "policies"
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns("tests"))
    inter = folder / "rules" / "intervention.yaml"
    inter.write_text(inter.read_text().split("  # --- catch-all")[0])
    prev = folder / "rules" / "preventive.yaml"
    prev.write_text(prev.read_text().split("  - id: preventive-care")[0])
    ps = load_policy_set(folder)
    static = check_policy_set(ps, today=DAY, settings=Settings())
    assert not [f for f in static if f.check == "uncovered-segment"], "every segment is covered by *some* rule"
    result = validate_policy_set(ps, today=DAY, population=synthetic(ps, Settings()), settings=Settings())
    unreached = [f for f in result.findings if f.check == "unreached"]
    assert len(unreached) == 1
    cov = result.coverage
    assert cov.unreached > 1000 and cov.reached + cov.unreached + cov.suppressed == cov.subscribers == 20_000
    assert "a synthetic population of 20,000 subscribers" in unreached[0].message
    assert f"{cov.unreached:,} of 20,000 subscribers" in unreached[0].message
    assert "after rule 'preventive-loyalty-long-tenure'" in unreached[0].message
    assert_located(unreached)
    # a decisions table as the population: named by its path
    table = synthetic_frame(500, seed=3)
    cov = validate_policy_set(ps, today=DAY, population=from_table(ps, table, "out/decisions.parquet"),
                              settings=Settings()).coverage
    assert cov.population == "out/decisions.parquet (500 subscribers)" and cov.subscribers == 500


def test_sample_reaches_everyone_and_validate_states_the_population(tmp_path):
    runner = CliRunner()
    from engine.cli.policy import app

    res = runner.invoke(app, ["validate", "--policies", str(SAMPLE)])
    assert res.exit_code == 0, res.output
    assert "coverage on a synthetic population of 20,000 subscribers" in res.output
    assert "0 reached by no rule" in res.output and "0 warning(s)" in res.output
    path = tmp_path / "d.csv"
    synthetic_frame(300, seed=5).to_csv(path, index=False)
    res = runner.invoke(app, ["validate", "--policies", str(SAMPLE), "--input", str(path)])
    assert res.exit_code == 0, res.output
    assert f"coverage on {path} (300 subscribers): 300 of 300" in res.output


def test_input_missing_a_declared_attribute_is_one_line(tmp_path):
    ps = load_policy_set(DECLARED)
    frame = synthetic_population(ps, 50).drop(columns=["bill_dispute"])
    with pytest.raises(DataError) as info:
        from_table(ps, frame, "in.csv")
    where = ps.declared["bill_dispute"].source
    assert info.value.message == f"input lacks declared attribute 'bill_dispute' (declared at {where})"
    assert re.fullmatch(r".*policies_declared/attributes\.yaml:\d+", where)
    assert ps.missing_declared([*frame.columns, "bill_dispute"]) is None
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    from engine.cli.policy import app

    res = CliRunner().invoke(app, ["validate", "--policies", str(DECLARED), "--input", str(path)])
    assert res.exit_code == 2 and "input lacks declared attribute 'bill_dispute' (declared at " in res.output
    assert "Traceback" not in res.output


def test_declared_example_validates_clean_in_its_window():
    ps = load_policy_set(DECLARED)
    found = check_policy_set(ps, today=dt.date(2027, 4, 1), population=synthetic(ps, Settings(), n=3000),
                             settings=Settings())
    assert found == []
    later = check_policy_set(ps, today=dt.date(2027, 7, 1), settings=Settings())
    assert [f.message for f in later] == ["rule 'spring-campaign': cannot fire on 2027-07-01: it expired on "
                                          "2027-05-31 (valid_to)"]


# ---------------------------------------------------------------------------------------------
# test cases
# ---------------------------------------------------------------------------------------------
def test_derived_signals_follow_the_raw_fields_a_case_sets():
    rec = subscriber_record({"data_gb_m0": 2.0, "data_gb_m1": 4.0})
    assert rec["data_change"] == -0.5 and rec["lifecycle_stage"] == "decline"
    rec = subscriber_record({"voice_min_m0": 450, "voice_min_m1": 300})
    assert rec["voice_change"] == 0.5 and rec["lifecycle_stage"] == "mature"
    rec = subscriber_record({"arpu_m0": 30, "arpu_m1": 60, "arpu_m2": 90})
    assert rec["arpu_mean_3m"] == 60 and rec["arpu_change"] == pytest.approx(30 / 90 - 1)
    assert rec["value_tier"] == "medium", "tiers come from the model's clusters unless cut by thresholds"
    cut = Settings(value_tiers={"method": "thresholds", "high": 80, "medium": 40})
    assert subscriber_record({"arpu_m0": 150, "arpu_m1": 150, "arpu_m2": 150}, settings=cut)["value_tier"] == "high"
    assert subscriber_record({"tenure_months": 3})["lifecycle_stage"] == "new"
    assert subscriber_record({"tenure_months": 12})["lifecycle_stage"] == "growth"
    given = subscriber_record({"data_gb_m0": 2.0, "data_gb_m1": 4.0, "data_change": 0.1, "lifecycle_stage": "growth"})
    assert given["data_change"] == 0.1 and given["lifecycle_stage"] == "growth", "what the case gives wins"
    assert subscriber_record({})["data_change"] == DEFAULT_SUBSCRIBER["data_change"]
    # grades follow the configured thresholds
    high = Settings(risk_grades={"high": 0.8, "medium": 0.4})
    assert subscriber_record({"churn_probability": 0.7}, settings=high)["risk_grade"] == "medium"
    assert subscriber_record({"risk_grade": "high"}, settings=high)["churn_probability"] == 0.9


def test_cases_with_declared_attributes_and_suppression_expectations():
    ps = load_policy_set(DECLARED)
    cases = load_cases(DECLARED, ps, settings=Settings())
    assert len(cases) == 5
    first = cases[0]
    assert first.record["bill_dispute"] is True and first.record["student"] is False and first.record["nps"] == 0
    assert first.case.expect.suppressed is True and first.case.expect.note_contains == "bill dispute"
    # the comparison understands a suppression from the decision row, by status or by the winning rule
    by_rule = {"offer_id": None, "channel": None, "rule_id": "bill-dispute-hold", "stage": "intervention",
               "matched_rules": "bill-dispute-hold", "message": None}
    assert compare_case(first, by_rule, ps).passed
    by_status = {**by_rule, "rule_id": None, "status": "suppressed", "note": "bill dispute open"}
    assert compare_case(first, by_status, ps).passed
    offered = {**by_rule, "offer_id": "recovery_call", "channel": "outbound_call", "rule_id": "complaint-no-sms"}
    res: CaseResult = compare_case(first, offered, ps)
    assert not res.passed and "suppressed: expected yes, got no" in res.failures
    assert compare_case(cases[1], offered, ps).passed


def test_bad_suppression_expectations_and_unknown_declared(tmp_path):
    folder = tmp_path / "p"
    shutil.copytree(DECLARED, folder)
    (folder / "tests" / "cases.yaml").write_text("""\
tests:
  - name: both
    subscriber: {bill_dispute: true}
    expect: {suppressed: true, offer: care_message}
  - name: typo
    subscriber: {bill_disput: true, nps: high}
    expect: {suppressed: true}
""")
    from engine.errors import PolicyError

    with pytest.raises(PolicyError) as info:
        load_cases(folder, settings=Settings())
    problems = "\n".join(info.value.problems)
    assert "cases.yaml:2: test 'both': expect has both suppressed: true and offer 'care_message'" in problems
    assert "cases.yaml:6: test 'typo': unknown attribute 'bill_disput' (hint: did you mean 'bill_dispute'?" in problems
    assert "cases.yaml:6: test 'typo': nps is numeric" in problems


def test_guide_lists_every_test_case_default():
    text = GUIDE.read_text()
    for key, value in DEFAULT_SUBSCRIBER.items():
        shown = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
        if isinstance(shown, float) and shown.is_integer():
            shown = int(shown)
        assert re.search(rf"\| `{key}` \| {re.escape(str(shown))} \|", text), f"default of {key} not in the guide"


# ---------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------
def test_explain_shows_suppression_dates_and_exclusions():
    ps = load_policy_set(DECLARED)
    rec = subscriber_record({"bill_dispute": True, "open_complaint": True, "value_tier": "high", "risk_grade": "high",
                             "reason": "price", "student": True}, declared=ps.declared)
    ex = explain_record(ps, rec, dt.date(2026, 6, 1))
    by_rule = {v.rule_id: v for v in ex.verdicts}
    assert by_rule["bill-dispute-hold"].status == SUPPRESSES and by_rule["bill-dispute-hold"].offer_id == NO_OFFER
    assert "bill dispute open" in by_rule["bill-dispute-hold"].detail
    assert by_rule["complaint-no-sms"].status == CUT_SUPPRESSED
    assert by_rule["complaint-no-sms"].channel == "preferred, not sms"
    assert by_rule["spring-campaign"].status == RULE_NOT_VALID
    assert by_rule["spring-campaign"].dates == "2027-03-01 to 2027-05-31"
    assert "decision date 2026-06-01" in by_rule["spring-campaign"].detail
    assert ex.suppressed_by == "bill-dispute-hold" and ex.note == "bill dispute open"
    assert ex.decision["status"] == "suppressed"
    # without the dispute: the complaint rule wins, by call (sms excluded), in the campaign window too
    rec.update(bill_dispute=False, preferred_channel="sms")
    ex = explain_record(ps, rec, dt.date(2027, 4, 1))
    by_rule = {v.rule_id: v for v in ex.verdicts}
    assert by_rule["complaint-no-sms"].status == WINNER
    assert ex.decision["channel"] == "outbound_call"
    assert by_rule["spring-campaign"].status == "matched (fallback)"


# ---------------------------------------------------------------------------------------------
# simulate --json
# ---------------------------------------------------------------------------------------------
def test_simulate_json_last_line_has_decides_summary_keys(tmp_path):
    from engine.cli.policy import app

    frame = synthetic_frame(2000, seed=11)
    path = tmp_path / "decisions.parquet"
    frame.to_parquet(path)
    res = CliRunner().invoke(app, ["simulate", "--input", str(path), "--json", "--date", "2026-06-01",
                                   "--no-learned"])
    assert res.exit_code == 0, res.output
    last = json.loads(res.output.strip().splitlines()[-1])
    assert list(last)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert sum(last["offers"].values()) == last["status"]["offer"] == sum(last["channels"].values())
    assert sum(last["status"].values()) == 2000
    # the values are decide's summary.json figures: decide's function on the same table, date and settings
    from engine.config import load_settings
    from engine.decision.decide import decide_frame
    from engine.policy import PolicyEngine

    ps = load_policy_set(SAMPLE)
    s = decide_frame(frame, policy_engine=PolicyEngine(ps), settings=load_settings(), run_date=DAY,
                     scored=True).summary
    assert last["offers"] == s["offers"] and last["channels"] == s["offers_per_channel"]
    assert last["status"] == s["status"]
    assert last["cost"] == s["budget_used"] and last["expected_saves"] == s["expected_saves"]
    # and they mean what they say: offer + channel cost of the offers sent; churn probability x P(accept)
    settings = load_settings()
    t = decide_frame(frame, policy_engine=PolicyEngine(ps), settings=settings, run_date=DAY, scored=True).table
    sent = (t["status"] == "offer").to_numpy()
    ids = t["offer_id"].to_numpy(dtype=object)[sent]
    channels = t["channel"].to_numpy(dtype=object)[sent]
    cost = sum(ps.offers[i].cost for i in ids) + sum(settings.channels[c].cost for c in channels)
    assert last["cost"] == pytest.approx(round(cost, 2))
    p_accept = acceptance(ids, frame["reason"].to_numpy(dtype=object)[sent], ps, settings)
    saves = float((frame["churn_probability"].to_numpy()[sent] * p_accept).sum())
    assert last["expected_saves"] == pytest.approx(round(saves, 1))
    # learned rates beside the priors: none here, so decide used the priors
    assert sum(r["offers"] for r in last["acceptance"]) == last["status"]["offer"]
    assert all(r["learned"] is None and r["used"] == r["prior"] for r in last["acceptance"])
    from engine.decision.whatif import simulate

    sim = simulate(PolicyEngine(ps), frame, on=DAY, settings=settings, learned={("care_message", "none"): 0.5})
    care = sim.acceptance.set_index(["offer_id", "reason"]).loc[("care_message", "none")]
    assert care["learned"] == care["used"] == 0.5 and care["prior"] == ps.offers["care_message"].acceptance["default"]


def test_acceptance_priors_come_from_offers_yaml_and_match_todays_config():
    ps = load_policy_set(SAMPLE)
    settings = defaults()
    assert set(settings.arbitration.acceptance) == set(ps.offers), "every offer states its prior"
    for offer_id, offer in ps.offers.items():
        assert offer.acceptance == settings.arbitration.acceptance[offer_id], offer_id
    reasons = np.array(["price", "network", "none"], dtype=object)
    ids = np.array(["discount_15"] * 3, dtype=object)
    assert acceptance(ids, reasons, ps, Settings()).tolist() == [0.4, 0.12, 0.12]


# ---------------------------------------------------------------------------------------------
# the guide's worked example
# ---------------------------------------------------------------------------------------------
def test_guide_worked_example_matches_the_sample_set(tmp_path):
    from engine.policy import PolicyEngine

    text = GUIDE.read_text()
    ps = load_policy_set(SAMPLE)
    assert ps.arbitration == "first" and "arbitration: first" in (SAMPLE / "policy.yaml").read_text()
    rec = subscriber_record({"risk_grade": "high", "churn_probability": 0.6, "reason": "price",
                             "value_tier": "medium", "out_of_package_share": 0.2, "tenure_months": 36})
    cands = PolicyEngine(ps).candidates(pd.DataFrame([rec]), DAY)
    assert cands["rule_id"].tolist() == ["price-discount", "price-rightsize", "price-bonus-data",
                                         "intervention-loyalty"]
    settings = defaults()
    p = acceptance(cands["offer_id"].to_numpy(dtype=object), np.array(["price"] * len(cands), dtype=object), ps,
                   settings)
    horizon = settings.arbitration.horizon_months
    net = []
    for (_, c), rate in zip(cands.iterrows(), p, strict=True):
        offer = ps.offers[c["offer_id"]]
        value = 0.6 * rate * offer.value_kept * horizon - offer.cost - settings.channels[c["channel"]].cost
        net.append(round(value, 2))
        row = (f"| {c['rule_id']} ({c['priority']}) | {offer.id} |")
        assert row in text, row
        assert f"= {value:.2f} |" in text, f"{offer.id}: {value:.2f} not in the guide"
    best = cands["rule_id"].tolist()[int(np.argmax(net))]
    assert best == "price-rightsize"
    assert "the subscriber gets **discount_15** from `price-discount`" in text
    assert "the subscriber gets **plan_rightsize** from `price-rightsize`" in text
    # the other mode loads too
    copy = tmp_path / "policies"
    shutil.copytree(SAMPLE, copy, ignore=shutil.ignore_patterns("tests"))
    (copy / "policy.yaml").write_text((copy / "policy.yaml").read_text().replace("arbitration: first",
                                                                                 "arbitration: best_value"))
    assert load_policy_set(copy).arbitration == "best_value"
    # and decide's function sends what the guide says, in both modes
    from engine.decision.whatif import decide_scored

    no_control = Settings(control_group={"share": 0.0})
    frame = pd.DataFrame([rec])
    for folder, offer in ((SAMPLE, "discount_15"), (copy, "plan_rightsize")):
        t = decide_scored(PolicyEngine(load_policy_set(folder)), frame, on=DAY, settings=no_control).table
        assert (t["status"].iloc[0], t["offer_id"].iloc[0]) == ("offer", offer), folder
    # first: the loyalty points (net value below zero) are still a fallback when everything above is blocked
    only_loyalty = frame.assign(opt_out=True, preferred_channel="app")
    t = decide_scored(PolicyEngine(ps), only_loyalty, on=DAY, settings=no_control).table
    assert t["offer_id"].iloc[0] in {"plan_rightsize", "bonus_data", "discount_15", "loyalty_points"}
    assert t["status"].iloc[0] == "offer" and t["channel"].iloc[0] not in {"sms", "outbound_call"}


def test_guide_snippets_load(tmp_path):
    """The YAML examples of the guide (offer, rule, suppression, declared attributes) load."""
    text = GUIDE.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    offers = next(b for b in blocks if b.startswith("offers:"))
    rule = next(b for b in blocks if b.startswith("rules:") and "price-discount" in b)
    suppression = next(b for b in blocks if "winback-long-lapsed-low-value" in b)
    declared = next(b for b in blocks if b.startswith("attributes:"))
    declared_rules = next(b for b in blocks if b.startswith("rules:") and "bill-dispute-hold" in b)
    folder = tmp_path / "g"
    folder.mkdir()
    catalogue = load_policy_set(SAMPLE)
    (folder / "offers.yaml").write_text((SAMPLE / "offers.yaml").read_text())
    (folder / "attributes.yaml").write_text(declared)
    (folder / "rules.yaml").write_text(
        rule + suppression + declared_rules.replace("rules:\n", ""))
    (folder / "example_offer.yaml").write_text(offers.replace("id: discount_15", "id: discount_15_example"))
    ps = load_policy_set(folder)
    assert set(ps.declared) == {"open_complaint", "bill_dispute", "nps", "student_status"}
    assert ps.rule("winback-long-lapsed-low-value").suppresses
    assert ps.rule("price-discount").action.exclude_channels == ("sms",)
    assert ps.rule("complaint-no-sms").action.exclude_channels == ("sms",)
    assert ps.offers["discount_15_example"].acceptance == catalogue.offers["discount_15"].acceptance
    bill = ps.declared["bill_dispute"].source
    assert f"(declared at policies/attributes.yaml:{bill.rsplit(':', 1)[1]})" in text


# ---------------------------------------------------------------------------------------------
# end to end through the engine: needs the decision side (evaluate.py) to know suppressions, exclusions
# and rule dates
# ---------------------------------------------------------------------------------------------
def test_declared_example_cases_pass_through_the_engine():
    from engine.decision.whatif import run_cases
    from engine.policy import PolicyEngine

    ps = load_policy_set(DECLARED)
    results = run_cases(PolicyEngine(ps), load_cases(DECLARED, ps, settings=Settings()), settings=Settings())
    assert len(results) == 5 and [r.name for r in results if not r.passed] == []



def test_guide_care_message_threshold_follows_the_priors():
    """The guide says a care message is worth sending above ~0.17 (SMS) and 0.10 (app): check the arithmetic."""
    ps, s = load_policy_set(SAMPLE), defaults()
    care = ps.offers["care_message"]
    rate = care.acceptance["default"]
    for channel, shown in (("sms", "0.17"), ("app_popup", "0.10")):
        threshold = (care.cost + s.channels[channel].cost) / (rate * care.value_kept * s.arbitration.horizon_months)
        assert f"{threshold:.2f}" == shown
    assert "about 0.17 by SMS or 0.10 in the app" in GUIDE.read_text()


# ---------------------------------------------------------------------------------------------
# one decision path: explain's arbitration step and test cases go through decide's function
# ---------------------------------------------------------------------------------------------
def _declared_table() -> pd.DataFrame:
    ps = load_policy_set(DECLARED)
    given = [
        {"subscriber_id": "A", "bill_dispute": True, "open_complaint": True, "value_tier": "high"},
        {"subscriber_id": "B", "open_complaint": True, "value_tier": "high", "opt_out": True,
         "preferred_channel": "app"},
        {"subscriber_id": "C", "open_complaint": True, "value_tier": "high", "preferred_channel": "sms"},
    ]
    return pd.DataFrame([subscriber_record(g, declared=ps.declared) for g in given])


def test_explain_shows_the_arbitration_step_of_decide():
    from engine.decision.whatif import explain
    from engine.policy import PolicyEngine

    engine = PolicyEngine(load_policy_set(DECLARED))
    frame = _declared_table()
    no_control = Settings(control_group={"share": 0.0})
    rec = frame.iloc[0].to_dict()
    ex = explain(engine, rec, DAY, frame=frame, settings=no_control)
    assert ex.status == "suppressed" and ex.candidates == [] and "bill-dispute-hold" in ex.why
    assert "bill dispute open" in ex.why
    # opted out: the winner's call is blocked, the care message falls back to the app
    ex = explain(engine, frame.iloc[1].to_dict(), DAY, frame=frame, settings=no_control)
    assert ex.status == "offer" and ex.decision["offer_id"] == "care_message"
    first, second = ex.candidates
    assert first["rule_id"] == "complaint-no-sms" and first["channel"] == "outbound_call"
    assert first["outcome"] == "channel blocked (opted out)" and second["outcome"] == "sent"
    assert first["p_prior"] == 0.08 and first["p_learned"] is None  # recovery_call's default prior
    assert first["net_value"] == pytest.approx(first["expected_value"] - first["cost"], abs=0.011)
    assert "complaint-no-sms: channel blocked (opted out)" in ex.why
    by_rule = {v.rule_id: v.status for v in ex.verdicts}
    assert by_rule["everyone-else"] == WINNER
    # arbitration first: the call is sent although its estimated net value is below zero
    ex = explain(engine, frame.iloc[2].to_dict(), DAY, frame=frame, settings=no_control,
                 learned={("recovery_call", "none"): 0.5})
    assert ex.decision["offer_id"] == "recovery_call" and ex.decision["channel"] == "outbound_call"
    assert ex.candidates[0]["p_learned"] == 0.5 and ex.candidates[0]["p_accept"] == 0.5
    assert "highest-priority candidate" in ex.why
    low = explain(engine, frame.iloc[2].to_dict(), DAY, frame=frame, settings=no_control)
    assert low.candidates[0]["net_value"] < 0 and low.status == "offer"
    # the control group: chosen, recorded, not sent
    ex = explain(engine, frame.iloc[2].to_dict(), DAY, frame=frame, settings=Settings(control_group={"share": 0.999}))
    assert ex.status == "control" and "control group" in ex.why


def test_explain_cli_prints_the_arbitration_step(tmp_path):
    from engine.cli.policy import app

    path = tmp_path / "decisions.parquet"
    _declared_table().to_parquet(path)
    res = CliRunner().invoke(app, ["explain", "--input", str(path), "--subscriber", "B", "--policies", str(DECLARED),
                                   "--date", "2026-06-01", "--no-learned"])
    assert res.exit_code == 0, res.output
    assert "Arbitration (first)" in res.output and "channel blocked (opted out)" in res.output
    assert "status:" in res.output


def test_test_cases_expect_what_decide_sends(tmp_path):
    """An opted-out case is not called: the case's expectation is decide's, not the policy's first choice."""
    from engine.decision.whatif import run_cases
    from engine.policy import PolicyEngine

    folder = tmp_path / "p"
    shutil.copytree(DECLARED, folder)
    (folder / "tests" / "cases.yaml").write_text("""\
tests:
  - name: an opted-out complainer who prefers the app gets the care message there
    subscriber: {open_complaint: true, value_tier: high, opt_out: true, preferred_channel: app}
    expect: {offer: care_message, channel: app_popup, matched: [complaint-no-sms, everyone-else]}
  - name: the policy's first choice is not what decide sends
    subscriber: {open_complaint: true, value_tier: high, opt_out: true, preferred_channel: app}
    expect: {offer: recovery_call}
""")
    ps = load_policy_set(folder)
    results = run_cases(PolicyEngine(ps), load_cases(folder, ps, settings=Settings()), settings=Settings())
    assert [r.passed for r in results] == [True, False]
