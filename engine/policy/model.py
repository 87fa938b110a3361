"""The policy file format (pydantic) and the loaded policy objects.

A policy file is a YAML mapping with `offers:` (the offer catalogue) and/or `rules:` (the decision
table). Unknown fields are errors, so a typo never silently disables part of a rule. The JSON Schema
published next to this module (`policy.schema.json`)
is generated from these models, so editors complete and check policy files as they are typed
(regenerate it with `retain policy schema --out engine/policy/policy.schema.json`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from engine.data.attributes import DECISION_ATTRIBUTES, Attribute
from engine.policy.conditions import ALWAYS, OPERATORS, Condition, attributes_of, conjoin
from engine.vocabulary import CHANNELS, REASON_VALUES, STAGES

SCHEMA_PATH = Path(__file__).with_name("policy.schema.json")
PREFERRED = "preferred"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"

ChannelName = Literal[tuple(CHANNELS)]  # type: ignore[valid-type]
ChannelOrPreferred = Literal[(*CHANNELS, "preferred")]  # type: ignore[valid-type]
StageName = Literal[tuple(STAGES)]  # type: ignore[valid-type]

_CONDITION_MARK = "x-retain-condition"
ConditionDoc = Annotated[dict[str, Any], WithJsonSchema({"type": "object", _CONDITION_MARK: True})]
Identifier = Annotated[str, Field(pattern=ID_PATTERN, max_length=80,
                                  description="Letters, digits, '_', '-' and '.'; unique in the policy set")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OfferSpec(_Strict):
    """One retention product of the offer catalogue."""

    id: Identifier
    description: str = Field(min_length=1, description="What the subscriber gets, in words")
    cost: float = Field(ge=0, description="Unit cost of one accepted offer (currency)")
    value_kept: float = Field(ge=0, description="Expected monthly revenue kept when the offer retains the subscriber")
    channels: list[ChannelName] = Field(min_length=1, description="Channels the offer may be made on; "
                                                                  "the first is the fallback for 'preferred'")
    eligibility: ConditionDoc | None = Field(None, description="Who may get the offer at all (same condition "
                                                               "language as a rule's `when`)")
    valid_from: dt.date | None = Field(None, description="First day the offer may be made (inclusive)")
    valid_to: dt.date | None = Field(None, description="Last day the offer may be made (inclusive)")
    acceptance: float | dict[str, float] | None = Field(
        None, description="Prior P(accept): one rate, or per churn reason with 'default' for the rest, e.g. "
                          "{price: 0.3, default: 0.1}; measured rates replace it as outcomes come in")
    effect: float | None = Field(
        None, ge=-1, le=1, description="Prior incremental effect: P(churn | no contact) - P(churn | offer), e.g. "
                                       "0.05; `retain uplift train` shrinks its estimates toward it where data is thin")

    @model_validator(mode="after")
    def _dates(self) -> OfferSpec:
        rates = self.acceptance if isinstance(self.acceptance, dict) else {"default": self.acceptance}
        for reason, rate in rates.items():
            if rate is not None and not 0 < rate <= 1:
                raise ValueError(f"acceptance {reason} = {rate} must be above 0 and at most 1")
            if reason not in (*REASON_VALUES, "default"):
                raise ValueError(f"acceptance: unknown reason '{reason}' (reasons: {', '.join(REASON_VALUES)}, "
                                 f"or 'default')")
        if self.valid_from and self.valid_to and self.valid_from > self.valid_to:
            raise ValueError(f"valid_from {self.valid_from} is after valid_to {self.valid_to}")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels lists a channel twice")
        return self


class ActionSpec(_Strict):
    """What a rule does when it wins: the offer, the channel and the message; or a suppression."""

    offer: Identifier | None = Field(None, description="Offer id from the catalogue")
    channel: ChannelOrPreferred = Field(
        PREFERRED, description="A channel the offer allows, or 'preferred': the subscriber's preferred channel "
                               "when the offer allows it, else the offer's first allowed channel")
    exclude_channels: list[ChannelName] = Field(
        default_factory=list, description="Channels this rule never uses, e.g. [sms]; with 'preferred' the next "
                                          "channel the offer allows is taken")
    message: str | None = Field(None, description="Message template; {field} inserts a subscriber field, "
                                                  "e.g. {tenure_months} or {arpu_m0:.0f}")
    no_offer: bool = Field(False, description="A suppression: subscribers this rule matches get nothing from it "
                                              "or from any rule after it (status 'suppressed')")
    note: str | None = Field(None, description="Why, in words; recorded with a suppression")

    @model_validator(mode="after")
    def _offer_or_suppression(self) -> ActionSpec:
        if self.no_offer:
            extra = [f for f in ("offer", "message") if getattr(self, f) is not None]
            extra += ["exclude_channels"] if self.exclude_channels else []
            extra += ["channel"] if self.channel != PREFERRED else []
            if extra:
                raise ValueError(f"a suppression (no_offer: true) sends nothing, so it takes no {', '.join(extra)}")
        elif self.offer is None:
            raise ValueError("give an offer (offer: <id>), or write no_offer: true for a suppression")
        elif self.channel != PREFERRED and self.channel in self.exclude_channels:
            raise ValueError(f"channel '{self.channel}' is also in exclude_channels")
        return self


class RuleSpec(_Strict):
    """One row of the decision table."""

    id: Identifier
    description: str = Field(min_length=1, description="Why this rule exists, in words")
    priority: int = Field(ge=0, le=1_000_000, description="Higher wins among the rules that match")
    stage: StageName = Field(description="Retention stage: preventive, intervention or win-back")
    when: ConditionDoc | None = Field(None, description="Conditions; omitted or {} matches every subscriber")
    then: ActionSpec
    stop: bool = Field(False, description="When this rule matches, rules after it are not considered "
                                          "(not even as fallbacks)")
    valid_from: dt.date | None = Field(None, description="First day the rule applies (inclusive)")
    valid_to: dt.date | None = Field(None, description="Last day the rule applies (inclusive)")

    @model_validator(mode="after")
    def _dates(self) -> RuleSpec:
        if self.valid_from and self.valid_to and self.valid_from > self.valid_to:
            raise ValueError(f"valid_from {self.valid_from} is after valid_to {self.valid_to}")
        return self


class AttributeSpec(_Strict):
    """A column of the operator's own that rules and messages may use (declared in attributes.yaml)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=60,
                      description="Column name in the input table: lower case letters, digits and '_'")
    type: Literal["boolean", "numeric", "categorical"] = Field(description="boolean, numeric or categorical")
    description: str = Field(min_length=1, description="What the column means, in words")
    values: list[str] | None = Field(None, min_length=1, description="categorical: the allowed values")
    min: float | None = Field(None, description="numeric: smallest allowed value")
    max: float | None = Field(None, description="numeric: largest allowed value")

    @model_validator(mode="after")
    def _fits_type(self) -> AttributeSpec:
        if self.values is not None and self.type != "categorical":
            raise ValueError("values only apply to a categorical attribute")
        if (self.min is not None or self.max is not None) and self.type != "numeric":
            raise ValueError("min / max only apply to a numeric attribute")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


