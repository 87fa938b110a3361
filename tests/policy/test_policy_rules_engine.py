"""Contract tests of engine.policy.rules_engine, the only module that talks to durable-rules (2.0.28,
unmaintained): if an upgrade or a platform changes its behaviour, these fail first."""

from __future__ import annotations

import gc
import math
import random

import numpy as np
import pandas as pd
import pytest

from engine.policy import rules_engine as re_
from engine.policy.conditions import All, AnyOf, Not, Test, evaluate, prepare_column
from engine.policy.rules_engine import DurableRuleset, compile_condition, flag_attributes, to_fact


def _match(conds: dict, records: list[dict]) -> list[set[str]]:
    flags = set().union(*(flag_attributes(c) for c in conds.values()))
    with DurableRuleset({k: compile_condition(c) for k, c in conds.items()}) as rs:
        return rs.match([to_fact(r, flags) for r in records])


def test_an_asserted_fact_fires_every_rule_it_matches():
    conds = {"a": Test("risk_grade", "eq", "high"), "b": Test("tenure_months", "gte", 12),
             "c": AnyOf((Test("reason", "eq", "price"), Test("reason", "eq", "network")))}
    got = _match(conds, [{"risk_grade": "high", "tenure_months": 24, "reason": "price"},
                         {"risk_grade": "low", "tenure_months": 3, "reason": "none"}])
    assert got == [{"a", "b", "c"}, set()]  # the second raised MessageNotHandledException inside: no match


def test_missing_values_make_tests_false_and_not_true():
    conds = {"ne": Test("plan", "ne", "business"), "lt": Test("contract_months_left", "lt", 3),
             "not_gt": Not(Test("contract_months_left", "gt", 6)),
             "missing": Test("contract_months_left", "missing", True),
             "present": Test("contract_months_left", "missing", False),
             "not_in": Test("plan", "not_in", ("business", "family_share"))}
    got = _match(conds, [{"plan": None, "contract_months_left": None},
                         {"plan": "prepaid_basic", "contract_months_left": float("nan")},
                         {"plan": "business", "contract_months_left": 12.0}])
    assert got[0] == {"not_gt", "missing"}
    assert got[1] == {"ne", "not_gt", "missing", "not_in"}
    assert got[2] == {"present"}


def test_numbers_compare_exactly_at_the_threshold():
    t = 0.1 + 0.2  # 0.30000000000000004
    conds = {"gte": Test("churn_probability", "gte", t), "gt": Test("churn_probability", "gt", t),
             "eq_int": Test("tenure_months", "eq", 12)}
    got = _match(conds, [{"churn_probability": t, "tenure_months": 12.0},
                         {"churn_probability": 0.3, "tenure_months": 12.000001},
                         {"churn_probability": 1e-07, "tenure_months": float("inf")}])
    assert got == [{"gte", "eq_int"}, set(), set()]


@pytest.mark.parametrize("t", [1e-07, 1e16, 5e-324, 2.5e-10, 1e-4, 0.0])
def test_numbers_json_cannot_parse_by_default_still_compare_exactly(t):
    # durable-rules' parser rejects "1e-07" (error 204); to_json writes "1.0e-07", read exactly
    below, above = math.nextafter(t, -math.inf), math.nextafter(t, math.inf)
    conds = {"gte": Test("churn_probability", "gte", t), "eq": Test("churn_probability", "eq", t),
             "lt": Test("churn_probability", "lt", t)}
    got = _match(conds, [{"churn_probability": v} for v in (below, t, above)])
    assert got == [{"lt"}, {"gte", "eq"}, {"gte"}]


def test_booleans_and_text_with_special_characters():
    conds = {"prepaid": Test("is_prepaid", "eq", True), "age": Test("age_group", "eq", "65+"),
             "region": Test("region", "in", ("Île-de-France", "north \"east\"", "a|b"))}
    got = _match(conds, [{"is_prepaid": True, "age_group": "65+", "region": "Île-de-France"},
                         {"is_prepaid": False, "age_group": "655", "region": 'north "east"'},
                         {"is_prepaid": np.bool_(True), "age_group": "18-24", "region": "a"}])
    assert got == [{"prepaid", "age", "region"}, {"region"}, {"prepaid"}]


def test_rulesets_get_unique_names_and_are_freed():
    cond = {"x": Test("risk_grade", "eq", "high")}
    a = DurableRuleset({k: compile_condition(c) for k, c in cond.items()})
    b = DurableRuleset({k: compile_condition(c) for k, c in cond.items()})
    assert a.name != b.name
    assert a.match([{"risk_grade": "high"}]) == b.match([{"risk_grade": "high"}]) == [{"x"}]
    name = a.name
    assert name in re_.live_rulesets()
    del a
    gc.collect()
    assert name not in re_.live_rulesets()
    b.close()
    assert b.name not in re_.live_rulesets()
    with pytest.raises(RuntimeError, match="closed"):
        b.match([{}])


