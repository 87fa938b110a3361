"""Loading a policy set: YAML files -> validated `PolicySet`, with compiler-style errors.

Every problem is reported as `file:line: rule 'id': what is wrong (hint: how to fix it)`, and all of
them are collected before raising one `PolicyError`, so a marketer fixes a file in one pass. Line
numbers come from a YAML loader that remembers where each mapping key and list item starts.

Files: a directory loads every `*.yaml` / `*.yml` below it in sorted path order, except test cases
(anything under a `tests/` folder, or named `test_*.yaml` / `*_test.yaml`) and hidden files; a file
path loads just that file. Offers and rules may live in any file; ids must be unique across the set.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from engine.data.attributes import DECISION_ATTRIBUTES
from engine.errors import PolicyError
from engine.policy.conditions import ALWAYS, Condition, Problems, closest, parse_condition
from engine.policy.model import (
    ARBITRATION_MODES,
    PREFERRED,
    Action,
    AttributeSpec,
    DeclaredAttribute,
    ExplorationSpec,
    Offer,
    OfferSpec,
    PolicyFile,
    PolicySet,
    Rule,
    RuleSpec,
    referenced_attributes,
)

FORMAT_VERSION = "retain-policy/1"
#: Fields a message template may insert: every decision attribute plus the subscriber id.
TEMPLATE_FIELDS = frozenset({*DECISION_ATTRIBUTES, "subscriber_id"})


# ---------------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------------
class LineDict(dict):
    """A mapping that remembers its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list):
    """A list that remembers its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[int, str]] = []


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        if key in out:
            loader.duplicate_keys.append((key_node.start_mark.line + 1, str(key)))
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


def _construct_timestamp(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    """A date-looking scalar that is not a real date (2027-13-15, 2027-02-30) stays text.

    PyYAML raises a bare ValueError for those, outside its marked errors; kept as text, the field's own
    validation reports it on one line with the file, line, rule and field.
    """
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)

#: Bounds checked before a policy file is parsed, so a hostile or broken file fails fast with one line.
#: Real policy files are a few kB, nest a handful of levels and use few anchors.
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 50
MAX_ALIASES = 100
MAX_NODES = 200_000
#: A decision table a team maintains has tens to hundreds of rules; past this, checking the set (overlaps,
#: shadowing, coverage) takes minutes, so a generated file is refused instead of hanging a command.
MAX_RULES = 1_000

#: PyYAML's problems, in words a marketer can act on.
_YAML_HINTS: tuple[tuple[str, str], ...] = (
    ("expected <block end>", "this line is indented differently from the lines around it; align it with the "
                             "other keys of the same block (use spaces, two per level)"),
    ("mapping values are not allowed", "a ':' appears where a value was expected; put text that contains "
                                       "': ' in quotes, or check the indentation of the line"),
    ("could not find expected ':'", "a key is missing its ':' (write `key: value`), or a quoted text runs on"),
    ("cannot start any token", "the line starts with a character YAML does not allow there; a tab? indent "
                               "with spaces, and quote text that starts with @ or `"),
    ("found unexpected end of stream", "a quote or bracket opened here is never closed"),
    ("expected ',' or ']'", "a list in [brackets] is not closed, or an item is missing a comma"),
    ("expected ',' or '}'", "a mapping in {braces} is not closed, or an entry is missing a comma"),
    ("found undefined alias", "a *name refers to an anchor &name that is not defined above it"),
    ("expected a comment or a line break", "there is text after a closing quote or bracket on this line"),
    ("did not find expected key", "this line is not indented like the other keys of its block, or a list "
                                  "item is missing its '- '"),
    ("did not find expected '-'", "the items of this list do not all start with '- ' at the same indentation"),
)


def _yaml_words(problem: str) -> str:
    for needle, words in _YAML_HINTS:
        if needle in problem:
            return words
    return "check indentation (spaces, not tabs), colons after keys, and that quotes and brackets are closed"


def _check_shape(text: str, display: str) -> str | None:
    """Depth, aliases and node count from the event stream (iterative: no recursion on deep input)."""
    depth = aliases = nodes = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1
                    return (f"{display}:{line}: nested more than {MAX_DEPTH} levels deep (hint: a policy needs a "
                            f"few levels; check for a runaway indentation or generated file)")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    line = event.start_mark.line + 1
                    return (f"{display}:{line}: more than {MAX_ALIASES} aliases (*name) (hint: write conditions out "
                            f"instead of repeating anchors)")
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    return f"{display}: more than {MAX_NODES:,} YAML values (hint: split the policy set into files)"
    except yaml.YAMLError:
        return None  # the parser proper reports syntax errors with their line and column
    return None


def read_yaml(path: Path, display: str) -> tuple[Any, list[str]]:
    """Parse one YAML file keeping line numbers. Returns (data, problems)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, [f"{display}: file is {size / 1e6:.1f} MB, more than the {MAX_FILE_BYTES / 1e6:.0f} MB a "
                          f"policy file may have (hint: a policy file holds offers and rules, not data)"]
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, [f"{display}: is not UTF-8 text (hint: save it as UTF-8)"]
    except OSError as exc:
        return None, [f"{display}: cannot be read ({exc.strerror or exc})"]
    shape = _check_shape(text, display)
    if shape:
        return None, [shape]
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        column = f", column {mark.column + 1}" if mark else ""
        started = (f" (the block started at line {exc.context_mark.line + 1})"
                   if exc.context and exc.context_mark and exc.context_mark.line + 1 != line else "")
        words = _yaml_words(f"{exc.problem or ''} {exc.context or ''}")
        return None, [f"{display}:{line}: malformed YAML at line {line}{column}{started}: {words}"]
    except yaml.YAMLError as exc:
        return None, [f"{display}: malformed YAML: {str(exc).splitlines()[0]}"]
    except RecursionError:
        return None, [f"{display}: nested too deeply to read (hint: a policy needs a few levels)"]
    finally:
        loader.dispose()
    problems = [f"{display}:{line}: duplicate key '{key}' (hint: a key may appear once per mapping; "
                f"the later one would silently win)" for line, key in loader.duplicate_keys]
    return data, problems