ArbitrationMode = Literal["first", "best_value", "incremental_value"]
ARBITRATION_MODES: dict[str, str] = {
    "first": "the highest-priority matching rule wins (DMN's priority hit policy); lower ones are fallbacks",
    "best_value": "the candidate with the highest expected net value wins; ties go to the higher priority",
    "incremental_value": "the candidate with the highest incremental net value wins (effect on churn x value kept "
                         "x horizon - cost, from the uplift model or the offers' `effect:`); ties go to the higher "
                         "priority",
}
#: Share of decisions explored when a policy set does not say (`exploration: {share: ...}`).
DEFAULT_EXPLORATION_SHARE = 0.05


class ExplorationSpec(_Strict):
    """A share of decisions chosen at random among the subscriber's eligible actions (no contact included)."""

    share: float = Field(DEFAULT_EXPLORATION_SHARE, ge=0, le=0.5,
                         description="Share of subscribers whose action is drawn at random among their eligible "
                                     "ones, no contact included (0 disables; default 0.05)")
    seed: str | int | None = Field(None, description="Seed of the stable draw (default: the decision date, so a "
                                                     "subscriber gets the same draw in any batch that day)")


class PolicyFile(_Strict):
    """A policy file: offers, rules, declared attributes, the arbitration mode. Several files compose one set."""

    description: str | None = Field(None, description="What this file holds")
    arbitration: ArbitrationMode | None = Field(
        None, description="How the winner is chosen among a subscriber's candidates: " + "; ".join(
            f"'{k}': {v}" for k, v in ARBITRATION_MODES.items()) + " (default: first)")
    exploration: ExplorationSpec | None = Field(
        None, description="Exploration: a share of decisions drawn at random so that other policies can be "
                          "evaluated on the logs (default share 0.05)")
    attributes: list[AttributeSpec] = Field(default_factory=list)
    offers: list[OfferSpec] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Loaded objects
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    id: str
    description: str
    cost: float
    value_kept: float
    channels: list[str]
    eligibility: Condition = ALWAYS
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    source: str = ""  # "file:line"
    acceptance: dict[str, float] = field(default_factory=dict)  # reason or 'default' -> prior P(accept)
    effect: float | None = None  # prior incremental effect on churn

    def valid_on(self, day: dt.date) -> bool:
        return _valid_on(self, day)

    def validity(self) -> str:
        return _validity(self)