def test_reserved_field_names_are_refused():
    with pytest.raises(ValueError, match="reserved"):
        to_fact({"sid": "S1"})
    with pytest.raises(ValueError, match="reserved"):
        re_.facts_from_columns({"id": [1]}, 1)


def test_facts_from_columns_equals_to_fact():
    records = [{"tenure_months": 3.0, "plan": None, "is_prepaid": True}, {"tenure_months": None, "plan": "x",
                                                                          "is_prepaid": False}]
    cols = {k: [r[k] for r in records] for k in records[0]}
    assert re_.facts_from_columns(cols, 2, {"tenure_months"}) == [to_fact(r, {"tenure_months"}) for r in records]


def test_many_distinct_facts_do_not_raise_message_observed():
    # durable-rules reports spurious MessageObservedException with ~100k *live* facts; we retract each one
    n = 30_000
    with DurableRuleset({"big": compile_condition(Test("tenure_months", "gte", 0))}) as rs:
        got = rs.match([{"tenure_months": float(i)} for i in range(n)])
    assert all(g == {"big"} for g in got)


# ---------------------------------------------------------------------------------------------
# Fuzz: the compiled durable-rules expression agrees with the Python condition tree
# ---------------------------------------------------------------------------------------------
NUMERIC = ("tenure_months", "contract_months_left", "churn_probability")
CATEGORICAL = {"risk_grade": ("high", "medium", "low"), "region": ("north", "south", "west")}


def _random_test(rng: random.Random) -> Test:
    kind = rng.random()
    if kind < 0.45:
        attr = rng.choice(NUMERIC)
        op = rng.choice(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "missing"])
        if op == "missing":
            return Test(attr, op, rng.random() < 0.5)
        if op in ("in", "not_in"):
            return Test(attr, op, tuple(sorted({float(rng.randint(0, 4)) for _ in range(2)})))
        return Test(attr, op, float(rng.randint(0, 4)))
    if kind < 0.85:
        attr = rng.choice(list(CATEGORICAL))
        op = rng.choice(["eq", "ne", "in", "not_in", "missing"])
        if op == "missing":
            return Test(attr, op, rng.random() < 0.5)
        if op in ("in", "not_in"):
            return Test(attr, op, tuple(sorted(set(rng.sample(CATEGORICAL[attr], 2)))))
        return Test(attr, op, rng.choice(CATEGORICAL[attr]))
    return Test("is_prepaid", rng.choice(["eq", "ne"]), rng.random() < 0.5)


def _random_condition(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth >= 3 or r < 0.4:
        return _random_test(rng)
    items = tuple(_random_condition(rng, depth + 1) for _ in range(rng.randint(1, 3)))
    if r < 0.65:
        return All(items)
    if r < 0.85:
        return AnyOf(items)
    return Not(items[0])


def _random_records(rng: random.Random, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        rec = {a: (None if rng.random() < 0.15 else float(rng.randint(0, 4))) for a in NUMERIC}
        rec.update({a: (None if rng.random() < 0.15 else rng.choice(v + ("east",))) for a, v in CATEGORICAL.items()})
        rec["is_prepaid"] = rng.random() < 0.5
        out.append(rec)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_compiled_conditions_agree_with_the_condition_tree(seed):
    rng = random.Random(seed)
    conds = {f"r{i}": _random_condition(rng) for i in range(25)}
    records = _random_records(rng, 300)
    got = _match(conds, records)
    frame = pd.DataFrame(records)
    cols = {a: prepare_column(a, frame[a]) for a in frame.columns}
    for key, cond in conds.items():
        want = evaluate(cond, cols, len(frame))
        have = np.array([key in g for g in got])
        bad = np.flatnonzero(want != have)
        assert not len(bad), (cond, records[bad[0]], bool(want[bad[0]]))
    assert not math.isnan(0.0)


@pytest.mark.slow
def test_150k_distinct_facts():
    with DurableRuleset({"big": compile_condition(Test("tenure_months", "gte", 0))}) as rs:
        got = rs.match([{"tenure_months": float(i), "region": f"r{i}"} for i in range(150_000)])
    assert len(got) == 150_000 and all(g == {"big"} for g in got)


def test_no_other_module_imports_durable_rules():
    import re
    from pathlib import Path

    importing = re.compile(r"^\s*(import durable|from durable(_rules_engine)?(\.| import))", re.MULTILINE)
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*root.glob("engine/**/*.py"), *root.glob("training/**/*.py"), *root.glob("benchmarks/*.py")]:
        if path.name == "rules_engine.py":
            continue
        if importing.search(path.read_text()):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
