"""Policy test cases: `retain policy test`.

Test cases live next to the policies, in `tests/*.yaml` (or files named `test_*.yaml`)::

    tests:
      - name: VIP at high risk goes to the VIP team
        subscriber:            # only what matters; everything else takes the defaults below
          value_tier: high
          risk_grade: high
          reason: price
        expect:
          offer: vip_loyalty_package
          channel: vip_manager
          rule: vip-high-risk           # optional
      - name: low-risk prepaid gets no discount
        subscriber: {risk_grade: low, plan: prepaid_basic}
        expect:
          offer: care_message
      - name: nobody at all
        date: 2026-06-01       # optional decision date (offer validity), default today
        subscriber: {...}
        expect: {no_offer: true}       # or `offer: null`

`expect` may check: offer (null = no offer), no_offer, suppressed (true: a suppression rule ended the
candidates; false: it did not), note_contains (the suppression's note), channel, rule, stage, matched
(the exact list of matched rules), message_contains. A case may set attributes the policy set declares
(attributes.yaml) like any built-in.

Defaults: a test names only the attributes that matter; every other attribute takes the value of
`DEFAULT_SUBSCRIBER`, a mid-value postpaid subscriber at low risk with no churn reason (the table in
policies/README.md lists every value). Declared attributes a case does not name: false (boolean), the
first listed value or empty (categorical), 0 moved into min..max (numeric). Values follow from what the
test gives, unless it gives them too - the same derivations as the engine's (engine.model.features,
engine.model.segments) with the configured thresholds (engine.config.load_settings):
- `risk_grade` sets `churn_probability` (high 0.7, medium 0.35, low 0.1, moved into the grade's band
  when the settings cut elsewhere); `churn_probability` sets `risk_grade` by risk_grades.high/medium;
- `value_tier` sets `arpu_mean_3m` and the three monthly ARPUs (high 120, medium 60, low 25); with
  value_tiers.method thresholds, ARPUs a case gives set `value_tier`;
- the raw monthly fields set the derived signals: arpu_m0..m2 -> `arpu_mean_3m`, `arpu_change`;
  data_gb_m0/m1 -> `data_change`; voice_min_m0/m1 -> `voice_change`;
- `tenure_months` and the usage changes set `lifecycle_stage` (settings lifecycle);
- `plan` sets `is_prepaid`, and a prepaid plan has no contract (`contract_months_left` empty);
- `plan` and `age_group` set `need_group` (business, family, elderly 65+, young 18-24, general);
- a `reason` other than none sets `reason_share` to 0.6.

Cases are decided by `engine.decision.whatif.run_cases`: each alone, through `retain decide`'s decision
function; `compare_case` checks decide's row against the expectation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.data.attributes import DECISION_ATTRIBUTES, Attribute
from engine.data.schema import PREPAID_PLANS
from engine.errors import PolicyError
from engine.model.features import DERIVED
from engine.model.segments import lifecycle_stage, need_group, value_tier
from engine.policy.conditions import check_value, closest
from engine.policy.loader import LineDict, LineList, is_test_file, line_at, pydantic_problems, read_yaml
from engine.policy.model import DeclaredAttribute, PolicySet

DEFAULT_SUBSCRIBER: dict[str, Any] = {
    "subscriber_id": "TEST",
    "tenure_months": 36, "plan": "postpaid_standard", "contract_months_left": 12.0, "region": "north",
    "age_group": "35-49", "preferred_channel": "sms", "opt_out": False,
    "arpu_m0": 60.0, "arpu_m1": 60.0, "arpu_m2": 60.0, "data_gb_m0": 5.0, "data_gb_m1": 5.0,
    "voice_min_m0": 300.0, "voice_min_m1": 300.0, "out_of_package_share": 0.05, "balance": 0.0,
    "topup_count": 0, "topup_avg_amount": 0.0, "complaints_3m": 0, "satisfaction_score": 8.0,
    "service_call_minutes": 0.0, "days_inactive": 0, "competitor_contact": False,
    "arpu_mean_3m": 60.0, "arpu_change": 0.0, "data_change": 0.0, "voice_change": 0.0,
    "churn_probability": 0.1, "risk_grade": "low", "reason": "none", "reason_share": 0.0,
    "value_tier": "medium", "lifecycle_stage": "mature", "need_group": "general", "is_prepaid": False,
}
assert set(DEFAULT_SUBSCRIBER) == {*DECISION_ATTRIBUTES, "subscriber_id"}, "defaults must cover every attribute"
GRADE_PROBABILITY = {"high": 0.7, "medium": 0.35, "low": 0.1}
TIER_ARPU = {"high": 120.0, "medium": 60.0, "low": 25.0}


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offer: str | None = Field(None, description="Expected offer id; null means no offer")
    no_offer: bool = Field(False, description="true: the subscriber gets no offer")
    suppressed: bool | None = Field(None, description="true: a suppression rule (no_offer) ended the candidates")
    note_contains: str | None = Field(None, description="Text the suppression's note contains")
    channel: str | None = None
    rule: str | None = None
    stage: str | None = None
    matched: list[str] | None = Field(None, description="Exact list of matched rules, in evaluation order")
    message_contains: str | None = None


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str | None = None
    date: dt.date | None = None
    subscriber: dict[str, Any] = Field(default_factory=dict)
    expect: Expect


class CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    tests: list[Case] = Field(default_factory=list)


@dataclass
class LoadedCase:
    case: Case
    where: str
    record: dict[str, Any]
    expects_offer: bool  # True when `offer` was written (possibly null)


@dataclass
class CaseResult:
    name: str
    where: str
    passed: bool
    expected: str
    actual: str
    failures: list[str]


def case_files(policies: str | Path) -> list[Path]:
    root = Path(policies)
    base = root.parent if root.is_file() else root
    if not base.exists():
        raise PolicyError(f"policy path '{policies}' does not exist")
    files = [p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in (".yaml", ".yml")
             and is_test_file(p, base)]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def _settings(settings: Any) -> Any:
    if settings is not None:
        return settings
    from engine.config import Settings

    return Settings()


def grade_probability(grade: str, settings: Any = None) -> float:
    """A churn probability the engine grades `grade`: GRADE_PROBABILITY, moved into the grade's band."""
    rg = _settings(settings).risk_grades
    p = GRADE_PROBABILITY[grade]
    if grade == "high":
        return p if p >= rg.high else round((rg.high + 1.0) / 2, 4)
    if grade == "medium":
        return p if rg.medium <= p < rg.high else round((rg.medium + rg.high) / 2, 4)
    return p if p < rg.medium else round(rg.medium / 2, 4)


