"""Forms <-> YAML items: a rule or an offer as form fields, a submitted form back into the item.

An edit changes the round-trip item in place - a field whose value did not change keeps its original
node (quotes, flow style, comments) - so saving a one-field change produces a one-line diff. Problems
that the policy loader reports as `file:line: ...` are mapped back to the form field whose key sits on
that line (`field_errors`), so the marketer sees each message on the field it is about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml.comments import CommentedMap

from engine.workbench.workspace import (
    Problem,
    WorkbenchError,
    flow_text,
    item_span,
    items_of,
    key_lines,
    load_text,
    parse_value,
    plain,
)

RULE_ORDER = ("id", "description", "priority", "stage", "when", "then", "stop", "valid_from", "valid_to")
THEN_ORDER = ("offer", "channel", "exclude_channels", "message", "no_offer", "note")
OFFER_ORDER = ("id", "description", "cost", "value_kept", "acceptance", "channels", "eligibility", "valid_from",
               "valid_to")
#: Rows a form shows for conditions beyond the ones an item has (to add a condition).
SPARE_ROWS = 2
ROW_SECTIONS = {"rules": ("when", "when"), "offers": ("eligibility", "elig")}  # kind -> (yaml key, form prefix)
THEN_FIELDS = {"offer": "offer", "channel": "channel", "exclude_channels": "exclude_channels", "message": "message",
               "note": "note", "no_offer": "then_kind"}


@dataclass
class FormState:
    """What a form shows: field values, condition rows, and messages per field."""

    values: dict[str, Any]
    rows: list[tuple[str, str]]
    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    item_errors: list[str] = field(default_factory=list)  # problems of this item not tied to one field
    elsewhere: list[str] = field(default_factory=list)  # problems in other items or files


def _text(v: Any) -> str:
    return "" if v is None else flow_text(v)


def form_values(kind: str, item: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Field values and condition rows of a rule or offer (item None: a new, empty one)."""
    item = item if isinstance(item, dict) else {}
    section = ROW_SECTIONS[kind][0]
    cond = item.get(section)
    rows = [(str(k), _text(v)) for k, v in cond.items()] if isinstance(cond, dict) else []
    rows += [("", "")] * SPARE_ROWS
    if kind == "rules":
        then = item.get("then") if isinstance(item.get("then"), dict) else {}
        values = {k: _text(item.get(k)) for k in ("id", "description", "priority", "stage", "valid_from", "valid_to")}
        values.update({
            "stop": bool(item.get("stop")),
            "then_kind": "suppression" if then.get("no_offer") else "offer",
            "offer": _text(then.get("offer")), "channel": _text(then.get("channel")) or ("" if item else "preferred"),
            "exclude_channels": _text(then.get("exclude_channels")), "message": _text(then.get("message")),
            "note": _text(then.get("note")),
        })
        return values, rows
    values = {k: _text(item.get(k)) for k in ("id", "description", "cost", "value_kept", "acceptance", "channels",
                                              "valid_from", "valid_to")}
    return values, rows


# ---------------------------------------------------------------------------------------------
# Form -> item
# ---------------------------------------------------------------------------------------------
def _set(m: CommentedMap, key: str, value: Any, order: tuple[str, ...]) -> None:
    """Set, replace or (value None) remove `key`, keeping the original node when the value is unchanged."""
    if value is None:
        if key in m:
            del m[key]
        return
    if key in m:
        if plain(m[key]) != plain(value) or type(plain(m[key])) is not type(plain(value)):
            m[key] = value
        return
    rank = order.index(key) if key in order else len(order)
    pos = 0
    for i, k in enumerate(m):
        if k in order and order.index(k) < rank:
            pos = i + 1
    m.insert(pos, key, value)


def _number(text: str, integer: bool = False) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text) if integer or re.fullmatch(r"-?\d+", text) else float(text)
    except ValueError:
        return text  # the policy loader says what is wrong with it, on this field


def _list(text: str, what: str) -> Any:
    text = text.strip()
    if not text:
        return None
    if not text.startswith("["):
        text = f"[{text}]"
    return parse_value(text, what)


def _date(text: str, what: str) -> Any:
    return parse_value(text, what) if text.strip() else None


