"""Why a subscriber got (or did not get) each rule: `retain policy explain`.

For one subscriber, every rule in evaluation order with its verdict and what the rule says:

* the **winner**; a matched **candidate** after it (a fallback for budget and capacity, or a rival in
  `arbitration: best_value`); matched but **cut** by an earlier `stop: true` rule or by an earlier
  **suppression**; a **suppression** that ends the subscriber's candidates (status `suppressed`, with
  its note);
* not matched: the first condition that failed, in words (`tenure_months >= 12 (is 7)`); the offer not
  eligible (and which eligibility test failed); the offer or the **rule** itself outside its dates on the
  decision date.

Each verdict also shows the rule's channel with the channels it excludes (`preferred, not sms`) and its
validity dates. The verdicts come from the condition tree (the reference semantics of the policy
language); when a compiled engine is given, its match (durable-rules, the path decisions take) is
compared rule by rule and any disagreement is reported instead of hidden.

Then the **arbitration step** as `retain decide` takes it (`engine.decision.whatif.explain` runs the same
decision function, on the whole input table when given, so budget and capacity are those of the run): per
candidate its acceptance (the rate used, the offer's prior, the learned rate when there is one), expected
saved value, cost (offer plus channel) and net value, whether contact rules allow its channel; the
decision's status; and why the winner won or why nothing was sent (suppressed, opted out, contact limit,
control group, budget, capacity, not worth it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DataError
from engine.policy.conditions import evaluate, first_failure, prepare_column
from engine.policy.model import PREFERRED, PolicySet, Rule

WINNER = "winner"
FALLBACK = "matched (fallback)"
CANDIDATE = "candidate"
SUPPRESSES = "suppresses"
CUT = "matched, cut by stop"
CUT_SUPPRESSED = "matched, cut by suppression"
NO_MATCH = "no match"
NOT_ELIGIBLE = "offer not eligible"
NOT_VALID = "offer not valid on date"
RULE_NOT_VALID = "rule not valid on date"
MISMATCH = "engine disagreement"
NO_OFFER = "(no offer)"


@dataclass(frozen=True)
class RuleVerdict:
    position: int
    rule_id: str
    priority: int
    stage: str
    offer_id: str  # NO_OFFER for a suppression
    status: str
    detail: str = ""
    channel: str = ""  # the rule's channel and exclusions, e.g. "preferred, not sms"
    dates: str = "always"  # the rule's own validity
    suppresses: bool = False


@dataclass
class Explanation:
    subscriber_id: str
    decision: dict[str, Any]
    verdicts: list[RuleVerdict]
    decided_on: dt.date
    policy_hash: str
    recorded: dict[str, Any] = field(default_factory=dict)  # what the input table says was decided
    arbitration: str = "first"
    suppressed_by: str | None = None  # the suppression rule that ended the candidates
    note: str | None = None  # its note
    candidates: list[dict[str, Any]] = field(default_factory=list)  # the arbitration step (with an engine)
    status: str | None = None  # decide's status for the subscriber
    why: str = ""  # why the winner won, or why nothing was sent

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


def channel_words(rule: Rule) -> str:
    if rule.suppresses:
        return ""
    ex = rule.action.exclude_channels
    return rule.action.channel + (f", not {', '.join(ex)}" if ex else "")



def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def arbitration_lines(cands: pd.DataFrame, decision: dict[str, Any], mode: str,
                       blocked: str = "") -> list[dict[str, Any]]:
    """One line per candidate of the subscriber (the Assessment's candidates frame): acceptance (used, prior,
    learned), expected value, cost, net value and what happened to it in the run."""
    out = []
    sent_rule = decision.get("rule_id") if decision.get("status") in ("offer", "control") else None
    for _, c in cands.iterrows():
        learned = _plain(c["p_learned"])
        if not c["contactable"]:
            outcome = f"channel blocked ({blocked or 'contact rules'})"
        elif str(c["rule_id"]) == sent_rule:
            outcome = "sent" if decision.get("status") == "offer" else "chosen, held out (control group)"
        elif mode == "best_value" and c["net_value"] <= 0:
            outcome = "not worth it (net value not above zero)"
        else:
            outcome = "not chosen"
        out.append({
            "rank": int(c["rank"]) + 1, "rule_id": str(c["rule_id"]), "offer_id": str(c["offer_id"]),
            "channel": str(c["channel"]), "priority": int(c["priority"]),
            "p_accept": round(float(c["p_accept"]), 4), "p_prior": round(float(c["p_prior"]), 4),
            "p_learned": None if learned is None else round(float(learned), 4),
            "expected_value": round(float(c["expected_saved_value"]), 2),
            "cost": round(float(c["total_cost"]), 2), "net_value": round(float(c["net_value"]), 2),
            "outcome": outcome,
        })
    return out


def why_text(ex: Explanation, decision: dict[str, Any], settings: Any) -> str:
    """Why the winner won, or why nothing was sent, from decide's row and the arbitration lines."""
    status = decision.get("status")
    lines = ex.candidates
    mode = ex.arbitration
    if status == "suppressed":
        note = f" ({decision['note']})" if decision.get("note") else ""
        return f"suppressed: rule '{decision['rule_id']}' is the first matching rule{note} - no offer"
    if status == "no_offer":
        return "no offer: no rule matches this subscriber on the decision date"
    if status == "blocked":
        return f"no offer: every candidate is on an outbound channel, and {decision.get('blocked_reason')}"
    if status == "not_worth_it":
        return "no offer: no candidate has an expected net value above zero (arbitration best_value)"
    if status == "over_budget":
        return ("no offer: the run's budget was spent before this subscriber's turn (offers are funded in order "
                "of expected net value per unit of cost), and no cheaper candidate fits what is left")
    if status == "over_capacity":
        return ("no offer: the channel of every remaining candidate is full (channel capacity; subscribers are "
                "served in order of expected net value per unit of cost)")
    chosen = next((c for c in lines if c["rule_id"] == decision.get("rule_id")), None)
    if chosen is None:
        return ""
    ahead = [c for c in lines if c["rank"] < chosen["rank"]]
    if mode == "first":
        reason = ("it is the highest-priority candidate (arbitration first: sent whatever its expected net "
                  "value)" if not ahead else "the candidates ranked above it could not be sent: " + "; ".join(
                      f"{c['rule_id']}: {c['outcome'] if c['outcome'] != 'not chosen' else 'channel full or budget'}"
                      for c in ahead))
    else:
        reason = ("it has the highest expected net value among the candidates (arbitration best_value)"
                  if all(c["net_value"] <= chosen["net_value"] or c["outcome"] != "not chosen" for c in lines)
                  else "candidates of higher value could not be sent (channel full or budget)")
    text = f"winner: rule '{chosen['rule_id']}' -> {chosen['offer_id']} via {chosen['channel']}: {reason}"
    if status == "control":
        share = getattr(getattr(settings, "control_group", None), "share", None)
        held = f" ({share:.0%} of subscribers)" if isinstance(share, float) else ""
        text += f"; held out in the control group{held}: recorded, not sent"
    return text