def _valid_on(item: Offer | Rule, day: dt.date) -> bool:
    return (item.valid_from is None or day >= item.valid_from) and (item.valid_to is None or day <= item.valid_to)


def _validity(item: Offer | Rule) -> str:
    if item.valid_from is None and item.valid_to is None:
        return "always"
    return f"{item.valid_from or '...'} to {item.valid_to or '...'}"


@dataclass(frozen=True)
class Action:
    offer: str | None  # None for a suppression
    channel: str = PREFERRED
    message: str | None = None
    exclude_channels: tuple[str, ...] = ()
    no_offer: bool = False
    note: str | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    priority: int
    stage: str
    conditions: Condition
    action: Action
    stop: bool = False
    source: str = ""  # "file:line"
    position: int = 0  # index in evaluation order
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None

    @property
    def offer(self) -> str | None:
        return self.action.offer

    @property
    def suppresses(self) -> bool:
        return self.action.no_offer

    def valid_on(self, day: dt.date) -> bool:
        return _valid_on(self, day)

    def validity(self) -> str:
        return _validity(self)


@dataclass(frozen=True)
class DeclaredAttribute(Attribute):
    """An operator's own column, declared in the policy set, with its allowed range."""

    minimum: float | None = None
    maximum: float | None = None
    source: str = ""  # "file:line"


@dataclass
class PolicySet:
    """A loaded, validated policy set. `rules` are in evaluation order (see engine.policy docs)."""

    offers: dict[str, Offer]
    rules: list[Rule]
    files: list[str]
    root: str
    content_hash: str
    attributes: set[str] = field(default_factory=set)
    template_fields: set[str] = field(default_factory=set)
    declared: dict[str, DeclaredAttribute] = field(default_factory=dict)
    arbitration: str = "first"
    exploration_share: float = DEFAULT_EXPLORATION_SHARE
    exploration_seed: str | None = None

    @property
    def effect_priors(self) -> dict[str, float]:
        """offer id -> its prior incremental effect (`effect:`), for offers that state one."""
        return {oid: float(o.effect) for oid, o in self.offers.items() if o.effect is not None}

    @property
    def acceptance_priors(self) -> dict[str, dict[str, float]]:
        """offer id -> its `acceptance:` rates (reason or 'default' -> P(accept))."""
        return {oid: dict(o.acceptance) for oid, o in self.offers.items()}

    @property
    def vocabulary(self) -> dict[str, Attribute]:
        """Every attribute rules and messages may use: the built-ins and the declared ones."""
        return {**DECISION_ATTRIBUTES, **self.declared}

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def matching_condition(self, rule: Rule) -> Condition:
        """What must hold for `rule` to match: its conditions and its offer's eligibility (none for a suppression)."""
        if rule.offer is None:
            return rule.conditions
        return conjoin(rule.conditions, self.offers[rule.offer].eligibility)

    def missing_declared(self, columns: Iterable[str]) -> str | None:
        """The one-line error for an input that lacks a declared attribute, or None when it has them all.

        `retain decide` (and simulate, validate --input) refuse such an input with exactly this message.
        """
        have = set(columns)
        for name, attr in sorted(self.declared.items()):
            if name not in have:
                return f"input lacks declared attribute '{name}' (declared at {attr.source})"
        return None

    def require_declared(self, columns: Iterable[str]) -> None:
        """Raise DataError (one line) when the input lacks a declared attribute."""
        problem = self.missing_declared(columns)
        if problem:
            from engine.errors import DataError

            raise DataError(problem, hint="add the column to the input, or remove the declaration from the "
                                          "policy set's attributes.yaml")

    @property
    def required_columns(self) -> set[str]:
        """Columns a frame needs for decide(): rule inputs, template fields, preferred_channel if used."""
        cols = set(self.attributes) | set(self.template_fields) | set(self.declared)
        if any(r.action.channel == PREFERRED for r in self.rules):
            cols.add("preferred_channel")
        return cols


