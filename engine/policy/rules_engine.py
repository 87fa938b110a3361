"""The one module that talks to durable-rules (pinned 2.0.28, unmaintained): a small interface of ours.

Interface:
- `compile_condition(cond)` turns a condition tree into a durable-rules expression, and
  `flag_attributes(cond)` names the attributes whose facts need a missing-value flag;
- `date_window(valid_from, valid_to)` adds an offer's validity as tests on the fact's decision day,
  `conjunction(exprs)` joins expressions;
- `to_fact(record, flags, day)` / `facts_from_columns(columns, n, flags, day)` build facts;
- `DurableRuleset({key: expression})` compiles one ruleset with a process-unique name;
  `.match(facts)` returns, for each fact, the set of keys whose expression it satisfies; `.close()`
  (or garbage collection) frees it.

How matching works: each fact is *asserted* (an asserted fact fires every rule it matches, whereas a
posted event is consumed by the first), the fired rule keys are collected, and the fact is retracted,
so the working memory never holds more than one fact (durable-rules reports spurious
`MessageObservedException`s with ~100 k live facts). A fact matching no rule raises
`MessageNotHandledException`, which here means "no rule matched".

Why no host: `durable.lang`'s global host runs background threads that dispatch pending actions on
their own schedule and keeps every ruleset in a process-wide directory. A bare ruleset runs every
action synchronously inside `do_actions`, so the collected hits are complete when the call returns,
and its native memory is freed when its `DurableRuleset` is closed or garbage-collected.

Numbers: durable-rules' JSON parser rejects "1e-07" (error 204) but reads "1.0e-07" exactly, so
definitions and facts are serialised by `to_json`, never by `json.dumps` alone.

Semantics kept identical to `engine.policy.conditions.evaluate` (the contract tests check both):
- a test on a missing value is false. Missing values are left out of the fact, and durable-rules
  treats a test on an absent field as false, including `$neq`;
- `not` is pushed down to the tests (De Morgan), where `not (x > 5)` becomes `x <= 5 or x missing`.
  "x missing" is a positive test on a flag field `x__missing` that facts carry for those attributes,
  because durable-rules 2.0.28 hangs on rules made only of `$nex` (measured here);
- membership `in` is an `$or` of equalities (durable's `$mt` regex does not match values like '65+').
Reserved names: a fact never has a field named `sid` (it selects a rules *session*; one per
subscriber exhausts memory) nor `id`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import durable_rules_engine as _native
from durable import engine as _durable
from pandas import NA as _NA

from engine.policy.conditions import All, AnyOf, Condition, Not, Test

MISSING_SUFFIX = "__missing"
ROW_FIELD = "fact_row"
DAY_FIELD = "decision_day"
RESERVED_FIELDS = frozenset({"sid", "id", ROW_FIELD, DAY_FIELD})
_TRUE_EXPR = {"$gte": {ROW_FIELD: 0}}
_FALSE_EXPR = {"$lt": {ROW_FIELD: 0}}
_MAX_FLOAT = 1.7976931348623157e308
_OPS = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}
_NEGATED = {"gt": "lte", "gte": "lt", "lt": "gte", "lte": "gt"}

MessageNotHandled = _durable.MessageNotHandledException


# ---------------------------------------------------------------------------------------------
# Compiling conditions
# ---------------------------------------------------------------------------------------------
def flag_attributes(cond: Condition, negated: bool = False) -> set[str]:
    """Attributes whose facts need an `x__missing` flag: tested with `missing`, or under a `not`."""
    if isinstance(cond, Test):
        return {cond.attribute} if (negated or cond.op == "missing") else set()
    if isinstance(cond, Not):
        return flag_attributes(cond.item, not negated)
    out: set[str] = set()
    for c in cond.items:
        out |= flag_attributes(c, negated)
    return out


def _and(items: list[dict[str, Any]]) -> dict[str, Any]:
    if not items:
        return _TRUE_EXPR
    return items[0] if len(items) == 1 else {"$and": items}


def _or(items: list[dict[str, Any]]) -> dict[str, Any]:
    if not items:
        return _FALSE_EXPR
    return items[0] if len(items) == 1 else {"$or": items}


def _value(v: Any) -> Any:
    """A condition value as JSON: text, booleans and integers as they are, floats clipped to finite."""
    if isinstance(v, float):
        return max(-_MAX_FLOAT, min(_MAX_FLOAT, v))
    return v


def _test(t: Test, negated: bool) -> dict[str, Any]:
    a = t.attribute
    if t.op == "missing":
        return {a + MISSING_SUFFIX: (not t.value) if negated else bool(t.value)}
    missing = {a + MISSING_SUFFIX: True}
    if t.op in ("eq", "ne"):
        positive = (t.op == "eq") != negated
        test = {a: _value(t.value)} if positive else {"$neq": {a: _value(t.value)}}
        return _or([test, missing]) if negated else test
    if t.op in ("in", "not_in"):
        positive = (t.op == "in") != negated
        test = _or([{a: _value(v)} for v in t.value]) if positive else \
            _and([{"$neq": {a: _value(v)}} for v in t.value])
        return _or([test, missing]) if negated else test
    op = _NEGATED[t.op] if negated else t.op
    test = {_OPS[op]: {a: _value(t.value)}}
    return _or([test, missing]) if negated else test


def compile_condition(cond: Condition, negated: bool = False) -> dict[str, Any]:
    """A durable-rules expression (the value of `m`) equivalent to `cond` (or to its negation)."""
    if isinstance(cond, Test):
        return _test(cond, negated)
    if isinstance(cond, Not):
        return compile_condition(cond.item, not negated)
    parts = [compile_condition(c, negated) for c in cond.items]
    conj = isinstance(cond, All) != negated  # all -> and; negated any -> and
    if isinstance(cond, All | AnyOf):
        return _and(parts) if conj else _or(parts)
    raise TypeError(f"not a condition: {cond!r}")


def date_window(valid_from: dt.date | None, valid_to: dt.date | None) -> list[dict[str, Any]]:
    """Tests on the fact's decision day (a date ordinal) for an offer's validity window."""
    out = []
    if valid_from is not None:
        out.append({"$gte": {DAY_FIELD: valid_from.toordinal()}})
    if valid_to is not None:
        out.append({"$lte": {DAY_FIELD: valid_to.toordinal()}})
    return out


def conjunction(expressions: Iterable[dict[str, Any]]) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for e in expressions:
        if e is _TRUE_EXPR or e == _TRUE_EXPR:
            continue
        flat.extend(e["$and"] if set(e) == {"$and"} else [e])
    return _and(flat)


def to_fact(record: Mapping[str, Any], flags: Iterable[str] = (), day: dt.date | None = None) -> dict[str, Any]:
    """A fact for one record: missing values left out, flagged attributes carry `x__missing`."""
    flagged = set(flags)
    fact: dict[str, Any] = {}
    for key, v in record.items():
        if key in RESERVED_FIELDS:
            raise ValueError(f"'{key}' is reserved in durable-rules facts")
        missing = v is None or v is _NA or (isinstance(v, float) and math.isnan(v))
        if key in flagged:
            fact[key + MISSING_SUFFIX] = missing
        if not missing:
            fact[key] = _fact_value(v)
    if day is not None:
        fact[DAY_FIELD] = day.toordinal()
    return fact


def facts_from_columns(columns: Mapping[str, list[Any]], n: int, flags: Iterable[str] = (),
                       day: dt.date | None = None) -> list[dict[str, Any]]:
    """Facts for `n` records given column-wise as plain Python values (None = missing).

    The fast path of `to_fact`: values must already be JSON-ready (str, bool, int, finite float).
    """
    facts: list[dict[str, Any]] = [{} for _ in range(n)]
    flagged = set(flags)
    for key, values in columns.items():
        if key in RESERVED_FIELDS:
            raise ValueError(f"'{key}' is reserved in durable-rules facts")
        flag = key + MISSING_SUFFIX if key in flagged else None
        for fact, v in zip(facts, values, strict=True):
            if v is None:
                if flag:
                    fact[flag] = True
                continue
            fact[key] = v
            if flag:
                fact[flag] = False
    if day is not None:
        ordinal = day.toordinal()
        for fact in facts:
            fact[DAY_FIELD] = ordinal
    return facts


def _fact_value(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, str):  # numpy scalar
        v = v.item()
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int | float):
        f = float(v)
        return max(-_MAX_FLOAT, min(_MAX_FLOAT, f))
    return str(v)


# ---------------------------------------------------------------------------------------------
# Rulesets
# ---------------------------------------------------------------------------------------------
def _number(x: float) -> str:
    """A float as JSON durable-rules parses: its parser rejects an exponent after a bare integer
    mantissa ("1e-07", "1e+16", error 204) but reads "1.0e-07" exactly."""
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        return f"{mantissa}.0e{exponent}"
    return text


def to_json(obj: Any) -> str:
    """JSON for durable-rules definitions and facts (see `_number`)."""
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{to_json(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(to_json(v) for v in obj) + "]"
    if isinstance(obj, float) and not isinstance(obj, bool):
        if not math.isfinite(obj):
            raise ValueError(f"durable-rules cannot take the number {obj}")
        return _number(obj)
    return json.dumps(obj, ensure_ascii=False)


def _fact_json(fact: Mapping[str, Any]) -> str:
    for v in fact.values():  # fast path: json.dumps when no float needs an exponent
        if type(v) is float and v != 0.0 and not 1e-4 <= abs(v) < 1e16:
            return to_json(dict(fact))
    return json.dumps(fact, ensure_ascii=False)


class _Ruleset(_durable.Ruleset):
    """durable's Ruleset with our JSON (see `_number`) and no host: actions run synchronously inside
    `do_actions`, and nothing registers it in a process-global directory or dispatch thread."""

    def __init__(self, name: str, definition: dict[str, Any]) -> None:  # replaces durable's init on purpose
        self._actions = {}
        self._name = name
        self._host = None
        for rule_name, rule in definition.items():
            self._actions[rule_name] = _durable.Promise(rule.pop("run"))
        self._handle = _native.create_ruleset(name, to_json(definition))
        self._definition = definition

    def assert_fact(self, fact: dict[str, Any]) -> Any:
        return self._handle_result(_native.assert_fact(self._handle, _fact_json(fact)), fact)

    def retract_fact(self, fact: dict[str, Any]) -> Any:
        return self._handle_result(_native.retract_fact(self._handle, _fact_json(fact)), fact)


_LOCK = threading.RLock()
_NAMES = itertools.count(1)
_LIVE: set[str] = set()


def _free(name: str, handle: Any) -> None:
    """Free a ruleset's native memory (runs when its DurableRuleset is closed or garbage-collected)."""
    with _LOCK:
        _LIVE.discard(name)
        with contextlib.suppress(Exception):  # best effort at teardown
            _native.delete_ruleset(handle)


