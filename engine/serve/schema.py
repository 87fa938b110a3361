"""Request and response bodies of `POST /v1/decisions`, generated from the one subscriber schema.

Why generated: the HTTP contract must not drift from `engine.data.schema`. Each request row becomes a
pydantic model built from `SUBSCRIBER_COLUMNS` (type, range, allowed levels, description), so a bad row
is refused with 422 naming `subscribers[i].field` before it costs a decision, and `/docs` shows every
field with its meaning. `validate_subscribers` (pandera) still validates inside the decide function:
this layer is a projection of the same declaration, never a second set of rules.
Extra keys are kept: they are the policies' declared custom attributes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from engine.data.schema import SUBSCRIBER_COLUMNS, Column

MAX_ROWS = 1000

EXAMPLE_SUBSCRIBER: dict[str, Any] = {
    "subscriber_id": "S0000042", "tenure_months": 30, "plan": "postpaid_standard", "contract_months_left": 2.0,
    "region": "north", "age_group": "25-34", "preferred_channel": "sms", "opt_out": False,
    "arpu_m0": 61.5, "arpu_m1": 68.0, "arpu_m2": 72.4, "data_gb_m0": 4.1, "data_gb_m1": 7.9,
    "voice_min_m0": 180.0, "voice_min_m1": 240.0, "out_of_package_share": 0.22, "balance": 0.0,
    "topup_count": 0, "topup_avg_amount": 0.0, "complaints_3m": 2, "satisfaction_score": 5.0,
    "service_call_minutes": 35.0, "days_inactive": 0, "competitor_contact": True,
}

_PY_TYPES: dict[str, Any] = {"id": str, "numeric": float, "integer": int, "categorical": str, "boolean": bool}


def _field(col: Column) -> tuple[Any, Any]:
    kind = Literal[col.allowed] if col.allowed else _PY_TYPES[col.kind]  # type: ignore[valid-type]
    bounds: dict[str, Any] = {}
    if col.min is not None:
        bounds["ge"] = col.min
    if col.max is not None:
        bounds["le"] = col.max
    if col.kind == "id":
        bounds.update(min_length=1, max_length=64)
    if col.nullable:
        return kind | None, Field(None, description=col.description, **bounds)
    return kind, Field(..., description=col.description, **bounds)


SubscriberRow: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "SubscriberRow",
    __config__=ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE_SUBSCRIBER]}),
    __doc__="One subscriber (the schema of `retain data schema`), plus any attribute the policies declare.",
    **{c.name: _field(c) for c in SUBSCRIBER_COLUMNS},
)


class DecisionRequest(BaseModel):
    """1 to 1,000 subscribers to decide for, each once (subscriber ids are unique within a request)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"subscribers": [EXAMPLE_SUBSCRIBER]}]})

    subscribers: list[SubscriberRow] = Field(..., min_length=1, max_length=MAX_ROWS)  # type: ignore[valid-type]


class Decision(BaseModel):
    """What was decided for one subscriber, and what it was decided with."""

    subscriber_id: str
    churn_probability: float = Field(description="Model's churn probability, 0-1")
    risk_grade: str = Field(description="high / medium / low, by the configured probability thresholds")
    reason: str = Field(description="Main churn reason from the model's attributions ('none' for low risk)")
    value_tier: str
    offer_id: str | None = Field(description="Offer to make (also set for 'control': the offer held back)")
    channel: str | None
    message: str | None
    status: str = Field(description="offer, control, no_offer, suppressed, blocked, not_worth_it, over_budget, "
                                    "over_capacity")
    blocked_reason: str = Field("", description="Why contact was not allowed (status 'blocked')")
    rule_id: str | None = Field(description="Policy rule behind the chosen offer")
    matched_rules: list[str] = Field(description="Every rule that matched, best first")
    model_version: str | None
    policy_hash: str
    decision_id: str = Field(description="'<decision_run>/<subscriber_id>': the key outcomes are ingested with")
    decision_run: str
    order_id: str | None = Field(description="Work order id when a contact was ordered (status 'offer')")


class DecisionResponse(BaseModel):
    decisions: list[Decision]


EXAMPLE_RESPONSE: dict[str, Any] = {"decisions": [{
    "subscriber_id": "S0000042", "churn_probability": 0.6312, "risk_grade": "high", "reason": "network",
    "value_tier": "medium", "offer_id": "compensation_credit", "channel": "sms",
    "message": "We are sorry about the trouble: a credit is on your next bill", "status": "offer",
    "blocked_reason": "", "rule_id": "network-credit", "matched_rules": ["network-credit", "care-message"],
    "model_version": "3", "policy_hash": "9f1c2e...", "decision_id": "20261124T101500-srv-1a2b3c4d5e6f/S0000042",
    "decision_run": "20261124T101500-srv-1a2b3c4d5e6f", "order_id": "20261124T101500-srv-1a2b3c4d5e6f-0000001",
}]}


def openapi_components() -> dict[str, Any]:
    """The request and response bodies' JSON schemas, for `/openapi.json`'s components."""
    out: dict[str, Any] = {}
    for model, mode in ((DecisionRequest, "validation"), (DecisionResponse, "serialization")):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _body(name: str, example: Any) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}, "example": example}}


#: `POST /v1/decisions` in OpenAPI (the endpoint is plain ASGI, see engine/serve/app.py, so it is declared here).
DECISIONS_OPENAPI: dict[str, Any] = {"post": {
    "tags": ["decisions"], "summary": "Decide", "operationId": "decide",
    "description": "Decide for 1 to 1,000 subscribers: score, explain, segment, policies, contact rules, arbitration "
                   "within today's remaining budget and channel capacity. Every decision is recorded in the decision "
                   "store. With RETAIN_API_TOKEN set, send `Authorization: Bearer <token>`.",
    "requestBody": {"required": True, "content": _body("DecisionRequest", {"subscribers": [EXAMPLE_SUBSCRIBER]})},
    "responses": {
        "200": {"description": "One decision per subscriber, in request order",
                "content": _body("DecisionResponse", EXAMPLE_RESPONSE)},
        "401": {"description": "missing or wrong bearer token"},
        "413": {"description": "request body too large"},
        "422": {"description": "invalid payload: each problem names the field"},
        "503": {"description": "model or policies not loaded yet"},
    },
}}