def explain_record(policy_set: PolicySet, record: dict[str, Any], on: dt.date | None = None, *,
                   engine: Any = None, decision: dict[str, Any] | None = None) -> Explanation:
    """Every rule's verdict for one subscriber record; with `engine`, a cross-check of the match; `decision`:
    what decide's function decided for the record (see `explain`), else the policy's choice on the tree."""
    ps = policy_set
    day = on or dt.date.today()
    frame = pd.DataFrame([record])
    if engine is not None:
        engine.check_columns(frame)
    else:
        ps.require_declared(frame.columns)
        missing = sorted(ps.required_columns - set(frame.columns))
        if missing:
            raise DataError(f"the policy set needs column(s) {missing}, which the table does not have")
    vocab = ps.vocabulary
    cols = {a: prepare_column(a, frame[a], vocab.get(a)) for a in ps.attributes}

    # 1. what each rule says for this subscriber, on the condition tree
    checks = []
    for rule in ps.rules:
        offer = ps.offers.get(rule.offer) if rule.offer is not None else None
        checks.append({
            "rule_valid": rule.valid_on(day),
            "cond": bool(evaluate(rule.conditions, cols, 1)[0]),
            "elig": True if offer is None else bool(evaluate(offer.eligibility, cols, 1)[0]),
            "offer_valid": True if offer is None else offer.valid_on(day),
        })
    matches = [c["rule_valid"] and c["cond"] and c["elig"] and c["offer_valid"] for c in checks]

    # 2. candidates in evaluation order, ended by the first stop or suppression
    considered: list[int] = []
    ended_by: int | None = None
    for p, rule in enumerate(ps.rules):
        if not matches[p]:
            continue
        considered.append(p)
        if rule.stop or rule.suppresses:
            ended_by = p
            break
    suppressor = ended_by if ended_by is not None and ps.rules[ended_by].suppresses else None
    offers_considered = [p for p in considered if not ps.rules[p].suppresses]

    # 3. the engine's match and decision, when there is an engine
    in_engine: set[int] | None = None
    if engine is not None:
        ev = engine.evaluate(frame, day, per_row=True)
        in_engine = set(ev.matched[0])
    if decision is None:
        decision = _tree_decision(ps, record, considered, suppressor, day)
        winner_id = decision.get("rule_id")
        if winner_id is None and suppressor is None and offers_considered and ps.arbitration == "first":
            winner_id = ps.rules[offers_considered[0]].id
    else:  # decide's: the rule whose offer was sent (or held out for control)
        winner_id = decision.get("rule_id") if decision.get("status") in ("offer", "control") else None

    verdicts = []
    for p, rule in enumerate(ps.rules):
        c = checks[p]
        offer_id = rule.offer if rule.offer is not None else NO_OFFER
        detail = ""
        if in_engine is not None and (p in in_engine) != matches[p]:
            status = MISMATCH
            detail = f"durable-rules says {'match' if p in in_engine else 'no match'}, the condition tree disagrees"
        elif matches[p] and p == suppressor:
            status = SUPPRESSES
            detail = f"no offer from this rule or any after it{': ' + rule.action.note if rule.action.note else ''}"
        elif matches[p] and rule.id == winner_id:
            status = WINNER
        elif matches[p] and p in considered:
            status = FALLBACK if ps.arbitration == "first" else CANDIDATE
        elif matches[p]:
            cut = ps.rules[ended_by] if ended_by is not None else None
            if cut is not None and cut.suppresses:
                status, detail = CUT_SUPPRESSED, f"after suppression rule '{cut.id}'"
            else:
                status, detail = CUT, f"after rule '{cut.id if cut else '?'}' (stop: true)"
        elif not c["rule_valid"]:
            status, detail = RULE_NOT_VALID, f"the rule is valid {rule.validity()}, decision date {day}"
        elif not c["cond"]:
            status, detail = NO_MATCH, first_failure(rule.conditions, cols) or ""
        elif not c["elig"]:
            offer = ps.offers[rule.offer]
            status, detail = NOT_ELIGIBLE, f"'{offer.id}': {first_failure(offer.eligibility, cols) or ''}"
        else:
            offer = ps.offers[rule.offer]
            status, detail = NOT_VALID, f"'{offer.id}' is valid {offer.validity()}, decision date {day}"
        verdicts.append(RuleVerdict(p + 1, rule.id, rule.priority, rule.stage, offer_id, status, detail,
                                    channel_words(rule), rule.validity(), rule.suppresses))
    recorded = {k: record.get(k) for k in ("offer_id", "rule_id", "channel", "status", "policy_hash")
                if k in record}
    note = ps.rules[suppressor].action.note if suppressor is not None else None
    return Explanation(str(record.get("subscriber_id", "")), decision, verdicts, day, ps.content_hash, recorded,
                       ps.arbitration, ps.rules[suppressor].id if suppressor is not None else None, note)


