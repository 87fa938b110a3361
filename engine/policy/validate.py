"""Static checks of a loaded policy set: the warnings of `retain policy validate`.

Errors (the set cannot be used) are raised while loading. Warnings point at rules that are legal
but probably not what the author meant:

* a rule that can never fire (its conditions contradict each other or its offer's eligibility, or its
  offer is outside its validity dates on the check date);
* a rule that never wins, because every subscriber it matches is matched first by a higher-priority
  rule (by one rule, or - when the combinations are few enough to enumerate - by several together);
* rules with the same priority and different offers that can match the same subscriber (file order
  decides between them);
* offers no rule uses;
* segments (risk_grade x value_tier x reason) that no rule can cover.

How: every test in the set splits an attribute's values into a few classes (below, at, between and
above the thresholds it uses; the mentioned categorical levels and "any other"; missing where the
schema allows it). Enumerating one value per class for the attributes two rules read decides exactly
whether the rules can match together. Attributes are treated as independent (a prepaid plan with
`is_prepaid: false` is enumerated too), so "never fires" and "never wins" are certain, while an
uncovered segment may in rare cases be a combination real data never shows.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

import numpy as np

from engine.data.attributes import DECISION_ATTRIBUTES
from engine.data.schema import SUBSCRIBER_COLUMNS
from engine.policy.conditions import Column, Condition, attributes_of, evaluate, iter_tests
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


@dataclass(frozen=True)
class Finding:
    """One warning: where (file:line), what, and which check found it."""

    where: str
    message: str
    check: str

    def __str__(self) -> str:
        return f"{self.where}: warning: {self.message}"


class Domain:
    """One representative value per class of every attribute the policy set reads."""

    def __init__(self, policy_set: PolicySet) -> None:
        used: dict[str, set] = {}
        conds = [r.conditions for r in policy_set.rules] + [o.eligibility for o in policy_set.offers.values()]
        for cond in conds:
            for t in iter_tests(cond):
                if t.op == "missing":
                    used.setdefault(t.attribute, set())
                    continue
                used.setdefault(t.attribute, set()).update(t.value if t.op in ("in", "not_in") else (t.value,))
        self.values: dict[str, list] = {}
        for name in sorted(set(used) | set(SEGMENT)):
            self.values[name] = _representatives(name, used.get(name, set()))

    def grid(self, names: set[str]) -> tuple[dict[str, Column], int] | None:
        """Every combination of representatives of `names`, or None when there are more than MAX_GRID."""
        ordered = sorted(names)
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
            kind = DECISION_ATTRIBUTES[name].kind
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


def _representatives(name: str, used: set) -> list:
    attr = DECISION_ATTRIBUTES[name]
    if attr.kind == "boolean":
        return [False, True]
    if attr.kind == "categorical":
        if attr.values:
            return list(attr.values)
        return sorted(str(v) for v in used) + [OTHER]
    col = _SCHEMA.get(name)
    lo, hi = _BOUNDS.get(name, (col.min, col.max) if col is not None and col.min is not None else (-1e12, 1e12))
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


def check_policy_set(policy_set: PolicySet, *, today: dt.date | None = None) -> list[Finding]:
    """Every warning for a loaded policy set, in rule order."""
    today = today or dt.date.today()
    ps = policy_set
    domain = Domain(ps)
    findings: list[Finding] = []
    conds = [ps.matching_condition(r) for r in ps.rules]
    can_fire = [True] * len(ps.rules)

    # offers: unused, outside validity dates
    used_offers = {r.offer for r in ps.rules}
    for offer in ps.offers.values():
        if offer.id not in used_offers:
            findings.append(Finding(offer.source, f"offer '{offer.id}' is not used by any rule", "unused-offer"))
    for i, rule in enumerate(ps.rules):
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
            if alone is False:
                why = "its conditions contradict each other"
            else:
                elig = ps.offers[rule.offer].eligibility.describe()
                why = f"offer '{rule.offer}' is never eligible for the subscribers it targets (eligibility: {elig})"
            findings.append(Finding(_where(rule), f"rule '{rule.id}' can never fire: {why}", "never-fires"))

    # never wins (shadowed) and same-priority overlaps
    for i, rule in enumerate(ps.rules):
        if not can_fire[i]:
            continue
        shadow = _shadowing(i, conds, can_fire, domain, [r.id for r in ps.rules])
        if shadow:
            findings.append(Finding(_where(rule), f"rule '{rule.id}' never wins: {shadow}", "shadowed"))
        for j in range(i):
            other = ps.rules[j]
            if (other.priority == rule.priority and other.offer != rule.offer and can_fire[j]
                    and _jointly(conds[i], conds[j], domain)):
                findings.append(Finding(_where(rule), f"rule '{rule.id}' overlaps rule '{other.id}' at the same "
                                                      f"priority {rule.priority} with a different offer "
                                                      f"('{rule.offer}' vs '{other.offer}'): where both match, "
                                                      f"'{other.id}' wins because it comes first in file order",
                                        "overlap"))

    findings.extend(_coverage(ps, conds, can_fire, domain))
    return sorted(findings, key=_order)


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


def _jointly(a: Condition, b: Condition, domain: Domain) -> bool:
    g = domain.grid(attributes_of(a) | attributes_of(b))
    if g is None:
        return True  # too many combinations to tell: assume they may overlap
    cols, n = g
    return bool((evaluate(a, cols, n) & evaluate(b, cols, n)).any())


def _shadowing(i: int, conds: list[Condition], can_fire: list[bool], domain: Domain,
               ids: list[str]) -> str | None:
    """Why rule i never wins (it is always preceded by a matching rule), or None."""
    cond = conds[i]
    earlier = [j for j in range(i) if can_fire[j]]
    for j in earlier:
        g = domain.grid(attributes_of(cond) | attributes_of(conds[j]))
        if g is None:
            continue
        cols, n = g
        mine = evaluate(cond, cols, n)
        if mine.any() and evaluate(conds[j], cols, n)[mine].all():
            return f"every subscriber it matches is also matched by higher-priority rule '{ids[j]}'"
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
            blockers.append(ids[j])
            covered |= hit
        if covered[mine].all():
            listed = ", ".join(f"'{b}'" for b in blockers)
            return f"every subscriber it matches is matched first by one of the higher-priority rules {listed}"
    return None


def _coverage(ps: PolicySet, conds: list[Condition], can_fire: list[bool], domain: Domain) -> list[Finding]:
    segments = set(itertools.product(RISK_GRADES, VALUE_TIERS, REASON_VALUES))
    covered: set[tuple[str, str, str]] = set()
    for i, cond in enumerate(conds):
        if not can_fire[i]:
            continue
        res = _eval(cond, domain, set(SEGMENT))
        if res is None:
            return []  # cannot enumerate: say nothing rather than something wrong
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
    where = ps.files[0] if ps.files else ps.root
    for (grade, tier), reasons in grouped.items():
        out.append(Finding(where, f"segment risk_grade={grade}, value_tier={tier}: no rule covers reason "
                                  f"{', '.join(reasons)}", "uncovered-segment"))
    return out