def _rows(form: dict[str, str], prefix: str) -> list[tuple[int, str, str]]:
    out = []
    indices = sorted({int(m[1]) for k in form if (m := re.fullmatch(rf"{prefix}-(?:attr|value)-(\d+)", k))})
    for i in indices:
        attr = (form.get(f"{prefix}-attr-{i}") or "").strip()
        value = (form.get(f"{prefix}-value-{i}") or "").strip()
        if attr or value:
            out.append((i, attr, value))
    return out


def _conditions(orig: Any, form: dict[str, str], prefix: str, errors: dict[str, list[str]]) -> Any:
    rows = _rows(form, prefix)
    parsed: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for i, attr, value in rows:
        if not attr:
            errors.setdefault(f"{prefix}-attr-{i}", []).append("a condition needs an attribute name")
            continue
        if not value:
            errors.setdefault(f"{prefix}-value-{i}", []).append(f"the condition on '{attr}' needs a value, "
                                                                f"e.g. high, [high, medium] or {{min: 12}}")
            continue
        if attr in seen:
            errors.setdefault(f"{prefix}-attr-{i}", []).append(f"'{attr}' is tested twice; combine the tests "
                                                               f"into one line")
            continue
        seen.add(attr)
        try:
            parsed.append((attr, parse_value(value, f"the condition on '{attr}'")))
        except WorkbenchError as exc:
            errors.setdefault(f"{prefix}-value-{i}", []).append(str(exc))
    if not parsed:
        return None
    if isinstance(orig, CommentedMap) and list(orig.keys()) == [a for a, _ in parsed]:
        for attr, value in parsed:
            if plain(orig[attr]) != plain(value):
                orig[attr] = value
        return orig
    new = CommentedMap()
    if isinstance(orig, CommentedMap) and orig.fa.flow_style():
        new.fa.set_flow_style()
    for attr, value in parsed:
        keep = isinstance(orig, dict) and attr in orig and plain(orig[attr]) == plain(value)
        new[attr] = orig[attr] if keep else value
    return new


def _guard(errors: dict[str, list[str]], name: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except WorkbenchError as exc:
        errors.setdefault(name, []).append(str(exc))
        return None


def _form_owns(item: Any, key: str, form: dict[str, str], prefix: str) -> bool:
    """Whether the form's condition rows stand for `key`: not when the item holds something other than a
    mapping there (only the YAML pane can show that) and the form gives no rows for it."""
    value = item.get(key)
    return value is None or isinstance(value, dict) or bool(_rows(form, prefix))


def apply_form(kind: str, orig: Any, form: dict[str, str]) -> tuple[CommentedMap, dict[str, list[str]]]:
    """The item with the form's values (orig is changed in place; None: a new item) and the form's own
    errors (values that are not YAML, half-filled condition rows)."""
    item = orig if isinstance(orig, CommentedMap) else CommentedMap()
    errors: dict[str, list[str]] = {}
    f = {k: (v if isinstance(v, str) else str(v)) for k, v in form.items()}
    order = RULE_ORDER if kind == "rules" else OFFER_ORDER
    _set(item, "id", f.get("id", "").strip() or None, order)
    _set(item, "description", f.get("description", "").strip() or None, order)
    if kind == "rules":
        _set(item, "priority", _number(f.get("priority", ""), integer=False), order)
        _set(item, "stage", f.get("stage", "").strip() or None, order)
        if _form_owns(item, "when", f, "when"):
            _set(item, "when", _conditions(item.get("when"), f, "when", errors), order)
        then = item.get("then") if isinstance(item.get("then"), CommentedMap) else CommentedMap()
        if f.get("then_kind") == "suppression":
            for k in ("offer", "channel", "exclude_channels", "message"):
                _set(then, k, None, THEN_ORDER)
            _set(then, "no_offer", True, THEN_ORDER)
            _set(then, "note", f.get("note", "").strip() or None, THEN_ORDER)
        else:
            _set(then, "no_offer", None, THEN_ORDER)
            _set(then, "note", None, THEN_ORDER)
            _set(then, "offer", f.get("offer", "").strip() or None, THEN_ORDER)
            _set(then, "channel", f.get("channel", "").strip() or None, THEN_ORDER)
            _set(then, "exclude_channels",
                 _guard(errors, "exclude_channels", _list, f.get("exclude_channels", ""), "exclude_channels"),
                 THEN_ORDER)
            _set(then, "message", f.get("message", "").strip() or None, THEN_ORDER)
        _set(item, "then", then if len(then) else None, order)
        stop = "stop" in f and f["stop"] not in ("", "false", "off")
        _set(item, "stop", True if stop else (False if item.get("stop") is False else None), order)
    else:
        _set(item, "cost", _number(f.get("cost", "")), order)
        _set(item, "value_kept", _number(f.get("value_kept", "")), order)
        _set(item, "acceptance", _guard(errors, "acceptance", parse_value, f.get("acceptance", ""), "acceptance"),
             order)
        _set(item, "channels", _guard(errors, "channels", _list, f.get("channels", ""), "channels"), order)
        if _form_owns(item, "eligibility", f, "elig"):
            _set(item, "eligibility", _conditions(item.get("eligibility"), f, "elig", errors), order)
    for key in ("valid_from", "valid_to"):
        _set(item, key, _guard(errors, key, _date, f.get(key, ""), key), order)
    return item, errors


def apply_yaml(text: str) -> CommentedMap:
    """The YAML pane's text as one item (a mapping)."""
    data = load_text(text, "the YAML pane")
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, CommentedMap):
        raise WorkbenchError("the YAML pane must hold one mapping (id: ..., description: ..., ...)")
    return data


