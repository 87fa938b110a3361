"""The condition language shared by rules (`when:`) and offers (`eligibility:`): data, never code.

A condition is a YAML mapping. Each key is an attribute of `engine.data.attributes.DECISION_ATTRIBUTES` or
one of the combinators `all`, `any`, `not`; several keys in one mapping must all hold::

    when:
      risk_grade: [high, medium]              # membership: one of the listed values
      reason: price                           # equality
      tenure_months: {min: 12}                # range: min / max are inclusive
      churn_probability: {gt: 0.4, lte: 0.9}  # comparisons: gt, gte, lt, lte, eq, ne
      plan: {not_in: [prepaid_basic, prepaid_plus]}
      contract_months_left: {missing: false} # the value is present (prepaid has none)
      any:                                    # at least one of the listed conditions
        - need_group: young
        - age_group: "18-24"
      not: {region: north}                    # the inner condition does not hold

Missing values: a test on a missing value (NaN, empty) is false - `eq`, `ne`, `in`, `not_in` and the
comparisons alike. `not` negates its inner condition as a whole, so `not: {tenure_months: {gt: 12}}`
holds for a subscriber whose tenure is missing. `missing: true` tests for the missing value itself.

Values are checked against the attribute's kind: numbers for numeric attributes, true/false for
booleans, text for categoricals and, where the attribute has a closed set of levels (risk_grade,
reason, plan, ...), one of those levels.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.data.attributes import DECISION_ATTRIBUTES, Attribute
from engine.vocabulary import FALSE_WORDS, TRUE_WORDS

COMBINATORS = ("all", "any", "not")
#: Operator keys of an attribute test mapping, with what they mean (used in hints and the JSON Schema).
OPERATORS: dict[str, str] = {
    "eq": "equal to the value",
    "ne": "present and not equal to the value",
    "in": "one of the listed values",
    "not_in": "present and none of the listed values",
    "gt": "greater than",
    "gte": "greater than or equal to",
    "lt": "less than",
    "lte": "less than or equal to",
    "min": "at least (inclusive lower bound of a range)",
    "max": "at most (inclusive upper bound of a range)",
    "missing": "true: the value is missing; false: the value is present",
}
ORDERING = {"gt", "gte", "lt", "lte", "min", "max"}
_SYMBOL = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


# ---------------------------------------------------------------------------------------------
# The condition tree
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Test:
    """One test of one attribute. `op` is eq, ne, in, not_in, gt, gte, lt, lte or missing."""

    __test__ = False  # not a pytest test class

    attribute: str
    op: str
    value: Any
    line: int = 0

    def describe(self) -> str:
        if self.op == "missing":
            return f"{self.attribute} is {'missing' if self.value else 'present'}"
        if self.op in ("in", "not_in"):
            listed = ", ".join(_show(v) for v in self.value)
            return f"{self.attribute} {'in' if self.op == 'in' else 'not in'} [{listed}]"
        return f"{self.attribute} {_SYMBOL[self.op]} {_show(self.value)}"


@dataclass(frozen=True)
class All:
    items: tuple[Condition, ...]
    line: int = 0

    def describe(self) -> str:
        if not self.items:
            return "always"
        return " and ".join(_wrap(c) for c in self.items)


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]
    line: int = 0

    def describe(self) -> str:
        return " or ".join(_wrap(c) for c in self.items)


@dataclass(frozen=True)
class Not:
    item: Condition
    line: int = 0

    def describe(self) -> str:
        return f"not ({self.item.describe()})"


Condition = Test | All | AnyOf | Not
ALWAYS = All(())


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _wrap(c: Condition) -> str:
    text = c.describe()
    return f"({text})" if isinstance(c, All | AnyOf) and len(c.items) > 1 else text


def iter_tests(cond: Condition) -> Iterator[Test]:
    if isinstance(cond, Test):
        yield cond
    elif isinstance(cond, Not):
        yield from iter_tests(cond.item)
    else:
        for c in cond.items:
            yield from iter_tests(c)


def attributes_of(cond: Condition) -> set[str]:
    return {t.attribute for t in iter_tests(cond)}


def conjuncts(cond: Condition) -> list[Condition]:
    """The parts of a condition that must all hold (nested `all`s flattened)."""
    if isinstance(cond, All):
        out: list[Condition] = []
        for c in cond.items:
            out.extend(conjuncts(c))
        return out
    return [cond]


def conjoin(*conds: Condition) -> Condition:
    items = tuple(part for c in conds for part in conjuncts(c))
    if not items:
        return ALWAYS
    return items[0] if len(items) == 1 else All(items)


# ---------------------------------------------------------------------------------------------
# Parsing YAML into the tree, with line-numbered problems
# ---------------------------------------------------------------------------------------------
@dataclass
class Problems:
    """Problems found while parsing one policy element: (line, message) pairs."""

    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        self.items.append((line, message))


def _line_of(node: Any, key: Any = None, default: int = 0) -> int:
    if key is not None:
        lines = getattr(node, "key_lines", None) or getattr(node, "item_lines", None)
        if lines is not None:
            try:
                return lines[key]
            except (KeyError, IndexError, TypeError):
                pass
    return getattr(node, "line", default) or default


def closest(word: str, choices: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.6)


def _unknown_attribute(name: Any, attributes: Mapping[str, Attribute]) -> str:
    near = closest(str(name), list(attributes), n=1)
    hint = f"did you mean '{near[0]}'?" if near else \
        "conditions may name any attribute of `retain data schema` or an engine output " \
        "(churn_probability, risk_grade, reason, reason_share, value_tier, lifecycle_stage, need_group, is_prepaid), " \
        "or an attribute declared in attributes.yaml"
    return f"unknown attribute '{name}' (hint: {hint})"


def kind_word(attr: Attribute) -> str:
    if attr.kind == "numeric":
        return "a number"
    if attr.kind == "boolean":
        return "true or false"
    return "one of " + ", ".join(attr.values) if attr.values else "text"


def check_value(attr: Attribute, value: Any) -> str | None:
    """Why `value` cannot be compared with `attr`, or None when it can."""
    if attr.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{attr.name} is numeric, got {_typed(value)} (hint: write a number, e.g. 12 or 0.5)"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{attr.name}: {value} is not a usable number"
        return None
    if attr.kind == "boolean":
        if not isinstance(value, bool):
            return f"{attr.name} is true/false, got {_typed(value)} (hint: write true or false)"
        return None
    if not isinstance(value, str):
        quote = " - quote it, YAML reads yes/no/on/off as true/false" if isinstance(value, bool) else " - quote it"
        return f"{attr.name} is categorical, got {_typed(value)} (hint: write text{quote})"
    if attr.values is not None and value not in attr.values:
        near = closest(value, attr.values, n=1)
        maybe = f"did you mean '{near[0]}'? " if near else ""
        return f"unknown value '{value}' for {attr.name} (hint: {maybe}valid values: {', '.join(attr.values)})"
    return None


def _typed(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"text '{value}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def parse_condition(raw: Any, problems: Problems, *, line: int, what: str = "condition",
                    attributes: Mapping[str, Attribute] = DECISION_ATTRIBUTES) -> Condition:
    """Parse a condition mapping (None or {} means 'always'). Problems are recorded, not raised.

    `attributes` is what a condition may name: the built-ins plus the policy set's declared attributes.
    """
    if raw is None:
        return ALWAYS
    if not isinstance(raw, dict):
        problems.add(_line_of(raw, default=line), f"{what} must be a mapping of attribute: value, got {_typed(raw)}")
        return ALWAYS
    items: list[Condition] = []
    for key, value in raw.items():
        kline = _line_of(raw, key, line)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                problems.add(kline, f"'{key}' needs a non-empty list of conditions, got {_typed(value)}")
                continue
            subs = tuple(parse_condition(v, problems, line=_line_of(value, i, kline), what=f"'{key}' item",
                                         attributes=attributes)
                         for i, v in enumerate(value))
            items.append(All(subs, kline) if key == "all" else AnyOf(subs, kline))
        elif key == "not":
            if not isinstance(value, dict) or not value:
                problems.add(kline, f"'not' needs a condition mapping, got {_typed(value)}")
                continue
            items.append(Not(parse_condition(value, problems, line=kline, what="'not'", attributes=attributes),
                             kline))
        elif isinstance(key, str) and key in attributes:
            items.extend(_parse_tests(attributes[key], value, problems, kline))
        else:
            problems.add(kline, _unknown_attribute(key, attributes))
    if len(items) == 1:
        return items[0]
    return All(tuple(items), line)


def _parse_tests(attr: Attribute, value: Any, problems: Problems, line: int) -> list[Condition]:
    name = attr.name
    if value is None:
        problems.add(line, f"{name}: no value given (hint: write a value, a list, or a mapping like {{min: 1}})")
        return []
    if isinstance(value, list):
        return _membership(attr, "in", value, problems, line)
    if not isinstance(value, dict):
        problem = check_value(attr, value)
        if problem:
            problems.add(line, problem)
            return []
        return [Test(name, "eq", value, line)]
    out: list[Condition] = []
    bounds: dict[str, Any] = {}
    for op, v in value.items():
        oline = _line_of(value, op, line)
        if op not in OPERATORS:
            near = closest(str(op), list(OPERATORS), n=1)
            maybe = f"did you mean '{near[0]}'? " if near else ""
            problems.add(oline, f"{name}: unknown operator '{op}' (hint: {maybe}use one of {', '.join(OPERATORS)})")
            continue
        if op == "missing":
            if not isinstance(v, bool):
                problems.add(oline, f"{name}: 'missing' takes true or false, got {_typed(v)}")
            else:
                out.append(Test(name, "missing", v, oline))
            continue
        if op in ("in", "not_in"):
            out.extend(_membership(attr, op, v, problems, oline))
            continue
        if op in ORDERING and attr.kind != "numeric":
            problems.add(oline, f"{name}: '{op}' compares numbers, but {name} is {attr.kind} "
                                f"(hint: use a value, a list, eq, ne, in or not_in)")
            continue
        problem = check_value(attr, v)
        if problem:
            problems.add(oline, problem)
            continue
        norm = {"min": "gte", "max": "lte"}.get(op, op)
        if op in ORDERING:
            bounds[op] = v
        out.append(Test(name, norm, v, oline))
    if not value:
        problems.add(line, f"{name}: empty test mapping (hint: e.g. {{min: 1}} or {{in: [a, b]}})")
    _check_range(name, bounds, problems, line)
    return out


def _membership(attr: Attribute, op: str, values: Any, problems: Problems, line: int) -> list[Condition]:
    if not isinstance(values, list) or not values:
        problems.add(line, f"{attr.name}: '{op}' needs a non-empty list of values, got {_typed(values)}")
        return []
    ok = True
    for i, v in enumerate(values):
        problem = check_value(attr, v)
        if problem:
            problems.add(_line_of(values, i, line), problem)
            ok = False
    if not ok:
        return []
    unique = tuple(dict.fromkeys(values))
    if op == "in" and len(unique) == 1:
        return [Test(attr.name, "eq", unique[0], line)]
    if op == "not_in" and len(unique) == 1:
        return [Test(attr.name, "ne", unique[0], line)]
    return [Test(attr.name, op, unique, line)]


def _check_range(name: str, bounds: dict[str, Any], problems: Problems, line: int) -> None:
    lows = [(bounds[k], k == "gt") for k in ("min", "gte", "gt") if k in bounds]
    highs = [(bounds[k], k == "lt") for k in ("max", "lte", "lt") if k in bounds]
    if not lows or not highs:
        return
    lo, lo_open = max(lows, key=lambda b: (b[0], b[1]))
    hi, hi_open = min(highs, key=lambda b: (b[0], not b[1]))
    if lo > hi or (lo == hi and (lo_open or hi_open)):
        shown = ", ".join(f"{k}: {_show(v)}" for k, v in bounds.items())
        problems.add(line, f"{name}: impossible range ({shown}) - no value satisfies it "
                           f"(hint: the lower bound must not exceed the upper bound)")


# ---------------------------------------------------------------------------------------------
# Vectorised evaluation (analysis, explain, cross-checks). Decisions go through durable-rules.
# ---------------------------------------------------------------------------------------------
@dataclass
class Column:
    """One attribute's values prepared for evaluation: values plus a missing mask."""

    values: np.ndarray
    missing: np.ndarray