def declared_default(attr: DeclaredAttribute | Attribute) -> Any:
    """What a case gets for a declared attribute it does not name."""
    if attr.kind == "boolean":
        return False
    if attr.kind == "categorical":
        return attr.values[0] if attr.values else None
    lo, hi = getattr(attr, "minimum", None), getattr(attr, "maximum", None)
    value = 0.0
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return value


def subscriber_record(given: dict[str, Any], *, declared: dict[str, DeclaredAttribute] | None = None,
                      settings: Any = None) -> dict[str, Any]:
    """The full record of a test subscriber: defaults, then derived values, then what was given."""
    cfg = _settings(settings)
    rec = dict(DEFAULT_SUBSCRIBER)
    for name, attr in (declared or {}).items():
        rec[name] = declared_default(attr)
    g = given
    if "risk_grade" in g and "churn_probability" not in g:
        rec["churn_probability"] = grade_probability(g["risk_grade"], cfg)
    if "churn_probability" in g and "risk_grade" not in g and g["churn_probability"] is not None:
        p = float(g["churn_probability"])
        rg = cfg.risk_grades
        rec["risk_grade"] = "high" if p >= rg.high else "medium" if p >= rg.medium else "low"
    if "value_tier" in g and not {"arpu_mean_3m", "arpu_m0", "arpu_m1", "arpu_m2"} & set(g):
        for k in ("arpu_mean_3m", "arpu_m0", "arpu_m1", "arpu_m2"):
            rec[k] = TIER_ARPU[g["value_tier"]]
    if "plan" in g:
        prepaid = g["plan"] in PREPAID_PLANS
        rec["is_prepaid"] = prepaid
        if prepaid:
            rec["contract_months_left"] = None
    if ("plan" in g or "age_group" in g) and "need_group" not in g:
        plan = g.get("plan", rec["plan"])
        age = g.get("age_group", rec["age_group"])
        rec["need_group"] = str(need_group(pd.Series([plan]), pd.Series([age]))[0])
    if g.get("reason") not in (None, "none") and "reason_share" not in g:
        rec["reason_share"] = 0.6
    rec.update(g)
    _derive(rec, set(g), cfg)
    return rec


