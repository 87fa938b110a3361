"""The words every stage of the loop shares: grades, tiers, reasons, channels, statuses, yes/no.

Why one small module at the bottom of the tree: the simulator writes these values, the model produces
them, policies test them, decisions and work orders carry them, reports count them. Each is spelled
once, here, and everything else imports it, so a new channel or reason is one edit.
"""

from __future__ import annotations

RISK_GRADES = ("high", "medium", "low")
VALUE_TIERS = ("high", "medium", "low")
LIFECYCLE_STAGES = ("new", "growth", "mature", "decline")
NEED_GROUPS = ("young", "family", "elderly", "business", "general")
#: Policy stages, in the order a subscriber's life goes through them.
STAGES = ("preventive", "intervention", "win-back")

#: Churn reason families (DOMAIN.md), and the value for "nothing actionable pushes churn up".
REASONS = ("price", "network", "usage_decline", "competitor", "balance", "contract_end")
NO_REASON = "none"
REASON_VALUES = (*REASONS, NO_REASON)

#: Contact channels, with what a work order on each one means.
CHANNELS: dict[str, str] = {
    "vip_manager": "dedicated VIP account manager calls the subscriber",
    "outbound_call": "outbound call by a retention agent",
    "voice_bot": "automated voice call",
    "sms": "SMS with the rendered offer message",
    "app_popup": "in-app pop-up shown at next app session",
    "front_desk": "prompt shown to a front-desk clerk when the subscriber visits",
}
#: Channels that reach out to the subscriber (blocked by opt-out); the rest are inbound.
OUTBOUND_CHANNELS = frozenset({"vip_manager", "outbound_call", "voice_bot", "sms"})
#: Channels a person calls on; their work orders carry a call window outside the quiet hours.
CALL_CHANNELS = frozenset({"vip_manager", "outbound_call", "voice_bot"})
#: The subscriber's `preferred_channel` values, mapped to contact channels.
PREFERRED_TO_CHANNEL = {"sms": "sms", "app": "app_popup", "call": "outbound_call", "store": "front_desk"}

#: A decision's status: what happened to the subscriber in this run.
STATUS_OFFER = "offer"  # an offer is sent on a channel (a work order)
STATUS_CONTROL = "control"  # would have been sent, held back to measure uplift
STATUS_NONE = "no_offer"  # no rule matched
STATUS_SUPPRESSED = "suppressed"  # the first matching rule is a suppression (no_offer: true): nothing is sent
STATUS_BLOCKED = "blocked"  # contact rules removed every candidate (see blocked_reason)
STATUS_NOT_WORTH = "not_worth_it"  # arbitration best_value: no candidate has a positive expected net value
STATUS_OVER_BUDGET = "over_budget"
STATUS_OVER_CAPACITY = "over_capacity"
STATUS_EXPLORED_NONE = "explored_none"  # exploration drew "no contact" for a subscriber who had candidates
STATUSES = (STATUS_OFFER, STATUS_CONTROL, STATUS_NONE, STATUS_SUPPRESSED, STATUS_BLOCKED, STATUS_NOT_WORTH,
            STATUS_OVER_BUDGET, STATUS_OVER_CAPACITY, STATUS_EXPLORED_NONE)

#: The spellings of yes and no accepted in any input column that holds a flag (any case).
TRUE_WORDS = frozenset({"yes", "y", "true", "t", "1", "1.0"})
FALSE_WORDS = frozenset({"no", "n", "false", "f", "0", "0.0"})
