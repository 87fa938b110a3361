"""The policy set as decision tables: one per file, conditions as columns, the action on the right.

Built from the round-trip YAML of the working copy (so a file with errors still shows), with the loaded
policy set's evaluation order added when the set loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.workbench.workspace import Problem, flow_text, item_span, items_of

_OPS = {"min": "≥ {}", "max": "≤ {}", "gt": "> {}", "gte": "≥ {}", "lt": "< {}", "lte": "≤ {}", "eq": "= {}",
        "ne": "≠ {}"}
COMPOSITE = ("any", "all", "not")


def condition_cell(value: Any) -> str:
    """A condition as a decision-table cell: `high, medium`, `≥ 2`, `not low`, `missing`."""
    if isinstance(value, list):
        return ", ".join(flow_text(v) for v in value)
    if isinstance(value, dict):
        parts = []
        for op, arg in value.items():
            if op in _OPS:
                parts.append(_OPS[op].format(flow_text(arg)))
            elif op == "in":
                parts.append(condition_cell(arg))
            elif op == "not_in":
                parts.append("not " + condition_cell(arg))
            elif op == "missing":
                parts.append("missing" if arg else "present")
            else:
                return flow_text(value)
        return " and ".join(parts)
    return flow_text(value)


@dataclass
class Row:
    index: int
    cells: dict[str, str]
    values: dict[str, str]
    other: str
    position: int | None = None  # evaluation order in the loaded set (1-based)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Table:
    file: str
    kind: str  # rules | offers | attributes
    description: str
    columns: list[str]
    rows: list[Row]
    parse_error: str | None = None


def _problems_for(problems: list[Problem], rel: str, data: Any, kind: str, index: int, lines: int) -> list[str]:
    start, end = item_span(data, kind, index, lines)
    return [p.text for p in problems if p.file == rel and p.line is not None and start <= p.line <= end]


def build(files: list[tuple[str, str, Any]], problems: list[Problem], warnings: list[Problem],
          policy_set: Any = None) -> dict[str, list[Table]]:
    """Tables of every file: `files` holds (path, text, round-trip data or None when it does not parse)."""
    positions = {}
    if policy_set is not None:
        positions = {r.id: r.position + 1 for r in policy_set.rules}
    out: dict[str, list[Table]] = {"rules": [], "offers": [], "attributes": []}
    for rel, text, data in files:
        lines = text.count("\n") + 1
        description = str(data.get("description", "")) if isinstance(data, dict) else ""
        if data is None:
            out["rules"].append(Table(rel, "rules", "", [], [], parse_error="this file does not parse as YAML; "
                                                                            "open its YAML pane"))
            continue
        rules = items_of(data, "rules")
        if rules:
            columns: list[str] = []
            for r in rules:
                when = r.get("when") if isinstance(r, dict) else None
                for k in (when or {}) if isinstance(when, dict) else {}:
                    if k not in COMPOSITE and k not in columns:
                        columns.append(str(k))
            rows = []
            for i, r in enumerate(rules):
                r = r if isinstance(r, dict) else {}
                when = r.get("when") if isinstance(r.get("when"), dict) else {}
                then = r.get("then") if isinstance(r.get("then"), dict) else {}
                cells = {c: condition_cell(when[c]) for c in columns if c in when}
                other = "; ".join(f"{k}: {flow_text(v)}" for k, v in when.items() if k in COMPOSITE)
                dates = ""
                if r.get("valid_from") or r.get("valid_to"):
                    dates = f"{flow_text(r.get('valid_from')) or '…'} to {flow_text(r.get('valid_to')) or '…'}"
                channel = flow_text(then.get("channel"))
                if then.get("exclude_channels"):
                    channel += f", not {condition_cell(then.get('exclude_channels'))}"
                values = {
                    "id": flow_text(r.get("id")), "description": flow_text(r.get("description")),
                    "priority": flow_text(r.get("priority")), "stage": flow_text(r.get("stage")),
                    "offer": "no offer (suppression)" if then.get("no_offer") else flow_text(then.get("offer")),
                    "channel": channel, "note": flow_text(then.get("note")), "stop": "stop" if r.get("stop") else "",
                    "dates": dates,
                }
                row = Row(i, cells, values, other, positions.get(values["id"]))
                row.errors = _problems_for(problems, rel, data, "rules", i, lines)
                row.warnings = _problems_for(warnings, rel, data, "rules", i, lines)
                rows.append(row)
            out["rules"].append(Table(rel, "rules", description, columns, rows))
        offers = items_of(data, "offers")
        if offers:
            rows = []
            for i, o in enumerate(offers):
                o = o if isinstance(o, dict) else {}
                dates = ""
                if o.get("valid_from") or o.get("valid_to"):
                    dates = f"{flow_text(o.get('valid_from')) or '…'} to {flow_text(o.get('valid_to')) or '…'}"
                values = {k: flow_text(o.get(k)) for k in ("id", "description", "cost", "value_kept", "acceptance")}
                values["channels"] = condition_cell(o.get("channels")) if o.get("channels") is not None else ""
                values["eligibility"] = "; ".join(f"{k} {condition_cell(v)}" for k, v in
                                                  (o.get("eligibility") or {}).items()) \
                    if isinstance(o.get("eligibility"), dict) else flow_text(o.get("eligibility"))
                values["dates"] = dates
                row = Row(i, {}, values, "")
                row.errors = _problems_for(problems, rel, data, "offers", i, lines)
                row.warnings = _problems_for(warnings, rel, data, "offers", i, lines)
                rows.append(row)
            out["offers"].append(Table(rel, "offers", description, [], rows))
        attrs = items_of(data, "attributes")
        if attrs:
            rows = []
            for i, a in enumerate(attrs):
                a = a if isinstance(a, dict) else {}
                values = {k: flow_text(a.get(k)) for k in ("name", "type", "description", "values", "min", "max")}
                row = Row(i, {}, values, "")
                row.errors = _problems_for(problems, rel, data, "attributes", i, lines)
                rows.append(row)
            out["attributes"].append(Table(rel, "attributes", description, [], rows))
    return out
