"""PolicyEngine semantics: priority, ties, stop, eligibility, validity dates, channels, messages, missing
values, and that the class-based batch path agrees with the per-subscriber path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import DataError
from engine.policy import OUTPUT_COLUMNS, PolicyEngine, load_policy_set
from engine.policy.conditions import evaluate, prepare_column
from engine.policy.synthetic import synthetic_frame
from engine.policy.testing import DEFAULT_SUBSCRIBER

ROOT = Path(__file__).resolve().parents[2]
SEMANTICS = ROOT / "tests" / "fixtures" / "policies_semantics"
TODAY = dt.date(2026, 6, 1)


@pytest.fixture(scope="module")
def semantics() -> PolicyEngine:
    return PolicyEngine(load_policy_set(SEMANTICS), decision_date=TODAY)


@pytest.fixture(scope="module")
def sample() -> PolicyEngine:
    return PolicyEngine(load_policy_set(ROOT / "policies"), decision_date=TODAY)


def subscriber(**given) -> dict:
    rec = dict(DEFAULT_SUBSCRIBER)
    rec.update(given)
    return rec


def test_highest_priority_wins_and_every_match_is_recorded(semantics):
    out = semantics.decide_one(subscriber(risk_grade="high", tenure_months=24, contract_months_left=12.0))
    assert out["rule_id"] == "mid" and out["offer_id"] == "b" and out["channel"] == "outbound_call"
    assert out["priority"] == 50 and out["stage"] == "intervention"
    # 'future' (priority 60) does not match before its offer is valid
    assert out["matched_rules"] == "mid,tie-first,tie-second,low"


def test_ineligible_offer_means_the_rule_does_not_match(semantics):
    out = semantics.decide_one(subscriber(risk_grade="high", tenure_months=6, contract_months_left=12.0))
    assert out["rule_id"] == "tie-first", "mid's offer needs tenure >= 12"
    assert out["matched_rules"].split(",")[0] == "tie-first"
    assert "mid" not in out["matched_rules"].split(",")


def test_ties_go_to_file_order(semantics):
    out = semantics.decide_one(subscriber(risk_grade="high", tenure_months=6))
    assert out["matched_rules"].startswith("tie-first,tie-second")


def test_stop_ends_the_candidate_list(semantics):
    rec = subscriber(risk_grade="high", tenure_months=24, reason="competitor", value_tier="high")
    out = semantics.decide_one(rec)
    assert out["rule_id"] == "top" and out["matched_rules"] == "top"
    # without the stop rule's conditions, the lower rules are candidates again
    out = semantics.decide_one({**rec, "value_tier": "medium"})
    assert out["rule_id"] == "mid" and "top" not in out["matched_rules"]
    # candidates() follows the same list
    cands = semantics.candidates(pd.DataFrame([rec, {**rec, "value_tier": "medium"}]))
    assert cands[cands["row"] == 0]["rule_id"].tolist() == ["top"]
    assert cands[cands["row"] == 1]["rule_id"].tolist()[:2] == ["mid", "tie-first"]
    assert cands[cands["row"] == 1]["rank"].tolist() == list(range((cands["row"] == 1).sum()))
    assert {"subscriber_id", "offer_cost", "value_kept", "churn_probability", "reason", "priority"} <= set(cands)
    assert (cands.loc[cands["rule_id"] == "mid", "offer_cost"] == 5).all()


def test_validity_dates_follow_the_decision_date(semantics):
    rec = subscriber(risk_grade="high", tenure_months=24)
    assert semantics.decide_one(rec)["rule_id"] == "mid"
    assert semantics.decide_one(rec, dt.date(2030, 1, 1))["rule_id"] == "future"
    assert semantics.decide_one(rec, dt.date(2029, 12, 31))["rule_id"] == "mid"


def test_preferred_channel_resolution(semantics):
    base = subscriber(risk_grade="high", tenure_months=6)
    assert semantics.decide_one({**base, "preferred_channel": "app"})["channel"] == "app_popup"
    assert semantics.decide_one({**base, "preferred_channel": "sms"})["channel"] == "sms"
    # offer a allows sms and app_popup: a preference for calls falls back to the offer's first channel
    assert semantics.decide_one({**base, "preferred_channel": "call"})["channel"] == "sms"
    assert semantics.decide_one({**base, "preferred_channel": None})["channel"] == "sms"


def test_messages_render_subscriber_fields(semantics):
    rec = subscriber(subscriber_id="S42", risk_grade="low", tenure_months=7, churn_probability=0.125,
                     is_prepaid=True, contract_months_left=None, arpu_m0=12.5)
    out = semantics.decide_one(rec)
    assert out["rule_id"] == "low"
    assert out["message"] == "Hi S42: 7 months, 12%, prepaid yes, contract , arpu 12.50"
    # without a template the message is the offer's description
    out = semantics.decide_one(subscriber(risk_grade="high", tenure_months=24))
    assert out["message"] == "Offer B for tenure 12+"


def test_missing_values_and_not(semantics):
    # not (contract_months_left > 6): holds for a missing value, for 3, not for 12
    def no_long(contract):
        out = semantics.decide_one(subscriber(risk_grade="low", contract_months_left=contract))
        return "no-long-contract" in out["matched_rules"].split(",")

    assert no_long(None) and no_long(float("nan")) and no_long(3.0)
    assert not no_long(12.0)


def test_no_matching_rule_gives_empty_decision(sample):
    frame = pd.DataFrame([subscriber(risk_grade="low")])
    out = sample.decide(frame.assign(risk_grade="nonsense"))
    assert out["offer_id"].iloc[0] is None and out["rule_id"].iloc[0] is None
    assert out["matched_rules"].iloc[0] == "" and pd.isna(out["priority"].iloc[0])


def test_output_contract(sample):
    frame = synthetic_frame(500, seed=3)
    frame.index = pd.RangeIndex(1000, 1500)
    out = sample.decide(frame)
    assert list(out.columns) == OUTPUT_COLUMNS
    assert out.index.equals(frame.index)
    assert out["offer_id"].notna().all(), "the sample set covers every subscriber"
    offers = sample.policy_set.offers
    for offer, channel in zip(out["offer_id"], out["channel"], strict=True):
        assert channel in offers[offer].channels
    assert set(out["stage"]) <= {"preventive", "intervention", "win-back"}
    assert (out["rule_id"] == out["matched_rules"].str.split(",").str[0]).all()
    empty = sample.decide(frame.iloc[:0])
    assert list(empty.columns) == OUTPUT_COLUMNS and len(empty) == 0


def test_missing_columns_and_wrong_types_are_data_errors(sample):
    frame = synthetic_frame(20, seed=1)
    with pytest.raises(DataError, match="risk_grade"):
        sample.decide(frame.drop(columns=["risk_grade"]))
    bad = frame.astype({"tenure_months": object})
    bad.loc[3, "tenure_months"] = "many"
    with pytest.raises(DataError, match="tenure_months.*expected numbers"):
        sample.decide(bad)


def test_engines_are_independent(sample):
    a = PolicyEngine(load_policy_set(ROOT / "policies"))
    b = PolicyEngine(load_policy_set(ROOT / "policies"))
    assert len({a.ruleset_name, b.ruleset_name, sample.ruleset_name}) == 3  # pairwise distinct
    frame = synthetic_frame(200, seed=9)
    pd.testing.assert_frame_equal(a.decide(frame, TODAY), b.decide(frame, TODAY))
    a.close()
    pd.testing.assert_frame_equal(b.decide(frame, TODAY), sample.decide(frame))


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_agrees_with_per_subscriber_path(sample, seed):
    frame = synthetic_frame(4000, seed=seed)
    # a few awkward values: missing, infinite, tiny, strings in a numeric column stored as object
    frame.loc[0:50, "churn_probability"] = np.nan
    frame.loc[51:60, "satisfaction_score"] = np.inf
    frame.loc[61:70, "out_of_package_share"] = 1e-07
    frame.loc[71:80, "need_group"] = None
    batch = sample.decide(frame)
    each = sample.decide(frame, per_row=True)
    pd.testing.assert_frame_equal(batch, each)
    ev = sample.evaluate(frame)
    assert ev.n_classes < len(frame) / 4, "classes of identical rule inputs keep durable-rules calls few"
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(frame), 25, replace=False):
        one = sample.decide_one(frame.iloc[i].to_dict())
        row = {k: (None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v)
               for k, v in batch.iloc[i].to_dict().items()}
        assert one == row


def test_durable_rules_agrees_with_the_condition_tree(sample):
    frame = synthetic_frame(3000, seed=5)
    ev = sample.evaluate(frame, per_row=True)
    cols = {a: prepare_column(a, frame[a]) for a in sample.policy_set.attributes}
    for p, rule in enumerate(sample.rules):
        want = evaluate(sample.policy_set.matching_condition(rule), cols, len(frame))
        have = np.array([p in m for m in ev.matched])
        assert (want == have).all(), rule.id


def test_dont_care_merging_is_exact_on_edge_values(sample):
    # values exactly at every threshold the sample set uses, in every combination the guards allow
    from engine.policy.validate import Domain

    domain = Domain(sample.policy_set)
    rng = np.random.default_rng(0)
    n = 5000
    frame = synthetic_frame(n, seed=11)
    for name, reps in domain.values.items():
        if name in frame.columns:
            frame[name] = [reps[i] for i in rng.integers(0, len(reps), n)]
    frame["is_prepaid"] = frame["is_prepaid"].astype(bool)
    pd.testing.assert_frame_equal(sample.decide(frame), sample.decide(frame, per_row=True))


def test_matches_offer_sees_every_matching_rule(semantics):
    rec = subscriber(risk_grade="high", tenure_months=24, reason="competitor", value_tier="high")
    frame = pd.DataFrame([rec, {**rec, "tenure_months": 3}])
    got = semantics.matches_offer(frame, "b")["offer_rules"].tolist()
    assert got == ["mid", ""], "forward matching ignores winners and stop; eligibility still applies"


@pytest.mark.slow
def test_one_million_subscribers_within_ten_seconds(sample):
    import time

    frame = synthetic_frame(1_000_000, seed=2)
    start = time.perf_counter()
    out = sample.decide(frame)
    elapsed = time.perf_counter() - start
    assert len(out) == 1_000_000 and out["offer_id"].notna().all()
    assert elapsed <= 10, f"{elapsed:.1f} s"


SUPPRESSION_SET = """\
offers:
  - {id: a, description: A, cost: 1, value_kept: 10, channels: [sms, app_popup, outbound_call]}
  - {id: b, description: B, cost: 2, value_kept: 20, channels: [outbound_call, sms]}