def line_at(raw: Any, loc: Iterable[Any], default: int = 0) -> int:
    """The line of the deepest element of `raw` reachable along `loc` (a pydantic error location)."""
    line = getattr(raw, "line", default) or default
    node = raw
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(str(part))
        if f is None:
            return None
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            args = getattr(ann, "__args__", ())
            inner = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if inner is None:
                return None
            model = inner
    return model


def pydantic_problems(exc: ValidationError, model: type[BaseModel], raw: Any, where: str, context: str,
                      default_line: int, skip: tuple[str, ...] = ()) -> list[str]:
    """Turn pydantic errors into `file:line: context: field 'x': problem` lines.

    Errors under a field named in `skip` are left out (those fields are checked by other code).
    """
    out = []
    seen: set[tuple[Any, ...]] = set()
    for err in exc.errors():
        # drop pydantic's union-member tags such as "literal['a','b']" from the location
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or str(p).isidentifier())
        if loc and loc[0] in skip:
            continue
        kind = err["type"]
        line = line_at(raw, loc, default_line)
        path = ".".join(str(p) for p in loc)
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            near = closest(str(loc[-1]), allowed, n=1)
            maybe = f"did you mean '{near[0]}'? " if near else ""
            msg = f"unknown field '{path}' (hint: {maybe}allowed fields: {', '.join(allowed)})"
        elif kind == "missing":
            msg = f"missing required field '{path}'"
        elif kind == "string_pattern_mismatch":
            msg = (f"field '{path}': '{err['input']}' is not a valid id "
                   f"(hint: use letters, digits, '_', '-' and '.', starting with a letter or digit)")
        else:
            text = err["msg"].removeprefix("Value error, ")
            shown = err.get("input")
            got = f" (got {shown!r})" if loc and not isinstance(shown, dict | list) else ""
            msg = f"field '{path}': {text}{got}" if path else text
        if (loc, kind) in seen:
            continue
        seen.add((loc, kind))
        out.append(f"{where}:{line}: {context}{msg}")
    return out


# ---------------------------------------------------------------------------------------------
# Message templates
# ---------------------------------------------------------------------------------------------
def template_fields(template: str) -> list[tuple[str, str]]:
    """(field, format spec) pairs of a message template; raises ValueError for a malformed one."""
    fields = []
    for _literal, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if conversion:
            raise ValueError(f"'{{{name}!{conversion}}}': conversions (!r, !s) are not allowed")
        if not name:
            raise ValueError("'{}' needs a field name, e.g. {tenure_months}")
        if not name.isidentifier():
            raise ValueError(f"'{{{name}}}': only plain field names are allowed (no '.', '[]')")
        if spec and "{" in spec:
            raise ValueError(f"'{{{name}:{spec}}}': nested fields in a format spec are not allowed")
        fields.append((name, spec or ""))
    return fields