def _derive(rec: dict[str, Any], given: set[str], cfg: Any) -> None:
    """Recompute the derived signals and segments from the raw fields a case gives (never over a given value)."""
    changed: set[str] = set()
    for feat in DERIVED:
        if feat.name in given or not set(feat.inputs) & given:
            continue
        values = [rec.get(c) for c in feat.inputs]
        if any(v is None for v in values):
            continue
        row = pd.DataFrame([dict(zip(feat.inputs, (float(v) for v in values), strict=True))])
        rec[feat.name] = round(float(feat.compute(row).iloc[0]), 6)
        changed.add(feat.name)
    touched = given | changed
    if "lifecycle_stage" not in given and {"tenure_months", "data_change", "voice_change"} & touched:
        parts = [rec.get(c) for c in ("tenure_months", "data_change", "voice_change")]
        if all(v is not None for v in parts):
            rec["lifecycle_stage"] = str(lifecycle_stage(*(pd.Series([float(v)]) for v in parts), cfg.lifecycle)[0])
    if ("value_tier" not in given and cfg.value_tiers.method == "thresholds" and "arpu_mean_3m" in touched
            and rec.get("arpu_mean_3m") is not None):
        rec["value_tier"] = str(value_tier([float(rec["arpu_mean_3m"])], cfg.value_tiers)[0])


def load_cases(policies: str | Path, policy_set: PolicySet | None = None, *,
               settings: Any = None) -> list[LoadedCase]:
    """Every test case next to the policies; raises PolicyError listing every problem with file:line.

    `policy_set` (loaded from `policies` when not given) says which attributes are declared; `settings`
    (default: load_settings()) gives the thresholds of the derived values.
    """
    if policy_set is None:
        from engine.policy.loader import load_policy_set

        policy_set = load_policy_set(policies)
    if settings is None:
        from engine.config import load_settings

        settings = load_settings()
    vocabulary = policy_set.vocabulary
    root = Path(policies)
    base = root.parent if root.is_file() else root
    problems: list[str] = []
    cases: list[LoadedCase] = []
    files = case_files(policies)
    if not files:
        raise PolicyError(f"no test cases found next to '{policies}'",
                          hint=f"add YAML test cases under {base / 'tests'}/ (see `retain policy test --help`)")
    for file in files:
        display = (Path(str(policies) if root.is_dir() else str(root.parent)) / file.relative_to(base)).as_posix()
        data, errs = read_yaml(file, display)
        problems.extend(errs)
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(f"{display}:1: a test file must be a mapping with a `tests:` list")
            continue
        for key in data:
            if key not in CaseFile.model_fields:
                problems.append(f"{display}:{line_at(data, (key,), 1)}: unknown field '{key}' "
                                f"(hint: allowed top-level fields: {', '.join(CaseFile.model_fields)})")
        items = data.get("tests") or []
        if not isinstance(items, list):
            problems.append(f"{display}:{line_at(data, ('tests',), 1)}: `tests` must be a list")
            continue
        for i, raw in enumerate(items):
            line = items.item_lines[i] if isinstance(items, LineList) else 1
            name = raw.get("name") if isinstance(raw, dict) else None
            context = f"test '{name}': " if isinstance(name, str) else f"test at line {line}: "
            try:
                case = Case.model_validate(raw)
            except ValidationError as exc:
                problems.extend(pydantic_problems(exc, Case, raw, display, context, line))
                continue
            bad = _check_subscriber(raw.get("subscriber"), display, context, line, vocabulary)
            problems.extend(bad)
            if bad:
                continue
            expects_offer = isinstance(raw.get("expect"), LineDict) and "offer" in raw["expect"]
            if case.expect.no_offer and expects_offer and case.expect.offer is not None:
                problems.append(f"{display}:{line}: {context}expect has both no_offer: true and offer "
                                f"'{case.expect.offer}'")
                continue
            if case.expect.suppressed and expects_offer and case.expect.offer is not None:
                problems.append(f"{display}:{line}: {context}expect has both suppressed: true and offer "
                                f"'{case.expect.offer}'")
                continue
            if not (expects_offer or case.expect.model_fields_set - {"offer"}):
                problems.append(f"{display}:{line}: {context}expect checks nothing (hint: give offer, no_offer, "
                                f"suppressed, note_contains, channel, rule, stage, matched or message_contains)")
                continue
            record = subscriber_record(case.subscriber, declared=policy_set.declared, settings=settings)
            cases.append(LoadedCase(case, f"{display}:{line}", record, expects_offer))
    if problems:
        more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PolicyError(problems[0] + more, problems=problems)
    if not cases:
        raise PolicyError(f"no test cases found next to '{policies}'",
                          hint="a test file holds a `tests:` list of name / subscriber / expect")
    return cases