def live_rulesets() -> set[str]:
    """Names of the rulesets alive in this process (for tests and diagnostics)."""
    return set(_LIVE)


class DurableRuleset:
    """One compiled durable-rules ruleset: named expressions in, matching names per fact out."""

    def __init__(self, expressions: Mapping[str, dict[str, Any]], *, prefix: str = "retain_policy") -> None:
        if not expressions:
            raise ValueError("a ruleset needs at least one rule")
        self.name = f"{prefix}_{next(_NAMES)}_{uuid.uuid4().hex[:8]}"
        self.keys = list(expressions)
        hits: list[int] = []
        self._hits = hits
        definition = {}
        for i, key in enumerate(self.keys):
            definition[f"r{i}"] = {"all": [{"m": expressions[key]}], "run": _collector(hits, i)}
        with _LOCK:
            self._ruleset = _Ruleset(self.name, definition)
            _LIVE.add(self.name)
        self._finalizer = weakref.finalize(self, _free, self.name, self._ruleset._handle)

    def match(self, facts: Sequence[Mapping[str, Any]]) -> list[set[str]]:
        """For each fact, the keys of the expressions it satisfies (evaluated one fact at a time)."""
        if not self._finalizer.alive:
            raise RuntimeError(f"ruleset {self.name} is closed")
        out: list[set[str]] = []
        rs = self._ruleset
        keys = self.keys
        with _LOCK:
            for row, fact in enumerate(facts):
                f = dict(fact)
                f[ROW_FIELD] = row
                self._hits.clear()
                with contextlib.suppress(MessageNotHandled):  # no rule matched
                    rs.do_actions(rs.assert_fact(f), _raise_error)
                with contextlib.suppress(MessageNotHandled):
                    rs.do_actions(rs.retract_fact(f), _raise_error)
                out.append({keys[i] for i in self._hits})
        return out

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> DurableRuleset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _collector(hits: list[int], index: int):
    def action(c: Any) -> None:
        hits.append(index)

    return action


def _raise_error(error: Any, _state: Any) -> None:
    if error:
        raise error if isinstance(error, BaseException) else RuntimeError(str(error))