rules:
  - {id: top, description: T, priority: 90, stage: intervention, when: {risk_grade: high},
     then: {offer: b, channel: preferred, exclude_channels: [sms]}}
  - {id: hush, description: H, priority: 80, stage: intervention, when: {reason: price},
     then: {no_offer: true, note: price hold}}
  - {id: dated-hush, description: D, priority: 85, stage: intervention, when: {reason: network},
     valid_from: 2027-01-01, then: {no_offer: true}}
  - {id: rest, description: R, priority: 10, stage: preventive, then: {offer: a, channel: preferred}}
"""


def test_suppressions_exclusions_and_rule_dates_in_the_engine(tmp_path):
    (tmp_path / "p.yaml").write_text(SUPPRESSION_SET)
    engine = PolicyEngine(load_policy_set(tmp_path))
    frame = pd.DataFrame([subscriber(risk_grade="low", reason="price"),            # suppressed
                          subscriber(risk_grade="high", reason="price"),           # top, then cut by hush
                          subscriber(risk_grade="low", reason="network"),          # dated hush not yet valid
                          subscriber(risk_grade="high", reason="none", preferred_channel="sms")])
    for per_row in (False, True):
        out = engine.decide(frame, TODAY, per_row=per_row)
        assert out["rule_id"].tolist() == ["hush", "top", "rest", "top"]
        assert out["offer_id"].tolist() == [None, "b", "a", "b"]
        assert out["note"].tolist() == ["price hold", None, None, None]
        assert out["matched_rules"].tolist() == ["hush", "top,hush", "rest", "top,rest"]
        assert out["channel"].tolist()[3] == "outbound_call"  # prefers sms, the rule excludes it
    fc = engine.flat_candidates(frame, TODAY)
    assert fc.suppressed_by.tolist() == [2, -1, -1, -1]  # hush is third in evaluation order; row 0 only
    assert [engine.rules[p].id for p in fc.positions] == ["top", "rest", "top", "rest"]
    later = engine.decide(frame, dt.date(2027, 1, 2))
    assert later["rule_id"].tolist()[2] == "dated-hush" and later["offer_id"].tolist()[2] is None
    # reachable: a suppressed row has no candidate under any reason it could have
    reach = engine.reachable(frame.drop(columns=["reason"]), "reason", ["price"], TODAY)
    assert reach.tolist() == [False, True, False, True]
    # for some rows only: the answers of those rows' frame
    some = np.array([3, 0, 1])
    assert engine.reachable(frame, "reason", ["price"], TODAY, rows=some).tolist() == \
        engine.reachable(frame.iloc[some].reset_index(drop=True), "reason", ["price"], TODAY).tolist() == \
        [True, False, True]


def test_remembered_classes_give_what_durable_rules_gives():
    """A real-time caller evaluates a few rows at a time: each class's matches are remembered per policy engine
    and day, so durable-rules is asked once per class. The answers stay those of evaluating every row."""
    engine = PolicyEngine(load_policy_set(ROOT / "policies"), decision_date=TODAY)
    reference = PolicyEngine(load_policy_set(ROOT / "policies"), decision_date=TODAY)
    frame = synthetic_frame(600, seed=4)
    asked = []
    match = engine._ruleset.match
    engine._ruleset.match = lambda facts: asked.append(len(facts)) or match(facts)
    passes = []
    for _ in range(2):
        asked.clear()
        for size in (1, 8, 40):  # small frames, as the HTTP service decides them
            for start in range(0, len(frame), size * 7):
                part = frame.iloc[start:start + size].reset_index(drop=True)
                pd.testing.assert_frame_equal(engine.decide(part), reference.decide(part, per_row=True))
        passes.append(sum(asked))
    assert passes[0] > 0 and passes[1] == 0, "classes seen before are not asked again"
    # the day is part of what is remembered: validity dates still follow the decision date
    rec = subscriber(risk_grade="high", tenure_months=24)
    semantics = PolicyEngine(load_policy_set(SEMANTICS), decision_date=TODAY)
    for _ in range(2):
        assert semantics.decide_one(rec)["rule_id"] == "mid"
        assert semantics.decide_one(rec, dt.date(2030, 1, 1))["rule_id"] == "future"


def test_new_combinations_are_answered_from_each_rules_own_classes():
    """A combination of classes not seen before is answered without durable-rules once every rule has met the
    classes of its own inputs, and the answers are still durable-rules' own, on every decision date."""
    engine = PolicyEngine(load_policy_set(ROOT / "policies"), decision_date=TODAY)
    asked = []
    match = engine._ruleset.match
    engine._ruleset.match = lambda facts: asked.append(len(facts)) or match(facts)
    warm = synthetic_frame(3000, seed=21)
    for start in range(0, len(warm), 8):
        engine.evaluate(warm.iloc[start:start + 8].reset_index(drop=True))
    known = set(engine._matched_memo)
    later = synthetic_frame(800, seed=22)
    asked.clear()
    new_classes = 0
    for start in range(0, len(later), 8):
        part = later.iloc[start:start + 8].reset_index(drop=True)
        cols = engine._columns(part)
        new_classes += len(set(engine._class_keys(cols, np.arange(len(part)), TODAY)) - known)
        known |= set(engine._class_keys(cols, np.arange(len(part)), TODAY))
        reference = PolicyEngine(load_policy_set(ROOT / "policies"), decision_date=TODAY)
        pd.testing.assert_frame_equal(engine.decide(part), reference.decide(part, per_row=True))
    assert new_classes > 50, "the later subscribers bring combinations of classes not seen before"
    assert sum(asked) < new_classes / 5, (sum(asked), new_classes)
    # remembered per day: on another date (a rule's validity window) the same rows get that date's answers
    dated = PolicyEngine(load_policy_set(SEMANTICS), decision_date=TODAY)
    rows = pd.DataFrame([subscriber(risk_grade="high", tenure_months=24), subscriber(risk_grade="low")])
    for on in (TODAY, dt.date(2030, 1, 1), TODAY):
        fresh = PolicyEngine(load_policy_set(SEMANTICS), decision_date=TODAY)
        pd.testing.assert_frame_equal(dated.decide(rows, on), fresh.decide(rows, on, per_row=True))


