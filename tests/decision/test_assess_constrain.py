"""One decide function for one subscriber or many: per-row work is pure, run-level work takes explicit state."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from engine.data.schema import validate_subscribers
from engine.decision.validate import validate_rows
from engine.errors import DataError

DAY = dt.date(2026, 11, 23)


@pytest.fixture(scope="module")
def parts(trained):
    from engine.decision.run import load_policy_engine
    from engine.model.registry import load_model

    settings = trained.settings()
    return settings, load_model(settings, "champion"), load_policy_engine("policies")


@pytest.fixture(scope="module")
def batch_20k():
    from engine.data.simulator import generate

    return generate(20_000, seed=7)


def _per_row(a, row: int) -> dict:
    """What must not depend on the batch: score, grade, reason, candidates and the winner before constraints."""
    s = a.scored.iloc[row]
    cands = a.candidates[a.candidates["row"] == row]
    best = a.best()[row]
    winner = None if best < 0 else (str(a.candidates["rule_id"].iloc[best]), str(a.candidates["offer_id"].iloc[best]),
                                    str(a.candidates["channel"].iloc[best]))
    return {"churn_probability": float(s["churn_probability"]), "risk_grade": s["risk_grade"], "reason": s["reason"],
            "reason_signal": s["reason_signal"], "matched_rules": a.matched_rules[row],
            "candidates": [(str(r), str(c), round(float(v), 9)) for r, c, v in
                           zip(cands["rule_id"], cands["channel"], cands["net_value"], strict=True)],
            "winner": winner}


def test_each_subscriber_alone_is_assessed_as_in_the_batch(parts, batch_20k):
    """Issue target: 500 random subscribers of a 20 k batch, each decided alone, get the same score, threshold
    grade, reason, candidates and winner as inside the batch."""
    from engine.decision.assess import assess

    settings, loaded, engine = parts
    batch = assess(batch_20k, loaded=loaded, policy_engine=engine, settings=settings, run_date=DAY)
    assert len(batch) == 20_000
    picked = np.random.default_rng(3).choice(20_000, 500, replace=False)
    explained = offers = 0
    for i in picked:
        alone = assess(batch_20k.iloc[[i]], loaded=loaded, policy_engine=engine, settings=settings, run_date=DAY)
        expected = _per_row(batch, int(i))
        got = _per_row(alone, 0)
        assert got["churn_probability"] == pytest.approx(expected["churn_probability"], abs=1e-12), i
        assert {k: v for k, v in got.items() if k != "churn_probability"} == \
               {k: v for k, v in expected.items() if k != "churn_probability"}, i
        explained += expected["reason"] != "none"
        offers += expected["winner"] is not None
    assert explained > 50 and offers > 50, "the sample covers explained subscribers and subscribers with offers"


def test_capacity_grades_are_cutoffs_a_single_subscriber_can_reuse(parts, batch_20k):
    from engine.decision.assess import assess
    from engine.decision.constrain import RunState

    settings, loaded, engine = parts
    grades = settings.risk_grades.model_copy(update={"capacity_high": 2000, "capacity_medium": 3000})
    capped = settings.model_copy(update={"risk_grades": grades})
    state = RunState.from_settings(capped)
    batch = assess(batch_20k.head(8000), loaded=loaded, policy_engine=engine, settings=capped, run_date=DAY,
                   state=state)
    counts = batch.scored["risk_grade"].value_counts()
    assert counts["high"] == 2000 and counts["medium"] == 3000
    assert state.risk_cutoffs is not None
    # alone, with the batch's cut-offs, a subscriber keeps its batch grade (no longer 'high' by being alone)
    low = int(np.flatnonzero(batch.scored["risk_grade"].to_numpy() == "low")[0])
    alone = assess(batch_20k.iloc[[low]], loaded=loaded, policy_engine=engine, settings=capped, run_date=DAY,
                   state=state)
    assert alone.scored["risk_grade"].iloc[0] == "low"


def test_one_state_across_calls_never_exceeds_the_allowance(parts, batch_20k):
    """The service decides in many calls against one daily allowance: the state carries what is left."""
    from engine.decision.constrain import RunState
    from engine.decision.decide import decide_frame

    settings, loaded, engine = parts
    state = RunState(run_id="day", budget_left=3000.0, capacity_left={"outbound_call": 40, "vip_manager": 5},
                     control=settings.control_group)
    tables = [decide_frame(batch_20k.iloc[i:i + 2000], loaded=loaded, policy_engine=engine, settings=settings,
                           run_date=DAY, state=state).table for i in range(0, 8000, 2000)]
    offered = pd.concat(tables)
    offered = offered[offered["status"] == "offer"]
    spent = float((offered["offer_cost"] + offered["channel_cost"]).sum())
    assert spent <= 3000.0 + 1e-6 and state.spent == pytest.approx(spent)
    assert state.budget_left == pytest.approx(3000.0 - spent)
    assert (offered["channel"] == "outbound_call").sum() <= 40
    assert (offered["channel"] == "vip_manager").sum() <= 5
    assert state.capacity_left["outbound_call"] == 40 - (offered["channel"] == "outbound_call").sum()
    assert (pd.concat(tables)["status"] == "over_budget").any(), "the allowance binds"
    assert all(t["decision_run"].eq("day").all() for t in tables)


def test_fast_validation_returns_what_the_schema_returns(batch_20k):
    pd.testing.assert_frame_equal(validate_rows(batch_20k), validate_subscribers(batch_20k))
    as_object = batch_20k.astype({"subscriber_id": object, "plan": "category"})
    pd.testing.assert_frame_equal(validate_rows(as_object), validate_subscribers(as_object))
    # one row as the HTTP service builds it: an empty nullable number is None in an object column
    one = pd.DataFrame([{**batch_20k.iloc[0].to_dict(), "contract_months_left": None}])
    assert one["contract_months_left"].dtype == object
    pd.testing.assert_frame_equal(validate_rows(one), validate_subscribers(one))
    mixed = pd.DataFrame(batch_20k.head(3).to_dict("records")).astype({"contract_months_left": object})
    mixed.loc[1, "contract_months_left"] = None
    pd.testing.assert_frame_equal(validate_rows(mixed), validate_subscribers(mixed))
    # anything not plainly right goes to the schema, so errors read exactly as before
    bad = batch_20k.head(50).copy()
    bad.loc[3, "arpu_m0"] = -5.0
    bad.loc[4, "region"] = None
    with pytest.raises(DataError) as fast:
        validate_rows(bad, source="x.csv")
    with pytest.raises(DataError) as slow:
        validate_subscribers(bad, source="x.csv")
    assert str(fast.value) == str(slow.value) and "arpu_m0" in str(fast.value) and "region" in str(fast.value)
    dup = pd.concat([batch_20k.head(3), batch_20k.head(1)], ignore_index=True)
    with pytest.raises(DataError, match="duplicate ids"):
        validate_rows(dup)


@pytest.mark.parametrize(("high", "medium"), [(100, 200), (100, None), (900, 300), (2000, 5)])
def test_capacity_cutoffs_grade_a_batch_as_ranking_does(high, medium):
    from engine.config import RiskGrades, Settings
    from engine.decision.assess import grade
    from engine.decision.constrain import RunState
    from engine.model.segments import risk_grade

    p = np.random.default_rng(1).uniform(size=1000)
    grades = RiskGrades(capacity_high=high, capacity_medium=medium)
    state = RunState()
    assert (grade(p, Settings(risk_grades=grades), state) == risk_grade(p, grades)).all()
    assert (grade(p[:7], Settings(risk_grades=grades), state) == grade(p, Settings(risk_grades=grades))[:7]).all()