def _check_subscriber(raw: Any, display: str, context: str, line: int,
                      vocabulary: dict[str, Attribute] = DECISION_ATTRIBUTES) -> list[str]:
    if raw is None:
        return []
    out = []
    for key, value in raw.items():
        kline = raw.key_lines.get(key, line) if isinstance(raw, LineDict) else line
        if key == "subscriber_id":
            continue
        attr = vocabulary.get(key)
        if attr is None:
            near = closest(str(key), list(vocabulary), n=1)
            maybe = f"did you mean '{near[0]}'? " if near else ""
            out.append(f"{display}:{kline}: {context}unknown attribute '{key}' (hint: {maybe}see "
                       f"`retain data schema`, the engine outputs and the policy set's attributes.yaml)")
            continue
        if value is None:
            if attr.kind == "boolean":
                out.append(f"{display}:{kline}: {context}{key} cannot be empty (true or false)")
            continue
        problem = check_value(attr, value)
        if problem:
            out.append(f"{display}:{kline}: {context}{problem}")
    return out



def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def suppression_of(got: dict[str, Any], policy_set: PolicySet | None) -> tuple[bool, str | None]:
    """Whether a decision row says the subscriber was suppressed, and the note.

    Read from a `status` of 'suppressed' or a true `suppressed` column when the engine gives them, else from
    the winning rule being a suppression rule of the policy set.
    """
    rule = None
    if policy_set is not None and got.get("rule_id"):
        rule = next((r for r in policy_set.rules if r.id == got["rule_id"]), None)
    flagged = got.get("status") == "suppressed" or bool(got.get("suppressed"))
    by_rule = rule is not None and rule.suppresses and not got.get("offer_id")
    note = got.get("note") or got.get("suppression_note") or (rule.action.note if rule is not None else None)
    return flagged or by_rule, (note if flagged or by_rule else None)


def compare_case(lc: LoadedCase, got: dict[str, Any], policy_set: PolicySet | None = None) -> CaseResult:
    """A case's expectation against decide's row for its subscriber (`got`: column -> plain value)."""
    e = lc.case.expect
    failures, expected = [], []
    suppressed, note = suppression_of(got, policy_set)
    if lc.expects_offer or e.no_offer:
        want = None if (e.no_offer or e.offer is None) else e.offer
        expected.append(f"offer {want or '(none)'}")
        if got.get("offer_id") != want:
            failures.append(f"offer: expected {want or '(none)'}, got {got.get('offer_id') or '(none)'}")
    if e.suppressed is not None:
        expected.append("suppressed" if e.suppressed else "not suppressed")
        if suppressed != e.suppressed:
            failures.append(f"suppressed: expected {'yes' if e.suppressed else 'no'}, got "
                            f"{'yes (rule ' + str(got.get('rule_id')) + ')' if suppressed else 'no'}")
    if e.note_contains is not None:
        expected.append(f"note contains '{e.note_contains}'")
        if e.note_contains not in (note or ""):
            failures.append(f"note: '{e.note_contains}' not in '{note or ''}'")
    for key, col in (("channel", "channel"), ("rule", "rule_id"), ("stage", "stage")):
        want = getattr(e, key)
        if want is not None:
            expected.append(f"{key} {want}")
            if got.get(col) != want:
                failures.append(f"{key}: expected {want}, got {got.get(col) or '(none)'}")
    if e.matched is not None:
        want = ",".join(e.matched)
        expected.append(f"matched [{want}]")
        if got.get("matched_rules") != want:
            failures.append(f"matched: expected [{want}], got [{got.get('matched_rules')}]")
    if e.message_contains is not None:
        expected.append(f"message contains '{e.message_contains}'")
        if e.message_contains not in (got.get("message") or ""):
            failures.append(f"message: '{e.message_contains}' not in '{got.get('message') or ''}'")
    rule = got.get("rule_id") or "-"
    status = got.get("status")
    if suppressed:
        actual = f"suppressed{': ' + note if note else ''} (rule {rule})"
    else:
        actual = f"offer {got.get('offer_id') or '(none)'} via {got.get('channel') or '-'} (rule {rule})"
        if status and status not in ("offer", "suppressed"):
            actual += f", status {status}" + (" (held out, would be sent)" if status == "control" else "")
    return CaseResult(lc.case.name, lc.where, not failures, "; ".join(expected), actual, failures)