def test_remembered_reachability_gives_what_a_fresh_engine_gives():
    """`reachable` remembers each group's answer per day: small frames asked again and again (the HTTP
    service's) get the answers a fresh engine works out, and a group seen before is not evaluated again."""
    engine = PolicyEngine(load_policy_set(ROOT / "policies"), decision_date=TODAY)
    values = ["price", "network", "none"]
    frame = synthetic_frame(400, seed=5).drop(columns=["reason"])
    for size in (1, 8, 40):
        for start in range(0, len(frame), size * 5):
            part = frame.iloc[start:start + size].reset_index(drop=True)
            fresh = PolicyEngine(load_policy_set(ROOT / "policies"), decision_date=TODAY)
            assert engine.reachable(part, "reason", values).tolist() == fresh.reachable(part, "reason", values).tolist()
    evaluated = []
    inner = engine._evaluate_columns
    engine._evaluate_columns = lambda *a, **k: evaluated.append(1) or inner(*a, **k)
    engine.reachable(frame.iloc[:40].reset_index(drop=True), "reason", values)
    assert not evaluated, "groups seen before are not evaluated again"
    answers = engine.reachable(frame.iloc[:40].reset_index(drop=True), "reason", values, dt.date(2031, 1, 1))
    assert evaluated and len(answers) == 40  # another day: worked out again