def referenced_attributes(rules: list[Rule], offers: dict[str, Offer]) -> set[str]:
    out: set[str] = set()
    for r in rules:
        out |= attributes_of(r.conditions)
    for o in offers.values():
        out |= attributes_of(o.eligibility)
    return out


# ---------------------------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------------------------
def _value_schema(name: str) -> dict[str, Any]:
    attr = DECISION_ATTRIBUTES[name]
    if attr.kind == "numeric":
        return {"type": "number"}
    if attr.kind == "boolean":
        return {"type": "boolean"}
    if attr.values:
        return {"type": "string", "enum": list(attr.values)}
    return {"type": "string"}


def _attribute_test_schema(name: str) -> dict[str, Any]:
    attr = DECISION_ATTRIBUTES[name]
    value = _value_schema(name)
    listed = {"type": "array", "items": value, "minItems": 1}
    ops: dict[str, Any] = {"eq": value, "ne": value, "in": listed, "not_in": listed,
                           "missing": {"type": "boolean"}}
    if attr.kind == "numeric":
        ops.update({k: {"type": "number"} for k in ("gt", "gte", "lt", "lte", "min", "max")})
    for k, v in ops.items():
        ops[k] = {**v, "description": OPERATORS[k]}
    return {
        "description": attr.description,
        "anyOf": [value, listed, {"type": "object", "properties": ops, "additionalProperties": False,
                                  "minProperties": 1}],
    }


def condition_schema() -> dict[str, Any]:
    props: dict[str, Any] = {name: _attribute_test_schema(name) for name in DECISION_ATTRIBUTES}
    props["all"] = {"type": "array", "items": {"$ref": "#/$defs/Condition"}, "minItems": 1,
                    "description": "Every listed condition holds"}
    props["any"] = {"type": "array", "items": {"$ref": "#/$defs/Condition"}, "minItems": 1,
                    "description": "At least one listed condition holds"}
    props["not"] = {"$ref": "#/$defs/Condition", "description": "The condition does not hold"}
    value: dict[str, Any] = {"type": ["string", "number", "boolean"]}
    listed = {"type": "array", "items": value, "minItems": 1}
    ops = {k: ({"type": "boolean"} if k == "missing" else listed if k in ("in", "not_in") else value)
           for k in OPERATORS}
    declared = {"description": "An attribute declared in the policy set's attributes.yaml (checked by "
                               "`retain policy validate`)",
                "anyOf": [value, listed, {"type": "object", "properties": ops, "additionalProperties": False,
                                          "minProperties": 1}]}
    return {"type": "object", "description": "Conditions on subscriber attributes, engine outputs and declared "
                                             "attributes; every key must hold.",
            "properties": props, "patternProperties": {r"^[a-z][a-z0-9_]*$": declared},
            "additionalProperties": False}


def _link_conditions(node: Any) -> Any:
    """Replace pydantic's placeholder for condition fields with a reference to the Condition definition."""
    if isinstance(node, dict):
        if node.get(_CONDITION_MARK):
            return {"$ref": "#/$defs/Condition"}
        return {k: _link_conditions(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_link_conditions(v) for v in node]
    return node


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a policy file."""
    schema = _link_conditions(PolicyFile.model_json_schema())
    schema["$defs"]["Condition"] = condition_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://retain.example/policy.schema.json"
    schema["title"] = "retain retention policy file"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"