def replace_item(data: Any, kind: str, index: int | None, item: Any) -> int:
    """Put `item` at `index` of the file's `kind` list (None: append; the list is created if missing)."""
    if not isinstance(data, CommentedMap):
        raise WorkbenchError("this file is not a mapping of offers/rules; edit it in the file's YAML pane")
    seq = data.get(kind)
    if seq is None:
        from ruamel.yaml.comments import CommentedSeq

        seq = CommentedSeq()
        data[kind] = seq
    if not isinstance(seq, list):
        raise WorkbenchError(f"`{kind}` of this file is not a list; edit it in the file's YAML pane")
    if index is None or index >= len(seq):
        seq.append(item)
        return len(seq) - 1
    seq[index] = item
    return index


# ---------------------------------------------------------------------------------------------
# Problems -> fields
# ---------------------------------------------------------------------------------------------
_QUOTED = re.compile(r"'([^']*)'")


def _mentioned(message: str) -> set[str]:
    words = set(_QUOTED.findall(message))
    words |= set(re.findall(r"\bfor (\w+)", message))
    words |= {w.split(".")[-1] for w in list(words)}
    return words


def _field_of(kind: str, path: str, message: str, item: Any) -> str:
    prefix_key, prefix = ROW_SECTIONS[kind]
    if path.startswith(prefix_key + "."):
        attr = path.split(".", 1)[1]
        cond = item.get(prefix_key)
        keys = [str(k) for k in cond] if isinstance(cond, dict) else []
        i = keys.index(attr) if attr in keys else 0
        side = "attr" if ("unknown attribute" in message or "not a valid attribute" in message) else "value"
        return f"{prefix}-{side}-{i}"
    if path == prefix_key:
        return prefix_key
    if kind == "rules" and path.startswith("then."):
        return THEN_FIELDS.get(path.split(".", 1)[1], "then")
    if kind == "offers" and path.startswith("acceptance"):
        return "acceptance"
    return path


def map_problems(problems: list[Problem], rel: str, text: str, kind: str, index: int | None,
                 state: FormState) -> None:
    """Sort problems into the form's fields, the item as a whole, and elsewhere in the set."""
    try:
        data = load_text(text)
    except WorkbenchError:
        data = None
    items = items_of(data, kind) if data is not None else []
    span = None
    item = None
    if index is not None and 0 <= index < len(items):
        item = items[index]
        span = item_span(data, kind, index, text.count("\n") + 1)
    lines = key_lines(item)
    for p in problems:
        inside = span is not None and p.file == rel and p.line is not None and span[0] <= p.line <= span[1]
        if not inside:
            if p.warning:
                continue
            state.elsewhere.append(p.text)
            continue
        if p.warning:
            state.warnings.append(p.text)
            continue
        paths = [k for k, ln in lines.items() if ln == p.line]
        if len(paths) > 1:
            named = _mentioned(p.message)
            best = [k for k in paths if k.split(".")[-1] in named or f"'{k}'" in p.message]
            nested = [k for k in paths if "." in k]
            paths = best or nested or paths
        if not paths:
            state.item_errors.append(p.text)
            continue
        name = _field_of(kind, sorted(paths, key=lambda k: -k.count("."))[0], p.message, item)
        state.errors.setdefault(name, []).append(p.text)