def prepare_column(name: str, series: pd.Series | np.ndarray, attr: Attribute | None = None) -> Column:
    """Normalise a column: numeric -> float64 (NaN missing); boolean -> bool; categorical -> str objects.

    `attr` describes a declared (custom) attribute; built-ins are looked up by name.
    """
    attr = attr or DECISION_ATTRIBUTES.get(name)
    if isinstance(series, np.ndarray) and series.ndim == 1:  # the usual types, without a Series (~20 us each)
        if (attr is None or attr.kind == "numeric") and series.dtype.kind in "fiu":
            vals = series.astype(float)  # (a copy, as below)
            return Column(vals, np.isnan(vals))
        if attr is not None and attr.kind not in ("numeric", "boolean") and series.dtype == object:
            vals = series.copy()
            missing = pd.isna(vals)
            vals[missing] = None
            return Column(vals, missing)
    s = pd.Series(series) if not isinstance(series, pd.Series) else series
    if attr is None or attr.kind == "numeric":
        if s.dtype.kind in "fiu":  # numpy numbers already (the usual case): what to_numeric would return
            vals = s.to_numpy(dtype=float, copy=True)
        else:
            vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return Column(vals, np.isnan(vals))
    if attr.kind == "boolean":
        return _bool_column(s)
    if s.dtype == object:  # as below, without two pandas calls (~40 us each on a one-row frame)
        vals = s.to_numpy().copy()
        missing = pd.isna(vals)
    else:
        missing = s.isna().to_numpy()
        vals = s.astype(object).to_numpy()
    if missing.any():
        vals = vals.copy()
        vals[missing] = None
    return Column(vals, missing)


