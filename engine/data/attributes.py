"""The attributes a policy may test: the subscriber schema, derived signals and what the engine adds.

Why here: the policy validator must reject a condition on an attribute that does not exist, the
segmenter must produce exactly these values, and the README documents them. One list serves all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.data.schema import SUBSCRIBER_COLUMNS
from engine.vocabulary import LIFECYCLE_STAGES, NEED_GROUPS, REASON_VALUES, RISK_GRADES, VALUE_TIERS

AttrKind = Literal["numeric", "categorical", "boolean"]


@dataclass(frozen=True)
class Attribute:
    name: str
    kind: AttrKind
    description: str
    values: tuple[str, ...] | None = None  # closed set of levels for categoricals, when known


#: Features the feature pipeline derives from the raw schema (see engine.model.features).
DERIVED_FEATURES: tuple[Attribute, ...] = (
    Attribute("arpu_mean_3m", "numeric", "Mean ARPU over the last 3 months"),
    Attribute("arpu_change", "numeric", "ARPU now vs two months ago, as a fraction (-0.2 = fell 20%)"),
    Attribute("data_change", "numeric", "Data usage this month vs last, as a fraction"),
    Attribute("voice_change", "numeric", "Voice minutes this month vs last, as a fraction"),
)

#: What the engine adds to every subscriber before policies are evaluated.
ENGINE_OUTPUTS: tuple[Attribute, ...] = (
    Attribute("churn_probability", "numeric", "Model's churn probability, 0-1"),
    Attribute("risk_grade", "categorical", "Risk grade from the churn probability", RISK_GRADES),
    Attribute("reason", "categorical", "Main churn reason from the model's attributions", REASON_VALUES),
    Attribute("reason_share", "numeric", "Share of the positive attributions the main reason carries, 0-1"),
    Attribute("value_tier", "categorical", "Value tier from ARPU", VALUE_TIERS),
    Attribute("lifecycle_stage", "categorical", "Lifecycle stage from tenure and usage trend", LIFECYCLE_STAGES),
    Attribute("need_group", "categorical", "Need group from age and plan", NEED_GROUPS),
    Attribute("is_prepaid", "boolean", "True on a prepaid plan"),
)


def _schema_attributes() -> tuple[Attribute, ...]:
    out = []
    for c in SUBSCRIBER_COLUMNS:
        if c.kind == "id":
            continue
        kind: AttrKind = "numeric" if c.kind in ("numeric", "integer") else c.kind  # type: ignore[assignment]
        out.append(Attribute(c.name, kind, c.description, c.allowed))
    return tuple(out)


#: Every attribute a policy condition may name.
DECISION_ATTRIBUTES: dict[str, Attribute] = {
    a.name: a for a in (*_schema_attributes(), *DERIVED_FEATURES, *ENGINE_OUTPUTS)
}