def _tree_decision(ps: PolicySet, record: dict[str, Any], considered: list[int], suppressor: int | None,
                   day: dt.date) -> dict[str, Any]:
    """The policy's choice on the condition tree (arbitration `first`; best_value needs the decision engine)."""
    if suppressor is not None and considered and considered[0] == suppressor:
        rule = ps.rules[suppressor]
        return {"offer_id": None, "channel": None, "rule_id": rule.id, "stage": rule.stage,
                "priority": rule.priority, "status": "suppressed", "note": rule.action.note, "message": None}
    offers = [p for p in considered if not ps.rules[p].suppresses]
    if not offers or ps.arbitration != "first":
        return {}
    rule = ps.rules[offers[0]]
    offer = ps.offers[rule.offer]
    allowed = [ch for ch in offer.channels if ch not in rule.action.exclude_channels]
    channel = rule.action.channel
    if channel == PREFERRED:
        from engine.vocabulary import PREFERRED_TO_CHANNEL

        mapped = PREFERRED_TO_CHANNEL.get(record.get("preferred_channel"))
        channel = mapped if mapped in allowed else (allowed[0] if allowed else None)
    message = offer.description
    if rule.action.message:
        import numpy as np

        from engine.policy.evaluate import render

        message = str(render(rule.action.message, pd.DataFrame([record]), np.array([0]))[0])
    return {"offer_id": offer.id, "channel": channel, "rule_id": rule.id, "stage": rule.stage,
            "priority": rule.priority, "status": "offer", "message": message}
