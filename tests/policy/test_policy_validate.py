"""Warnings of `retain policy validate` and the YAML test-case runner of `retain policy test`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from engine.decision.whatif import run_cases
from engine.errors import PolicyError
from engine.policy import PolicyEngine, load_policy_set
from engine.policy.testing import DEFAULT_SUBSCRIBER, load_cases, subscriber_record
from engine.policy.validate import check_policy_set

ROOT = Path(__file__).resolve().parents[2]
WARNINGS = ROOT / "tests" / "fixtures" / "policies_warnings"


def test_sample_policy_set_has_no_warnings():
    assert check_policy_set(load_policy_set(ROOT / "policies"), today=dt.date(2026, 6, 1)) == []


def test_every_kind_of_warning():
    findings = check_policy_set(load_policy_set(WARNINGS), today=dt.date(2026, 6, 1))
    by_check = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
    text = "\n".join(str(f) for f in findings)
    assert "offer 'unused' is not used by any rule" in text
    assert ("rule 'narrow' never wins: every subscriber it matches is also matched by higher-priority rule "
            "'broad'") in text
    assert "rule 'contra' can never fire: its conditions contradict each other" in text
    assert "rule 'inelig' can never fire: offer 'b' is never eligible" in text
    assert "rule 'same1' overlaps rule 'broad' at the same priority 50" in text
    assert "rule 'expired': cannot fire on 2026-06-01: offer 'old' expired on 2020-01-01" in text
    assert all(str(f).split(": warning: ")[0].rsplit(":", 1)[1].isdigit() for f in findings), "file:line"
    assert set(by_check) == {"unused-offer", "shadowed", "never-fires", "overlap"}


def test_never_wins_because_of_several_rules_together(tmp_path):
    (tmp_path / "p.yaml").write_text("""\
offers:
  - {id: a, description: A, cost: 1, value_kept: 1, channels: [sms]}
rules:
  - {id: young, description: d, priority: 3, stage: preventive, when: {tenure_months: {lt: 12}}, then: {offer: a}}
  - {id: old, description: d, priority: 2, stage: preventive, when: {tenure_months: {gte: 12}}, then: {offer: a}}
  - {id: anyone, description: d, priority: 1, stage: preventive, then: {offer: a}}
""")
    text = "\n".join(str(f) for f in check_policy_set(load_policy_set(tmp_path)))
    assert "rule 'anyone' never wins: every subscriber it matches is matched first by one of the higher-priority " \
           "rules 'young', 'old'" in text


def test_uncovered_segments(tmp_path):
    (tmp_path / "p.yaml").write_text("""\
offers:
  - {id: a, description: A, cost: 1, value_kept: 1, channels: [sms]}
rules:
  - id: at-risk-price
    description: d
    priority: 3
    stage: intervention
    when: {risk_grade: [high, medium], reason: price}
    then: {offer: a}
  - {id: low, description: d, priority: 1, stage: preventive, when: {risk_grade: low}, then: {offer: a}}
""")
    findings = [f for f in check_policy_set(load_policy_set(tmp_path)) if f.check == "uncovered-segment"]
    text = "\n".join(str(f) for f in findings)
    assert len(findings) == 6  # high and medium risk x 3 value tiers
    assert "segment risk_grade=high, value_tier=high: no rule covers reason network, usage_decline, competitor, " \
           "balance, contract_end, none" in text
    assert "risk_grade=low" not in text


def test_test_case_defaults_and_derived_values():
    rec = subscriber_record({"risk_grade": "high", "value_tier": "low", "plan": "prepaid_basic", "age_group": "65+"})
    assert rec["churn_probability"] == 0.7 and rec["arpu_mean_3m"] == 25.0
    assert rec["is_prepaid"] is True and rec["contract_months_left"] is None and rec["need_group"] == "elderly"
    assert subscriber_record({"churn_probability": 0.3})["risk_grade"] == "medium"
    assert subscriber_record({"reason": "price"})["reason_share"] == 0.6
    assert subscriber_record({})["tenure_months"] == DEFAULT_SUBSCRIBER["tenure_months"]
    explicit = subscriber_record({"plan": "prepaid_basic", "is_prepaid": False})
    assert explicit["is_prepaid"] is False, "what the test gives always wins"


def test_sample_test_cases_pass():
    cases = load_cases(ROOT / "policies")
    results = run_cases(PolicyEngine(load_policy_set(ROOT / "policies")), cases)
    assert len(results) >= 20
    assert [r.name for r in results if not r.passed] == []
    covered = {c.case.expect.rule for c in cases} | {r.actual.split("(rule ")[1].rstrip(")") for r in results}
    assert {r.id for r in load_policy_set(ROOT / "policies").rules} <= covered, "every rule has a test case"


def test_failing_and_bad_test_cases(tmp_path):
    folder = tmp_path / "p"
    (folder / "tests").mkdir(parents=True)
    (folder / "p.yaml").write_text("""\
offers:
  - {id: a, description: A, cost: 1, value_kept: 1, channels: [sms, app_popup]}
rules:
  - {id: r, description: d, priority: 1, stage: preventive, when: {risk_grade: low}, then: {offer: a}}
""")
    (folder / "tests" / "cases.yaml").write_text("""\
tests:
  - name: passes
    subscriber: {risk_grade: low}
    expect: {offer: a, channel: sms, matched: [r]}
  - name: fails
    subscriber: {risk_grade: high}
    expect: {offer: a}
  - name: no offer passes
    subscriber: {risk_grade: high}
    expect: {offer: null}
""")
    engine = PolicyEngine(load_policy_set(folder))
    results = run_cases(engine, load_cases(folder))
    assert [r.passed for r in results] == [True, False, True]
    assert results[1].failures == ["offer: expected a, got (none)"]
    assert results[1].where.endswith("cases.yaml:5")
    (folder / "tests" / "cases.yaml").write_text("""\
tests:
  - name: typo
    subscriber: {risk_grad: low, tenure_months: ten}
    expect: {offer: a}
  - name: checks nothing
    subscriber: {}
    expect: {}
  - name: unknown key
    subscriber: {}
    expect: {ofer: a}
""")
    with pytest.raises(PolicyError) as info:
        load_cases(folder)
    problems = info.value.problems
    assert any("cases.yaml:3: test 'typo': unknown attribute 'risk_grad'" in p for p in problems)
    assert any("cases.yaml:3: test 'typo': tenure_months is numeric" in p for p in problems)
    assert any("cases.yaml:5: test 'checks nothing': expect checks nothing" in p for p in problems)
    assert any("cases.yaml:10: test 'unknown key': unknown field 'expect.ofer'" in p for p in problems)
