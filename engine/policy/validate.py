"""Checks of a loaded policy set: the warnings of `retain policy validate`.

Errors (the set cannot be used) are raised while loading. Warnings point at rules that are legal
but probably not what the author meant, each with the file:line of the rule (or offer) and its id:

* a rule that can never fire: its conditions contradict each other or its offer's eligibility; the
  rule or its offer is outside its validity dates on the check date; or its conditions contradict how
  the engine derives a segment (`risk_grade: low` with `churn_probability: {gt: 0.6}` while the settings
  grade 0.5 and above as high; a lifecycle stage against tenure; a value tier against 3-month ARPU when
  tiers are cut by thresholds; is_prepaid or need_group against the plan);
* a rule that never wins, because every subscriber it matches is matched first by a higher-priority
  rule (by one rule, or - when the combinations are few enough to enumerate - by several together);
  a suppression (`no_offer: true`) that matches every subscriber any later rule matches, so no rule
  after it ever gives an offer;
* rules with the same priority and different offers (or an offer and a suppression) that can match the
  same subscriber (file order decides between them);
* offers no rule uses;
* segments (risk_grade x value_tier x reason) that no rule can cover;
* subscribers of a population no rule reaches: the decisions table given with `--input`, else a
  synthetic population (engine/policy/synthetic.py); the finding names the population used.

How: every test in the set splits an attribute's values into a few classes (below, at, between and
above the thresholds it uses; the mentioned categorical levels and "any other"; missing where the
schema allows it). Enumerating one value per class for the attributes two rules read decides exactly
whether the rules can match together. Attributes are treated as independent except where a check says
otherwise (the derivation check), so "never fires" and "never wins" are certain, while an uncovered
segment may in rare cases be a combination real data never shows - which is why coverage is also
counted on a population.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.data.attributes import Attribute
from engine.data.schema import PREPAID_PLANS, SUBSCRIBER_COLUMNS
from engine.errors import DataError
from engine.policy.conditions import Column, Condition, attributes_of, evaluate, iter_tests, prepare_column
from engine.policy.model import PolicySet, Rule
from engine.vocabulary import REASON_VALUES, RISK_GRADES, VALUE_TIERS

MAX_GRID = 1_000_000
_BOUNDS: dict[str, tuple[float, float]] = {
    "churn_probability": (0.0, 1.0), "reason_share": (0.0, 1.0), "arpu_mean_3m": (0.0, 10_000.0),
    "arpu_change": (-1.0, 10.0), "data_change": (-1.0, 10.0), "voice_change": (-1.0, 10.0),
}
_SCHEMA = {c.name: c for c in SUBSCRIBER_COLUMNS}
OTHER = "__any_other__"
SEGMENT = ("risk_grade", "value_tier", "reason")
SUPPRESSED = "(suppressed)"


@dataclass(frozen=True)
class Finding:
    """One warning: where (file:line), what, and which check found it."""

    where: str
    message: str
    check: str

    def __str__(self) -> str:
        return f"{self.where}: warning: {self.message}"


# ---------------------------------------------------------------------------------------------
# How the engine derives segments: what a rule may not contradict
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Derivation:
    """An engine output computed from inputs a rule may also test (e.g. risk_grade from churn_probability)."""

    output: str
    inputs: tuple[str, ...]
    cuts: dict[str, tuple[float, ...]]  # input -> the thresholds the derivation uses (split the domain there)
    derive: Callable[[dict[str, np.ndarray]], np.ndarray]
    words: str  # the rule in words, with where it is configured

    def consistent(self, cols: dict[str, Column]) -> np.ndarray:
        """Rows whose output value is what the engine would derive from their inputs (unknown inputs: yes)."""
        values = {name: cols[name].values for name in self.inputs}
        unknown = np.zeros(len(cols[self.output].values), dtype=bool)
        for name in self.inputs:
            unknown |= cols[name].missing
        with np.errstate(invalid="ignore"):
            derived = self.derive(values)
        return unknown | (np.asarray(derived, dtype=object) == cols[self.output].values.astype(object))


def derivations(settings: Any = None) -> list[Derivation]:
    """The derivations the configured engine applies (`settings`: engine.config.Settings; None = load_settings())."""
    from engine.model import segments

    if settings is None:
        from engine.config import load_settings

        settings = load_settings()
    out: list[Derivation] = []
    rg = settings.risk_grades
    if rg.capacity_high is None:
        out.append(Derivation(
            "risk_grade", ("churn_probability",), {"churn_probability": (rg.medium, rg.high)},
            lambda v: segments.risk_grade(v["churn_probability"], rg),
            f"the engine grades churn_probability >= {rg.high:g} high, >= {rg.medium:g} medium, else low "
            f"(settings risk_grades.high / risk_grades.medium)"))
    vt = settings.value_tiers
    if vt.method == "thresholds":
        out.append(Derivation(
            "value_tier", ("arpu_mean_3m",), {"arpu_mean_3m": (vt.medium, vt.high)},
            lambda v: segments.value_tier(v["arpu_mean_3m"], vt),
            f"value tiers are cut by arpu_mean_3m >= {vt.high:g} high, >= {vt.medium:g} medium, else low "
            f"(settings value_tiers)"))
    lc = settings.lifecycle
    out.append(Derivation(
        "lifecycle_stage", ("tenure_months", "data_change", "voice_change"),
        {"tenure_months": (float(lc.new_months), float(lc.growth_months)),
         "data_change": (-lc.decline_usage_drop,), "voice_change": (-lc.decline_usage_drop,)},
        lambda v: segments.lifecycle_stage(v["tenure_months"], v["data_change"], v["voice_change"], lc),
        f"the lifecycle stage is new below {lc.new_months} months of tenure, decline when data or voice usage "
        f"fell {lc.decline_usage_drop:.0%} or more, growth below {lc.growth_months} months, else mature "
        f"(settings lifecycle)"))
    out.append(Derivation(
        "is_prepaid", ("plan",), {}, lambda v: np.isin(v["plan"], PREPAID_PLANS),
        f"is_prepaid is true exactly for the plans {', '.join(PREPAID_PLANS)}"))
    out.append(Derivation(
        "need_group", ("plan", "age_group"), {},
        lambda v: segments.need_group(v["plan"], v["age_group"]),
        "need_group is business for the business plan, family for family_share, else elderly for age 65+, "
        "young for 18-24, else general"))
    return out


# ---------------------------------------------------------------------------------------------
# The enumeration domain
# ---------------------------------------------------------------------------------------------
class Domain:
    """One representative value per class of every attribute the policy set reads."""

    def __init__(self, policy_set: PolicySet, derived: list[Derivation] | None = None) -> None:
        self.vocabulary: dict[str, Attribute] = policy_set.vocabulary
        used: dict[str, set] = {}
        conds = [r.conditions for r in policy_set.rules] + [o.eligibility for o in policy_set.offers.values()]
        for cond in conds:
            for t in iter_tests(cond):
                if t.op == "missing":
                    used.setdefault(t.attribute, set())
                    continue
                used.setdefault(t.attribute, set()).update(t.value if t.op in ("in", "not_in") else (t.value,))
        for d in derived or []:
            if d.output in used or d.output in SEGMENT:
                for name in d.inputs:
                    used.setdefault(name, set()).update(d.cuts.get(name, ()))
        self.values: dict[str, list] = {}
        for name in sorted(set(used) | set(SEGMENT)):
            self.values[name] = _representatives(self.vocabulary[name], used.get(name, set()))

    def grid(self, names: set[str]) -> tuple[dict[str, Column], int] | None:
        """Every combination of representatives of `names`, or None when there are more than MAX_GRID."""
        ordered = sorted(names)
        if any(n not in self.values for n in ordered):
            return None
        sizes = [len(self.values[n]) for n in ordered]
        total = int(np.prod(sizes)) if sizes else 1
        if total > MAX_GRID:
            return None
        cols: dict[str, Column] = {}
        if not ordered:
            return cols, 1
        index = np.indices(sizes).reshape(len(sizes), -1)
        for i, name in enumerate(ordered):
            reps = self.values[name]
            kind = self.vocabulary[name].kind
            if kind == "numeric":
                arr = np.array([np.nan if v is None else v for v in reps], dtype=float)[index[i]]
                cols[name] = Column(arr, np.isnan(arr))
            elif kind == "boolean":
                arr = np.array(reps, dtype=bool)[index[i]]
                cols[name] = Column(arr, np.zeros(total, dtype=bool))
            else:
                arr = np.array(reps, dtype=object)[index[i]]
                cols[name] = Column(arr, np.zeros(total, dtype=bool))
        return cols, total


def _representatives(attr: Attribute, used: set) -> list:
    name = attr.name
    if attr.kind == "boolean":
        return [False, True]
    if attr.kind == "categorical":
        if attr.values:
            return list(attr.values)
        return sorted(str(v) for v in used) + [OTHER]
    col = _SCHEMA.get(name)
    declared_lo, declared_hi = getattr(attr, "minimum", None), getattr(attr, "maximum", None)
    if name in _BOUNDS:
        lo, hi = _BOUNDS[name]
    elif col is not None and col.min is not None:
        lo, hi = col.min, col.max
    else:
        lo = declared_lo if declared_lo is not None else -1e12
        hi = declared_hi if declared_hi is not None else 1e12
    integer = col is not None and col.kind == "integer"
    vs = sorted(float(v) for v in used)
    if integer:
        cands = {x for v in vs for x in (np.floor(v) - 1, np.floor(v), np.ceil(v), np.ceil(v) + 1)}
    else:
        cands = set(vs) | {(a + b) / 2 for a, b in itertools.pairwise(vs)}
        if vs:
            cands.add(vs[0] - 1.0 if vs[0] - 1.0 >= lo else (lo + vs[0]) / 2)
            cands.add(vs[-1] + 1.0 if vs[-1] + 1.0 <= hi else (vs[-1] + hi) / 2)
    reps: list = sorted(float(c) for c in cands if lo <= c <= hi) or [float(lo)]
    if col is not None and col.nullable:
        reps.append(None)
    return reps


def _where(rule: Rule) -> str:
    return rule.source


def _gives(rule: Rule) -> str:
    return SUPPRESSED if rule.suppresses else f"'{rule.offer}'"


# ---------------------------------------------------------------------------------------------
# A population: coverage is counted on real (or realistic) subscribers
# ---------------------------------------------------------------------------------------------
@dataclass
class Population:
    """Subscribers to count coverage on, and words that say which ones."""

    frame: pd.DataFrame
    label: str


@dataclass
class Coverage:
    """Who the policy set reaches in a population: by the first rule that matches (in evaluation order)."""

    population: str
    subscribers: int
    reached: int  # the first matching rule gives an offer
    suppressed: int  # the first matching rule is a suppression
    unreached: int  # no rule matches
    unreached_segments: list[tuple[tuple[str, ...], int]] = field(default_factory=list)  # largest first

    def line(self) -> str:
        n = max(self.subscribers, 1)
        return (f"coverage on {self.population}: {self.reached:,} of {self.subscribers:,} subscribers reached by a "
                f"rule ({self.reached / n:.1%}), {self.suppressed:,} suppressed, {self.unreached:,} reached by no "
                f"rule ({self.unreached / n:.1%})")


def synthetic(policy_set: PolicySet, settings: Any = None, n: int | None = None) -> Population:
    from engine.policy.synthetic import POPULATION_SEED, POPULATION_SIZE, synthetic_population

    size = n or POPULATION_SIZE
    frame = synthetic_population(policy_set, size, POPULATION_SEED, settings)
    extra = " (declared attributes drawn at random)" if policy_set.declared else ""
    return Population(frame, f"a synthetic population of {size:,} subscribers (engine/policy/synthetic.py, "
                             f"seed {POPULATION_SEED}){extra}")


def from_table(policy_set: PolicySet, frame: pd.DataFrame, source: str) -> Population:
    """A decisions table as a population; refuses one without the columns the policy set reads."""
    policy_set.require_declared(frame.columns)
    missing = sorted(policy_set.attributes - set(frame.columns))
    if missing:
        raise DataError(f"{source}: the policy set reads column(s) {missing}, which the table does not have",
                        hint="give a decisions table of `retain decide` (it carries every policy attribute)")
    return Population(frame, f"{source} ({len(frame):,} subscribers)")


def rule_matches(policy_set: PolicySet, frame: pd.DataFrame, day: dt.date) -> np.ndarray:
    """rows x rules: does rule j match row i on `day` (its conditions, its dates, and for an offer rule the
    offer's eligibility and dates)? Evaluated on the condition tree - the reference semantics, no engine."""
    ps = policy_set
    vocab = ps.vocabulary
    n = len(frame)
    cols: dict[str, Column] = {a: prepare_column(a, frame[a], vocab.get(a)) for a in ps.attributes}
    out = np.zeros((n, len(ps.rules)), dtype=bool)
    for j, rule in enumerate(ps.rules):
        if not rule.valid_on(day):
            continue
        if rule.offer is not None and not ps.offers[rule.offer].valid_on(day):
            continue
        out[:, j] = evaluate(ps.matching_condition(rule), cols, n)
    return out


def first_match(matches: np.ndarray) -> np.ndarray:
    """Per row, the position of the first matching rule, or -1."""
    if matches.shape[1] == 0:
        return np.full(matches.shape[0], -1, dtype=np.int64)
    first = matches.argmax(axis=1).astype(np.int64)
    first[~matches.any(axis=1)] = -1
    return first


def population_coverage(policy_set: PolicySet, population: Population, day: dt.date) -> Coverage:
    frame = population.frame
    first = first_match(rule_matches(policy_set, frame, day))
    suppressing = np.array([r.suppresses for r in policy_set.rules] + [False], dtype=bool)
    none = first < 0
    suppressed = suppressing[first] & ~none
    segs: list[tuple[tuple[str, ...], int]] = []
    if none.any() and set(SEGMENT) <= set(frame.columns):
        counts = frame.loc[none, list(SEGMENT)].astype(str).value_counts()
        segs = [(tuple(k), int(v)) for k, v in counts.items()]
    n = len(frame)
    return Coverage(population.label, n, int(n - none.sum() - suppressed.sum()), int(suppressed.sum()),
                    int(none.sum()), segs)


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
@dataclass
class Validation:
    findings: list[Finding]
    coverage: Coverage | None


def check_policy_set(policy_set: PolicySet, *, today: dt.date | None = None, population: Population | None = None,
                     settings: Any = None) -> list[Finding]:
    """Every warning for a loaded policy set, in file and line order (see validate_policy_set)."""
    return validate_policy_set(policy_set, today=today, population=population, settings=settings).findings


def validate_policy_set(policy_set: PolicySet, *, today: dt.date | None = None,
                        population: Population | None = None, settings: Any = None) -> Validation:
    """Every warning, and coverage on `population` when one is given.

    Without a population, coverage is the static segment check; when that cannot be enumerated it falls
    back to a synthetic population rather than say nothing. `settings` (engine.config.Settings; default:
    load_settings()) gives the thresholds of the derivation check.
    """
    today = today or dt.date.today()
    ps = policy_set
    derived = derivations(settings)
    domain = Domain(ps, derived)
    findings: list[Finding] = []
    conds = [ps.matching_condition(r) for r in ps.rules]
    can_fire = [True] * len(ps.rules)

    # offers: unused
    used_offers = {r.offer for r in ps.rules if r.offer is not None}
    for offer in ps.offers.values():
        if offer.id not in used_offers:
            findings.append(Finding(offer.source, f"offer '{offer.id}' is not used by any rule", "unused-offer"))
    # the rule's own dates, then its offer's
    for i, rule in enumerate(ps.rules):
        if not rule.valid_on(today):
            can_fire[i] = False
            when = (f"it expired on {rule.valid_to} (valid_to)" if rule.valid_to and today > rule.valid_to
                    else f"it starts on {rule.valid_from} (valid_from)")
            findings.append(Finding(_where(rule), f"rule '{rule.id}': cannot fire on {today}: {when}", "never-fires"))
            continue
        if rule.offer is None:
            continue
        offer = ps.offers[rule.offer]
        if not offer.valid_on(today):
            can_fire[i] = False
            when = (f"expired on {offer.valid_to}" if offer.valid_to and today > offer.valid_to
                    else f"starts on {offer.valid_from}")
            findings.append(Finding(_where(rule), f"rule '{rule.id}': cannot fire on {today}: offer '{offer.id}' "
                                                  f"{when}", "never-fires"))

    # never fires
    for i, (rule, cond) in enumerate(zip(ps.rules, conds, strict=True)):
        if not can_fire[i]:
            continue
        verdict = _satisfiable(cond, domain)
        if verdict is False:
            can_fire[i] = False
            alone = _satisfiable(rule.conditions, domain)
            if alone is False or rule.offer is None:
                why = "its conditions contradict each other"
            else:
                elig = ps.offers[rule.offer].eligibility.describe()
                why = f"offer '{rule.offer}' is never eligible for the subscribers it targets (eligibility: {elig})"
            findings.append(Finding(_where(rule), f"rule '{rule.id}' can never fire: {why}", "never-fires"))
            continue
        contradiction = _contradicts_derivation(cond, domain, derived)
        if contradiction:
            can_fire[i] = False
            findings.append(Finding(_where(rule), f"rule '{rule.id}' can never fire: {contradiction}",
                                    "contradicts-engine"))

    # a suppression that ends every later rule
    silencing: set[str] = set()
    for i, rule in enumerate(ps.rules):
        if not (rule.suppresses and can_fire[i]):
            continue
        later = [j for j in range(i + 1, len(ps.rules)) if can_fire[j]]
        if later and all(_covers(conds[i], conds[j], domain) for j in later):
            silencing.add(rule.id)
            note = f" ({rule.action.note})" if rule.action.note else ""
            findings.append(Finding(_where(rule), f"suppression rule '{rule.id}'{note} shadows every rule after it: "
                                                  f"every subscriber any of the {len(later)} later rule(s) matches is "
                                                  f"matched by it first, so no rule after it ever gives an offer "
                                                  f"(hint: narrow its `when`, or lower its priority)",
                                    "suppression-shadows-all"))

    # never wins (shadowed) and same-priority overlaps
    for i, rule in enumerate(ps.rules):
        if not can_fire[i]:
            continue
        shadow = _shadowing(i, conds, can_fire, domain, ps.rules)
        if shadow and not (len(shadow[1]) == 1 and shadow[1][0] in silencing):
            findings.append(Finding(_where(rule), f"rule '{rule.id}' never wins: {shadow[0]}", "shadowed"))
        for j in range(i):
            other = ps.rules[j]
            if (other.priority == rule.priority and other.offer != rule.offer and can_fire[j]
                    and _jointly(conds[i], conds[j], domain)):
                findings.append(Finding(_where(rule), f"rule '{rule.id}' overlaps rule '{other.id}' at the same "
                                                      f"priority {rule.priority} with a different offer "
                                                      f"({_gives(rule)} vs {_gives(other)}): where both match, "
                                                      f"'{other.id}' wins because it comes first in file order",
                                        "overlap"))

    segments = _coverage(ps, conds, can_fire, domain)
    if segments is None and population is None:
        population = synthetic(ps, settings)  # the segment grid is too large: count on subscribers instead
    findings.extend(segments or [])
    coverage = None
    if population is not None:
        coverage = population_coverage(ps, population, today)
        if coverage.unreached:
            findings.append(_unreached_finding(ps, coverage))
    return Validation(sorted(findings, key=_order), coverage)


def _unreached_finding(ps: PolicySet, cov: Coverage) -> Finding:
    top = "; ".join(f"risk_grade={g}, value_tier={v}, reason={r}: {k:,}" for (g, v, r), k in cov.unreached_segments[:3])
    largest = f"; most of them in {top}" if top else ""
    last = ps.rules[-1] if ps.rules else None
    where = last.source if last is not None else (ps.files[0] if ps.files else ps.root)
    after = f" after rule '{last.id}', the last in evaluation order" if last is not None else ""
    return Finding(where, f"coverage on {cov.population}: {cov.unreached:,} of {cov.subscribers:,} subscribers "
                          f"({cov.unreached / max(cov.subscribers, 1):.1%}) are reached by no rule{largest} "
                          f"(hint: add a rule for them, e.g. a catch-all{after})", "unreached")


def _order(f: Finding) -> tuple[str, int]:
    file, _, line = f.where.rpartition(":")
    return (file, int(line)) if line.isdigit() else (f.where, 0)


def _eval(cond: Condition, domain: Domain,
          extra: set[str] = frozenset()) -> tuple[dict[str, Column], np.ndarray] | None:
    g = domain.grid(attributes_of(cond) | set(extra))
    if g is None:
        return None
    cols, n = g
    return cols, evaluate(cond, cols, n)


def _satisfiable(cond: Condition, domain: Domain) -> bool | None:
    res = _eval(cond, domain)
    return None if res is None else bool(res[1].any())


def _contradicts_derivation(cond: Condition, domain: Domain, derived: list[Derivation]) -> str | None:
    """Words for how `cond` contradicts a derivation of the engine (no subscriber can match), or None."""
    attrs = attributes_of(cond)
    for d in derived:
        read = [name for name in d.inputs if name in attrs]
        if d.output not in attrs or not read:
            continue
        res = _eval(cond, domain, set(d.inputs) | {d.output})
        if res is None:
            continue
        cols, hit = res
        if hit.any() and not (hit & d.consistent(cols)).any():
            tests = "; ".join(t.describe() for t in iter_tests(cond) if t.attribute in (d.output, *read))
            return f"its conditions ({tests}) contradict how the engine derives {d.output}: {d.words}"
    return None


def _jointly(a: Condition, b: Condition, domain: Domain) -> bool:
    g = domain.grid(attributes_of(a) | attributes_of(b))
    if g is None:
        return True  # too many combinations to tell: assume they may overlap
    cols, n = g
    return bool((evaluate(a, cols, n) & evaluate(b, cols, n)).any())


def _covers(first: Condition, later: Condition, domain: Domain) -> bool:
    """Every subscriber `later` matches is matched by `first` (False when it cannot be told)."""
    g = domain.grid(attributes_of(first) | attributes_of(later))
    if g is None:
        return False
    cols, n = g
    mine = evaluate(later, cols, n)
    return bool(evaluate(first, cols, n)[mine].all())


def _shadowing(i: int, conds: list[Condition], can_fire: list[bool], domain: Domain,
               rules: list[Rule]) -> tuple[str, list[str]] | None:
    """Why rule i never wins (it is always preceded by a matching rule) and by which rules, or None."""
    cond = conds[i]
    earlier = [j for j in range(i) if can_fire[j]]
    for j in earlier:
        g = domain.grid(attributes_of(cond) | attributes_of(conds[j]))
        if g is None:
            continue
        cols, n = g
        mine = evaluate(cond, cols, n)
        if mine.any() and evaluate(conds[j], cols, n)[mine].all():
            if rules[j].suppresses:
                return (f"every subscriber it matches is suppressed first by higher-priority rule '{rules[j].id}' "
                        f"(no_offer)"), [rules[j].id]
            return f"every subscriber it matches is also matched by higher-priority rule '{rules[j].id}'", [rules[j].id]
    if len(earlier) < 2:
        return None
    names = set(attributes_of(cond))
    for j in earlier:
        names |= attributes_of(conds[j])
    g = domain.grid(names)
    if g is None:
        return None
    cols, n = g
    mine = evaluate(cond, cols, n)
    if not mine.any():
        return None
    covered = np.zeros(n, dtype=bool)
    blockers = []
    for j in earlier:
        hit = evaluate(conds[j], cols, n) & mine & ~covered
        if hit.any():
            blockers.append(rules[j].id)
            covered |= hit
        if covered[mine].all():
            listed = ", ".join(f"'{b}'" for b in blockers)
            why = f"every subscriber it matches is matched first by one of the higher-priority rules {listed}"
            return why, blockers
    return None


def _coverage(ps: PolicySet, conds: list[Condition], can_fire: list[bool],
              domain: Domain) -> list[Finding] | None:
    """Segments no rule can cover; None when the combinations are too many to enumerate."""
    segments = set(itertools.product(RISK_GRADES, VALUE_TIERS, REASON_VALUES))
    covered: set[tuple[str, str, str]] = set()
    for i, cond in enumerate(conds):
        if not can_fire[i]:
            continue
        res = _eval(cond, domain, set(SEGMENT))
        if res is None:
            return None
        cols, hit = res
        for seg in zip(*(cols[a].values[hit] for a in SEGMENT), strict=True):
            covered.add(seg)
        if covered >= segments:
            return []
    missing = sorted(segments - covered, key=lambda s: (RISK_GRADES.index(s[0]), VALUE_TIERS.index(s[1]),
                                                        REASON_VALUES.index(s[2])))
    out = []
    grouped: dict[tuple[str, str], list[str]] = {}
    for grade, tier, reason in missing:
        grouped.setdefault((grade, tier), []).append(reason)
    last = ps.rules[-1] if ps.rules else None
    where = last.source if last is not None else (ps.files[0] if ps.files else ps.root)
    after = f" (hint: add a rule for them, e.g. after rule '{last.id}', the last in evaluation order)" if last else ""
    for (grade, tier), reasons in grouped.items():
        out.append(Finding(where, f"segment risk_grade={grade}, value_tier={tier}: no rule covers reason "
                                  f"{', '.join(reasons)}{after}", "uncovered-segment"))
    return out