def _bool_column(s: pd.Series) -> Column:
    """True/false from real booleans, 0/1, or the shared yes/no words (engine.vocabulary); else missing."""
    if s.dtype == bool:
        vals = s.to_numpy()
        return Column(vals, np.zeros(len(vals), dtype=bool))
    words = s.astype("string").str.strip().str.lower()
    is_true = words.isin(TRUE_WORDS).fillna(False).to_numpy(dtype=bool)
    is_false = words.isin(FALSE_WORDS).fillna(False).to_numpy(dtype=bool)
    return Column(is_true, ~(is_true | is_false))


def _isna(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def evaluate(cond: Condition, cols: dict[str, Column], n: int) -> np.ndarray:
    """Truth of `cond` for each of `n` rows; `cols` holds every attribute the condition names."""
    if isinstance(cond, Test):
        return _eval_test(cond, cols[cond.attribute])
    if isinstance(cond, Not):
        return ~evaluate(cond.item, cols, n)
    if isinstance(cond, All):
        out = np.ones(n, dtype=bool)
        for c in cond.items:
            out &= evaluate(c, cols, n)
        return out
    out = np.zeros(n, dtype=bool)
    for c in cond.items:
        out |= evaluate(c, cols, n)
    return out


def _eval_test(t: Test, col: Column) -> np.ndarray:
    present = ~col.missing
    v = col.values
    if t.op == "missing":
        return col.missing.copy() if t.value else present
    if t.op in ("in", "not_in"):
        hit = np.isin(v, np.array(t.value, dtype=v.dtype if v.dtype != object else object))
        return present & (hit if t.op == "in" else ~hit)
    with np.errstate(invalid="ignore"):
        if t.op == "eq":
            res = v == t.value
        elif t.op == "ne":
            res = v != t.value
        elif t.op == "gt":
            res = v > t.value
        elif t.op == "gte":
            res = v >= t.value
        elif t.op == "lt":
            res = v < t.value
        else:
            res = v <= t.value
    return present & np.asarray(res, dtype=bool)


def first_failure(cond: Condition, cols: dict[str, Column]) -> str | None:
    """Words for the first part of `cond` that fails for a single row (cols of length 1), or None."""
    if evaluate(cond, cols, 1)[0]:
        return None
    if isinstance(cond, All):
        for c in cond.items:
            failed = first_failure(c, cols)
            if failed:
                return failed
    if isinstance(cond, Test):
        col = cols[cond.attribute]
        actual = "missing" if col.missing[0] else _show(_py(col.values[0]))
        return f"{cond.describe()} (is {actual})"
    if isinstance(cond, AnyOf):
        return f"none of: {cond.describe()}"
    return cond.describe()


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