#: Widths and precisions in a message's format specs are bounded: `{x:>999999999}` would build a
#: gigabyte string per subscriber.
MAX_FORMAT_WIDTH = 100


def _too_wide(spec: str) -> bool:
    return any(int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"\d+", spec))


def check_template(template: str, vocabulary: Mapping[str, Any] = DECISION_ATTRIBUTES) -> list[str]:
    try:
        fields = template_fields(template)
    except ValueError as exc:
        return [f"malformed message template: {exc} (hint: write {{{{ and }}}} for literal braces)"]
    problems = []
    for name, spec in fields:
        if name not in TEMPLATE_FIELDS and name not in vocabulary:
            near = closest(name, sorted({*TEMPLATE_FIELDS, *vocabulary}), n=1)
            maybe = f"did you mean '{{{near[0]}}}'? " if near else ""
            problems.append(f"message uses unknown field '{{{name}}}' (hint: {maybe}templates may use subscriber "
                            f"fields and engine outputs, e.g. {{tenure_months}}, {{value_tier}})")
            continue
        if spec and _too_wide(spec):
            problems.append(f"message field '{{{name}:{spec}}}': width or precision above {MAX_FORMAT_WIDTH} "
                            f"(hint: a message is a sentence; e.g. {{{name}:.0f}})")
            continue
        if spec:
            attr = vocabulary.get(name)
            sample: Any = 1.5 if attr is not None and attr.kind == "numeric" else "x"
            try:
                format(sample, spec)
            except (ValueError, TypeError) as exc:
                problems.append(f"message field '{{{name}:{spec}}}': bad format ({exc})")
    return problems


# ---------------------------------------------------------------------------------------------
# Policy set
# ---------------------------------------------------------------------------------------------
def is_test_file(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    return ("tests" in rel.parts[:-1] or path.name.startswith("test_") or path.stem.endswith("_test"))


def policy_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".yaml", ".yml")]
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted((p for p in files if not is_test_file(p, root)), key=lambda p: p.relative_to(root).as_posix())


def _display(path: Path, root: Path, root_arg: str) -> str:
    if root.is_file():
        return root_arg
    return (Path(root_arg) / path.relative_to(root)).as_posix()


class _Collected:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.offers: dict[str, tuple[OfferSpec, Offer]] = {}
        self.rules: list[tuple[tuple[int, int, int], RuleSpec, Rule, Any, str]] = []
        self.rule_sources: dict[str, str] = {}
        self.broken_offers: set[str] = set()  # ids of offers reported already: no follow-on errors for them
        self.declared: dict[str, DeclaredAttribute] = {}
        self.declared_specs: list[AttributeSpec] = []
        self.arbitration: tuple[str, str] | None = None  # (mode, where)
        self.exploration: tuple[Any, str] | None = None  # (ExplorationSpec, where)

    @property
    def vocabulary(self) -> dict[str, Any]:
        return {**DECISION_ATTRIBUTES, **self.declared}


