"""Why a subscriber got (or did not get) each rule: `retain policy explain`.

For one subscriber, every rule in evaluation order with its verdict: the winner, a matched fallback,
matched but cut off by an earlier `stop` rule, or not matched - and then the first condition that
failed, in words (`tenure_months >= 12 (is 7)`), or why the offer was not eligible. The match itself
comes from durable-rules (the same path as decisions); the words come from evaluating the condition
tree in Python, and any disagreement between the two is reported instead of hidden.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from engine.errors import DataError
from engine.policy.conditions import evaluate, first_failure, prepare_column
from engine.policy.evaluate import PolicyEngine

WINNER = "winner"
FALLBACK = "matched (fallback)"
CUT = "matched, cut by stop"
NO_MATCH = "no match"
NOT_ELIGIBLE = "offer not eligible"
NOT_VALID = "offer not valid on date"
MISMATCH = "engine disagreement"


@dataclass(frozen=True)
class RuleVerdict:
    position: int
    rule_id: str
    priority: int
    stage: str
    offer_id: str
    status: str
    detail: str = ""


@dataclass
class Explanation:
    subscriber_id: str
    decision: dict[str, Any]
    verdicts: list[RuleVerdict]
    decided_on: dt.date
    policy_hash: str
    recorded: dict[str, Any] = field(default_factory=dict)  # what the input table says was decided

    @property
    def winner(self) -> str | None:
        return self.decision.get("rule_id")


def find_subscriber(frame: pd.DataFrame, subscriber_id: str, *, source: str = "input") -> dict[str, Any]:
    if "subscriber_id" not in frame.columns:
        raise DataError(f"{source}: no 'subscriber_id' column", hint="explain reads a decisions table with ids")
    hit = frame[frame["subscriber_id"].astype(str) == str(subscriber_id)]
    if hit.empty:
        examples = ", ".join(frame["subscriber_id"].astype(str).head(3))
        raise DataError(f"{source}: subscriber '{subscriber_id}' not found", hint=f"ids look like {examples}")
    return hit.iloc[0].to_dict()


def explain(engine: PolicyEngine, record: dict[str, Any], on: dt.date | None = None) -> Explanation:
    ps = engine.policy_set
    day = on or engine.decision_date or dt.date.today()
    frame = pd.DataFrame([record])
    engine.check_columns(frame)
    decision = engine.decide_one(record, day)
    ev = engine.evaluate(frame, day, per_row=True)
    matched, considered = set(ev.matched[0]), ev.considered[0]
    winner = considered[0] if considered else None
    cut_by = next((ps.rules[p].id for p in considered if ps.rules[p].stop), None)
    cols = {a: prepare_column(a, frame[a]) for a in ps.attributes}
    verdicts = []
    for p, rule in enumerate(ps.rules):
        offer = ps.offers[rule.offer]
        cond_ok = bool(evaluate(rule.conditions, cols, 1)[0])
        elig_ok = bool(evaluate(offer.eligibility, cols, 1)[0])
        valid = offer.valid_on(day)
        in_engine = p in matched
        detail = ""
        if in_engine != (cond_ok and elig_ok and valid):
            status = MISMATCH
            detail = f"durable-rules says {'match' if in_engine else 'no match'}, the condition tree disagrees"
        elif p == winner:
            status = WINNER
        elif in_engine and p in considered:
            status = FALLBACK
        elif in_engine:
            status, detail = CUT, f"after rule '{cut_by}' (stop: true)"
        elif not cond_ok:
            status, detail = NO_MATCH, first_failure(rule.conditions, cols) or ""
        elif not elig_ok:
            status, detail = NOT_ELIGIBLE, f"'{offer.id}': {first_failure(offer.eligibility, cols) or ''}"
        else:
            status, detail = NOT_VALID, f"'{offer.id}' is valid {offer.validity()}, decision date {day}"
        verdicts.append(RuleVerdict(p + 1, rule.id, rule.priority, rule.stage, rule.offer, status, detail))
    recorded = {k: record.get(k) for k in ("offer_id", "rule_id", "channel", "status", "policy_hash")
                if k in record}
    return Explanation(str(record.get("subscriber_id", "")), decision, verdicts, day, ps.content_hash, recorded)