def load_policy_set(path: str | Path) -> PolicySet:
    """Load, validate and assemble a policy set from a folder or one file.

    Raises PolicyError whose `problems` lists every finding as `file:line: ...`; `str()` is the first
    finding plus a count of the rest.
    """
    root_arg = str(path)
    root = Path(path)
    if not root.exists():
        raise PolicyError(f"policy path '{root_arg}' does not exist",
                          hint="point --policies at the folder holding the policy YAML files")
    files = policy_files(root)
    if not files:
        raise PolicyError(f"{root_arg}: no policy files (*.yaml) found - the policy set is empty",
                          hint="add offers and rules, see policies/ of the project for an example")
    col = _Collected()
    displays = []
    parsed = []
    for file in files:
        display = _display(file, root, root_arg)
        displays.append(display)
        data, problems = read_yaml(file, display)
        col.problems.extend(problems)
        if data is not None:
            parsed.append((data, display))
    for data, display in parsed:  # declared attributes first: any rule in any file may use them
        _load_declarations(data, display, col)
    for file_index, (data, display) in enumerate(parsed):
        _load_file(data, display, file_index, col)
    for _key, _spec, rule, raw, display in col.rules:
        _check_rule_refs(rule, raw, display, col)
    if len(col.rules) > MAX_RULES:
        where = col.rule_sources.get(col.rules[MAX_RULES][2].id, f"{displays[0]}:1")
        col.problems.append(f"{where}: the policy set '{root_arg}' has {len(col.rules):,} rules, more than the "
                            f"{MAX_RULES:,} a policy set may have (hint: merge rules that differ only in a threshold, "
                            f"or move per-subscriber data into a declared attribute)")
    if not col.rules and not col.problems:
        col.problems.append(f"{displays[0]}:1: the policy set '{root_arg}' has no rules "
                            f"(hint: add a `rules:` list to a policy file)")
    if col.problems:
        raise _policy_error(col.problems, root_arg)
    ordered = sorted(col.rules, key=lambda r: r[0])
    rules = [_with_position(r[2], i) for i, r in enumerate(ordered)]
    offers = {k: v[1] for k, v in sorted(col.offers.items())}
    arbitration = col.arbitration[0] if col.arbitration else "first"
    canonical = {
        "format": FORMAT_VERSION,
        "offers": [col.offers[k][0].model_dump(mode="json", exclude_defaults=True) for k in sorted(col.offers)],
        "rules": [r[1].model_dump(mode="json", exclude_defaults=True) for r in ordered],
    }
    if col.declared_specs:
        canonical["attributes"] = [a.model_dump(mode="json", exclude_defaults=True)
                                   for a in sorted(col.declared_specs, key=lambda a: a.name)]
    if arbitration != "first":
        canonical["arbitration"] = arbitration
    exploration = col.exploration[0] if col.exploration else ExplorationSpec()
    if col.exploration:
        canonical["exploration"] = exploration.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False, default=str).encode()).hexdigest()
    fields = set()
    for r in rules:
        if r.action.message:
            fields |= {name for name, _ in template_fields(r.action.message)}
    return PolicySet(offers=offers, rules=rules, files=displays, root=root_arg, content_hash=digest,
                     attributes=referenced_attributes(rules, offers), template_fields=fields,
                     declared=dict(col.declared), arbitration=arbitration,
                     exploration_share=float(exploration.share),
                     exploration_seed=None if exploration.seed is None else str(exploration.seed))


def _policy_error(problems: list[str], root: str) -> PolicyError:
    first = problems[0]
    more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return PolicyError(f"{first}{more}", problems=list(problems),
                       hint=f"run `retain policy validate --policies {root}` to list them all"
                       if len(problems) > 1 else None)


def _with_position(rule: Rule, position: int) -> Rule:
    from dataclasses import replace

    return replace(rule, position=position)


def _load_file(data: Any, display: str, file_index: int, col: _Collected) -> None:
    if not isinstance(data, dict):
        line = getattr(data, "line", 1) or 1
        col.problems.append(f"{display}:{line}: a policy file must be a mapping with `offers:` and/or `rules:` "
                            f"(hint: see the example in policies/)")
        return
    allowed = list(PolicyFile.model_fields)
    for key in data:
        if key not in allowed:
            near = closest(str(key), allowed, n=1)
            maybe = f"did you mean '{near[0]}'? " if near else ""
            col.problems.append(f"{display}:{data.key_lines.get(key, 1)}: unknown field '{key}' "
                                f"(hint: {maybe}allowed top-level fields: {', '.join(allowed)})")
    if "arbitration" in data:
        _load_arbitration(data, display, col)
    if "exploration" in data:
        _load_exploration(data, display, col)
    for section in ("offers", "rules"):
        items = data.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            col.problems.append(f"{display}:{data.key_lines.get(section, 1)}: `{section}` must be a list "
                                f"(hint: start each entry with '- ')")
            continue
        for i, raw in enumerate(items):
            line = items.item_lines[i] if isinstance(items, LineList) else 1
            if section == "offers":
                _load_offer(raw, display, line, col)
            else:
                _load_rule(raw, display, line, (file_index, i), col)


def _load_arbitration(data: Any, display: str, col: _Collected) -> None:
    line = data.key_lines.get("arbitration", 1)
    mode = data["arbitration"]
    if mode not in ARBITRATION_MODES:
        near = closest(str(mode), list(ARBITRATION_MODES), n=1)
        maybe = f"did you mean '{near[0]}'? " if near else ""
        col.problems.append(f"{display}:{line}: arbitration: unknown mode '{mode}' (hint: {maybe}modes: "
                            + "; ".join(f"{k} = {v}" for k, v in ARBITRATION_MODES.items()) + ")")
        return
    where = f"{display}:{line}"
    if col.arbitration and col.arbitration[0] != mode:
        col.problems.append(f"{where}: arbitration: '{mode}' contradicts '{col.arbitration[0]}' set at "
                            f"{col.arbitration[1]} (hint: state the arbitration mode once, in policy.yaml)")
        return
    col.arbitration = (mode, where)


def _load_exploration(data: Any, display: str, col: _Collected) -> None:
    line = data.key_lines.get("exploration", 1)
    where = f"{display}:{line}"
    raw = data["exploration"]
    try:
        spec = ExplorationSpec.model_validate(dict(raw) if isinstance(raw, dict) else raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "exploration"
        col.problems.append(f"{where}: exploration: {field}: {err['msg']} (hint: e.g. `exploration: {{share: 0.05}}`; "
                            f"share between 0 and 0.5, 0 disables)")
        return
    if col.exploration and col.exploration[0] != spec:
        col.problems.append(f"{where}: exploration: contradicts the one set at {col.exploration[1]} "
                            f"(hint: state exploration once, in policy.yaml)")
        return
    col.exploration = (spec, where)


def _load_declarations(data: Any, display: str, col: _Collected) -> None:
    """Custom attributes: checked against the built-ins and each other before any rule is read."""
    items = data.get("attributes") if isinstance(data, dict) else None
    if items is None:
        return
    if not isinstance(items, list):
        col.problems.append(f"{display}:{data.key_lines.get('attributes', 1)}: `attributes` must be a list "
                            f"(hint: start each entry with '- name: ...')")
        return
    for i, raw in enumerate(items):
        line = items.item_lines[i] if isinstance(items, LineList) else 1
        name = raw.get("name") if isinstance(raw, dict) else None
        context = f"attribute '{name}': " if isinstance(name, str) else f"attribute at line {line}: "
        if not isinstance(raw, dict):
            col.problems.append(f"{display}:{line}: {context}an attribute must be a mapping (name, type, description)")
            continue
        try:
            spec = AttributeSpec.model_validate(raw)
        except ValidationError as exc:
            col.problems.extend(pydantic_problems(exc, AttributeSpec, raw, display, context, line))
            continue
        where = f"{display}:{line}"
        if spec.name in DECISION_ATTRIBUTES or spec.name == "subscriber_id":
            col.problems.append(f"{where}: {context}'{spec.name}' is already an attribute of the engine "
                                f"(hint: use it directly, or give your column another name)")
            continue
        if spec.name in col.declared:
            col.problems.append(f"{where}: {context}declared twice (first at {col.declared[spec.name].source})")
            continue
        col.declared_specs.append(spec)
        col.declared[spec.name] = DeclaredAttribute(
            spec.name, spec.type, spec.description, tuple(spec.values) if spec.values else None,
            minimum=spec.min, maximum=spec.max, source=where)


def _ident(raw: Any, what: str, line: int) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return f"{what} '{rid}': " if isinstance(rid, str) and rid else f"{what} at line {line}: "


def _spec_and_condition(raw: dict, model: type[BaseModel], key: str, display: str, context: str, line: int,
                        col: _Collected) -> tuple[Any, Condition]:
    """Validate an offer or rule mapping and parse its condition block (`eligibility` / `when`).

    Both are checked even when the other fails, so one pass reports every problem of the entry.
    """
    try:
        spec = model.model_validate(raw)
    except ValidationError as exc:
        col.problems.extend(pydantic_problems(exc, model, raw, display, context, line, skip=(key,)))
        spec = None
    problems = Problems()
    key_line = raw.key_lines.get(key, line) if isinstance(raw, LineDict) else line
    condition = parse_condition(raw.get(key), problems, line=key_line, what=key, attributes=col.vocabulary)
    col.problems.extend(f"{display}:{ln}: {context}{key}: {msg}" for ln, msg in problems.items)
    return spec, condition


def _load_offer(raw: Any, display: str, line: int, col: _Collected) -> None:
    context = _ident(raw, "offer", line)
    if not isinstance(raw, dict):
        col.problems.append(f"{display}:{line}: {context}an offer must be a mapping (id, description, cost, ...)")
        return
    spec, eligibility = _spec_and_condition(raw, OfferSpec, "eligibility", display, context, line, col)
    if spec is None:
        if isinstance(raw.get("id"), str):
            col.broken_offers.add(raw["id"])
        return
    where = f"{display}:{line}"
    if spec.id in col.offers:
        col.problems.append(f"{where}: {context}duplicate offer id (first defined at {col.offers[spec.id][1].source}) "
                            f"(hint: offer ids must be unique across all policy files)")
        return
    rates = spec.acceptance if isinstance(spec.acceptance, dict) else (
        {} if spec.acceptance is None else {"default": spec.acceptance})
    col.offers[spec.id] = (spec, Offer(id=spec.id, description=spec.description, cost=float(spec.cost),
                                       value_kept=float(spec.value_kept), channels=list(spec.channels),
                                       eligibility=eligibility, valid_from=spec.valid_from,
                                       valid_to=spec.valid_to, source=where, acceptance=dict(rates),
                                       effect=spec.effect))


def _load_rule(raw: Any, display: str, line: int, order: tuple[int, int], col: _Collected) -> None:
    context = _ident(raw, "rule", line)
    if not isinstance(raw, dict):
        col.problems.append(f"{display}:{line}: {context}a rule must be a mapping (id, description, priority, "
                            f"stage, when, then)")
        return
    spec, conditions = _spec_and_condition(raw, RuleSpec, "when", display, context, line, col)
    if spec is None:
        return
    where = f"{display}:{line}"
    if spec.id in col.rule_sources:
        col.problems.append(f"{where}: {context}duplicate rule id (first defined at {col.rule_sources[spec.id]}) "
                            f"(hint: rule ids must be unique across all policy files)")
        return
    col.rule_sources[spec.id] = where
    t = spec.then
    action = Action(offer=t.offer, channel=t.channel, message=t.message, exclude_channels=tuple(t.exclude_channels),
                    no_offer=t.no_offer, note=t.note)
    rule = Rule(id=spec.id, description=spec.description, priority=spec.priority, stage=spec.stage,
                conditions=conditions if conditions is not None else ALWAYS, action=action, stop=spec.stop,
                source=where, valid_from=spec.valid_from, valid_to=spec.valid_to)
    col.rules.append(((-spec.priority, order[0], order[1]), spec, rule, raw, display))


def _check_rule_refs(rule: Rule, raw: Any, display: str, col: _Collected) -> None:
    context = f"rule '{rule.id}': "
    then = raw.get("then") if isinstance(raw, dict) else None
    offer_line = line_at(raw, ("then", "offer"), 1)
    if rule.suppresses:
        return
    offer = col.offers.get(rule.action.offer)
    if offer is None and rule.action.offer in col.broken_offers:
        pass  # the offer's own problem is reported where it is defined
    elif offer is None:
        known = sorted(col.offers)
        near = closest(rule.action.offer, known, n=1)
        maybe = f"did you mean '{near[0]}'? " if near else ""
        listed = ", ".join(known) if known else "none defined - add an `offers:` list"
        col.problems.append(f"{display}:{offer_line}: {context}unknown offer '{rule.action.offer}' "
                            f"(hint: {maybe}known offers: {listed})")
    elif rule.action.channel != PREFERRED and rule.action.channel not in offer[1].channels:
        ch_line = line_at(raw, ("then", "channel"), offer_line)
        col.problems.append(f"{display}:{ch_line}: {context}channel '{rule.action.channel}' is not allowed for "
                            f"offer '{rule.action.offer}' (hint: the offer allows {', '.join(offer[1].channels)}; "
                            f"or write 'preferred')")
    elif offer is not None and not set(offer[1].channels) - set(rule.action.exclude_channels):
        ex_line = line_at(raw, ("then", "exclude_channels"), offer_line)
        col.problems.append(f"{display}:{ex_line}: {context}exclude_channels removes every channel offer "
                            f"'{rule.action.offer}' allows ({', '.join(offer[1].channels)})")
    if rule.action.message is not None and isinstance(then, dict):
        msg_line = line_at(raw, ("then", "message"), offer_line)
        col.problems.extend(f"{display}:{msg_line}: {context}{p}"
                            for p in check_template(rule.action.message, col.vocabulary))
