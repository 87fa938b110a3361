"""`PolicyEngine`: a compiled policy set that decides for one subscriber or millions.

Semantics (what a marketer can rely on):

* **Matching.** A rule matches a subscriber on the decision date when its `when` conditions hold, the
  date lies within the rule's own `valid_from` .. `valid_to`, and - for a rule with an offer - the offer
  is eligible: its `eligibility` conditions hold and the date lies within the offer's dates. A rule
  whose offer is not eligible does not match (`retain policy explain` shows which part failed).
* **Evaluation order.** Rules are ordered by priority (higher first); ties by file order (files in
  sorted path order), then by position in the file (top to bottom).
* **Candidates.** The matching rules in evaluation order, ended by the first rule with `stop: true`
  (kept) or the first **suppression** (`no_offer: true`). `Evaluation.listed` is that list
  (`matched_rules` of a decision); `Evaluation.considered` is the same without the suppression: the
  rules that can give an offer, first = the policy winner, the rest fallbacks (or rivals under
  `arbitration: best_value`) for the decision engine's arbitration.
* **Suppression.** When the first matching rule is a suppression, the subscriber has no candidate and
  is suppressed (`Evaluation.suppressor`, the rule's `note`); a suppression further down only removes
  the rules after it.
* **Channel.** The rule's channel, or for `preferred` the subscriber's `preferred_channel` mapped by
  `engine.vocabulary.PREFERRED_TO_CHANNEL` when the offer allows it and the rule does not exclude it
  (`exclude_channels`), else the first of the offer's channels the rule does not exclude.
  Opt-outs, budgets and contact limits are applied later by the decision engine, not here.
* **Message.** The rule's template rendered with the subscriber's fields (numbers print whole when
  whole, else with 2 decimals, unless the template gives a format such as `{arpu_m0:.0f}`; true/false
  print as yes/no; a missing value prints as nothing); without a template, the offer's description.

Speed: durable-rules evaluates about 20 k facts per second, so rules are not evaluated per subscriber
but per *equivalence class* of rule inputs. A categorical attribute splits subscribers by the values the
rules mention (all others form one class, missing another); a numeric attribute by its position
relative to every threshold the rules use for it (below, equal, between, above; missing), so every
member of a class gives every test the same answer. One representative per distinct combination of
classes is asserted to durable-rules and its result broadcast to the class. This is exact.
A real-time caller deciding a few rows at a time has each class's answer remembered per day, and each
rule's answer for the classes of the inputs it reads: a combination of classes not seen before is answered
from its rules' answers once every rule has been asked about its own part of it.
"""

from __future__ import annotations

import datetime as dt
import math
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.data.attributes import DECISION_ATTRIBUTES, Attribute
from engine.data.frames import block_values, column_values
from engine.errors import DataError
from engine.policy.conditions import Column, Condition, attributes_of, conjuncts, iter_tests, prepare_column
from engine.policy.conditions import evaluate as evaluate_condition
from engine.policy.model import PREFERRED, PolicySet, Rule
from engine.policy.rules_engine import (
    DurableRuleset,
    compile_condition,
    conjunction,
    date_window,
    facts_from_columns,
    flag_attributes,
)
from engine.vocabulary import PREFERRED_TO_CHANNEL

OUTPUT_COLUMNS = ["offer_id", "channel", "rule_id", "stage", "priority", "matched_rules", "message", "note"]
_KEY_LIMIT = 2**62
#: Up to this many classes, don't-care merging is skipped (exact either way: it only saves durable-rules calls).
FEW_CLASSES = 256
#: Classes remembered per policy engine (see `PolicyEngine._match_classes`); cleared when full.
MEMO_CLASSES = 100_000
_MAX_FLOAT = float(np.finfo(float).max)


@dataclass(frozen=True)
class _Plan:
    """How one attribute splits subscribers into classes.

    Numeric: each test contributes a boundary - `gte v` / `lt v` split `x < v` from `x >= v` ("left"
    boundaries), `gt v` / `lte v` split `x <= v` from `x > v` ("right"), `eq` / `ne` / `in` both. Every
    boundary is a monotone step in x, so the number of boundaries a value has passed identifies which
    ones it passed: that count is the class. Missing values form their own class.
    """

    name: str
    kind: str
    left: np.ndarray | None = None  # numeric: x >= v passes these
    right: np.ndarray | None = None  # numeric: x > v passes these
    values: tuple[str, ...] = ()  # categorical: values the rules mention


@dataclass
class Evaluation:
    """Rules matched per class of identical rule inputs, and each row's class."""

    classes: np.ndarray  # row -> class index
    matched: list[tuple[int, ...]]  # class -> matching rule positions, in evaluation order (before stop)
    considered: list[tuple[int, ...]]  # class -> rules that can give an offer, after stop/suppression (first = winner)
    n_rows: int
    distinct_inputs: int = 0  # distinct combinations of rule-input classes, before don't-care merging
    listed: list[tuple[int, ...]] = field(default_factory=list)  # class -> candidates incl. an ending suppression
    suppressor: list[int] = field(default_factory=list)  # class -> suppression rule position, or -1

    def suppressed_by(self) -> np.ndarray:
        """Per row: the position of the suppression that is its first matching rule, or -1."""
        table = np.array(self.suppressor or [-1], dtype=np.int64)
        return table[self.classes] if self.n_rows else np.zeros(0, dtype=np.int64)

    @property
    def n_classes(self) -> int:
        return len(self.matched)


@dataclass
class ChannelTable:
    """Channel codes per (rule position, preferred-channel code); the last rule row (no rule) is -1."""

    table: np.ndarray
    row_code: np.ndarray  # row -> preferred-channel code
    names: list[str]  # channel code -> channel


@dataclass
class FlatCandidates:
    """Candidates as parallel arrays, in (row, rank) order."""

    evaluation: Evaluation
    rows: np.ndarray  # row position in the frame
    rank: np.ndarray  # 0 = the policy winner
    positions: np.ndarray  # rule position (evaluation order)
    channel: np.ndarray  # channel code into `channel_names`
    channel_names: list[str]
    n_rules: int
    suppressed_by: np.ndarray | None = None  # per row: position of the suppression that ends it first, or -1


class PolicyEngine:
    """A policy set compiled to one durable-rules ruleset (unique name per instance)."""

    def __init__(self, policy_set: PolicySet, *, decision_date: dt.date | None = None) -> None:
        self.policy_set = policy_set
        self.decision_date = decision_date
        self.rules: list[Rule] = list(policy_set.rules)
        self._conditions: list[Condition] = [policy_set.matching_condition(r) for r in self.rules]
        flags: set[str] = set()
        for c in self._conditions:
            flags |= flag_attributes(c)
        self._flags = flags
        expressions = {}
        for rule, cond in zip(self.rules, self._conditions, strict=True):
            window = date_window(rule.valid_from, rule.valid_to)
            if rule.offer is not None:
                offer = policy_set.offers[rule.offer]
                window += date_window(offer.valid_from, offer.valid_to)
            expressions[rule.id] = conjunction([compile_condition(cond), *window])
        self._ruleset = DurableRuleset(expressions)
        self.position_of = {r.id: i for i, r in enumerate(self.rules)}
        self._vocabulary: dict[str, Attribute] = dict(policy_set.vocabulary)
        self._plans = _plans(self._conditions, policy_set.attributes, self._vocabulary)
        self._required = frozenset(policy_set.required_columns)
        #: (day, class codes) -> matching rule positions: a policy set's answer for a class never changes, so
        #: a real-time caller deciding one subscriber at a time asks durable-rules once per class and day.
        self._matched_memo: dict[tuple, tuple[int, ...]] = {}
        #: (rule position, day, class codes of the rule's own inputs) -> whether it matches: what a new
        #: combination of classes is answered from when every rule has met its own inputs' classes before
        self._rule_memo: dict[tuple, bool] = {}
        index = {plan.name: j for j, plan in enumerate(self._plans)}
        #: per rule, the places of its inputs' codes in a class key (after the day)
        self._rule_inputs = [tuple(1 + index[a] for a in sorted(attributes_of(c))) for c in self._conditions]
        #: (attribute, values, day, class codes of the other inputs) -> whether some value gives a candidate
        self._reach_memo: dict[tuple, bool] = {}
        self._channels: tuple[np.ndarray, list[str]] | None = None

    # -----------------------------------------------------------------------------------------
    @property
    def ruleset_name(self) -> str:
        return self._ruleset.name

    def close(self) -> None:
        self._ruleset.close()

    def _day(self, on: dt.date | None) -> dt.date:
        return on or self.decision_date or dt.date.today()

    def check_columns(self, frame: pd.DataFrame | Iterable[str]) -> None:
        names = set(frame.columns if isinstance(frame, pd.DataFrame) else frame)
        self.policy_set.require_declared(names)
        missing = sorted(self._required - names)
        if missing:
            raise DataError(f"the policy set needs column(s) {missing}, which the table does not have",
                            hint="policies are evaluated on scored decisions, e.g. the output of `retain decide`")

    def _columns(self, frame: pd.DataFrame, skip: str | None = None) -> dict[str, Column]:
        """Every rule input of `frame` prepared for evaluation (all but `skip`)."""
        columns: dict[str, Column] = {}
        for plan in self._plans:
            if plan.name == skip:
                continue
            raw = block_values(frame, plan.name)  # (the Series only for other types: see engine/data/frames.py)
            source = raw if raw is not None else frame[plan.name]
            col = prepare_column(plan.name, source, self._vocabulary.get(plan.name))
            _check_numeric(plan, source, col)
            columns[plan.name] = col
        return columns

    def evaluate(self, frame: pd.DataFrame, on: dt.date | None = None, *, per_row: bool = False) -> Evaluation:
        """Match every rule for every row: once per class of identical rule inputs, or with
        `per_row=True` once per row (the per-subscriber reference path, ~20 k rows/s)."""
        self.check_columns(frame)
        n = len(frame)
        if n == 0:
            return Evaluation(np.zeros(0, dtype=np.int64), [], [], 0)
        return self._evaluate_columns(self._columns(frame), n, on, per_row=per_row)

    def _evaluate_columns(self, columns: dict[str, Column], n: int, on: dt.date | None, *,
                          per_row: bool = False) -> Evaluation:
        if per_row or n == 1:
            first = inverse = np.arange(n, dtype=np.int64)
            return self._match_classes(columns, first, inverse, on, remember=not per_row)
        codes: list[np.ndarray] = []
        cards: list[int] = []
        for plan in self._plans:
            code, card = _codes(plan, columns[plan.name])
            codes.append(code)
            cards.append(card)
        # 1. classes of identical codes
        _, first, inverse = _unique_rows(codes, cards, n)
        # 2. merge classes that differ only in attributes no live rule looks at (see _dont_care); for a few
        # classes the merge costs more than it saves (the classes' answers are mostly remembered)
        if len(first) > FEW_CLASSES:
            class_codes = [c[first] for c in codes]
            reps = {name: Column(col.values[first], col.missing[first]) for name, col in columns.items()}
            merged_codes, merged_cards = self._dont_care(class_codes, cards, reps, len(first))
            _, first2, inverse2 = _unique_rows(merged_codes, merged_cards, len(first))
        else:
            first2 = inverse2 = np.arange(len(first), dtype=np.int64)
        ev = self._match_classes(columns, first[first2], inverse2[inverse], on)
        ev.distinct_inputs = len(first)
        return ev

    def _match_classes(self, columns: dict[str, Column], first: np.ndarray, inverse: np.ndarray,
                       on: dt.date | None, *, remember: bool = True) -> Evaluation:
        """Assert one representative row per class to durable-rules, or recall what a representative of
        the same class matched on the same day (`remember`; see `_class_keys`)."""
        day = self._day(on)
        matched: list[tuple[int, ...] | None] = [None] * len(first)
        keys: list[tuple] = []
        if remember:
            keys = self._class_keys(columns, first, day)
            matched = [self._matched_memo.get(k) for k in keys]
        todo = np.array([i for i, m in enumerate(matched) if m is None], dtype=np.int64)
        if remember and len(todo):
            todo = self._recall_by_rule(keys, todo, matched)
        if len(todo):
            at = first[todo]
            values: dict[str, list[Any]] = {}
            for name, col in columns.items():
                picked = col.values[at]
                if picked.dtype.kind == "f":
                    picked = np.clip(picked, -_MAX_FLOAT, _MAX_FLOAT)
                listed = picked.tolist()
                for i in np.flatnonzero(col.missing[at]).tolist():
                    listed[i] = None
                values[name] = listed
            facts = facts_from_columns(values, len(at), self._flags, day)
            hits = self._ruleset.match(facts)
            if remember and len(self._matched_memo) + len(todo) > MEMO_CLASSES:
                self._matched_memo.clear()
            for i, h in zip(todo.tolist(), hits, strict=True):
                matched[i] = tuple(sorted(self.position_of[k] for k in h))
                if remember:
                    self._matched_memo[keys[i]] = matched[i]
            if remember:
                self._remember_by_rule([keys[i] for i in todo.tolist()], [matched[i] for i in todo.tolist()])
        listed = [self._truncate(m) for m in matched]
        considered = [tuple(p for p in c if not self.rules[p].suppresses) for c in listed]
        suppressor = [c[0] if c and self.rules[c[0]].suppresses else -1 for c in listed]
        return Evaluation(inverse, matched, considered, len(inverse), len(first), listed, suppressor)

    def _recall_by_rule(self, keys: list[tuple], todo: np.ndarray,
                        matched: list[tuple[int, ...] | None]) -> np.ndarray:
        """Answer the classes `todo` (of `keys`) whose every rule has been asked about its own inputs'
        classes before, filling `matched`; the rest are returned for durable-rules.

        Why: a class key combines the codes of every rule input, so subscribers keep bringing combinations
        not seen before (~9,000 classes after 24,000 simulated subscribers), each an assertion to
        durable-rules inside a real-time request. A rule reads a handful of inputs, so each rule's own
        combinations are few and soon all known. Exact for the reason the classes are (module docs): a
        rule's truth on a day depends only on the classes of the inputs it reads.
        """
        memo, left = self._rule_memo, []
        for i in todo.tolist():
            key = keys[i]
            day = key[0]
            hits = []
            for r, inputs in enumerate(self._rule_inputs):
                truth = memo.get((r, day, *[key[j] for j in inputs]))
                if truth is None:
                    left.append(i)
                    break
                if truth:
                    hits.append(r)
            else:
                if len(self._matched_memo) >= MEMO_CLASSES:
                    self._matched_memo.clear()
                matched[i] = self._matched_memo[key] = tuple(hits)
        return np.array(left, dtype=np.int64)

    def _remember_by_rule(self, keys: list[tuple], matched: list[tuple[int, ...]]) -> None:
        """Each rule's answer for the classes of its own inputs, as durable-rules gave it for `keys`."""
        memo = self._rule_memo
        if len(memo) >= MEMO_CLASSES:  # (each rule's combinations are few: a bound that is seldom reached)
            memo.clear()
        for key, hits in zip(keys, matched, strict=True):
            day, found = key[0], set(hits)
            for r, inputs in enumerate(self._rule_inputs):
                memo[(r, day, *[key[j] for j in inputs])] = r in found

    def _class_keys(self, columns: dict[str, Column], rows: np.ndarray, day: dt.date) -> list[tuple]:
        """Per row: (day, its class code on every rule input). Rows with equal keys match the same rules,
        the premise of evaluating one representative per class (see the module docs)."""
        codes = [_codes(plan, Column(columns[plan.name].values[rows], columns[plan.name].missing[rows]))[0].tolist()
                 for plan in self._plans]
        return [(day, *k) for k in zip(*codes, strict=True)] if codes else [(day,)] * len(rows)

    def _dont_care(self, codes: list[np.ndarray], cards: list[int], reps: dict[str, Column],
                   n: int) -> tuple[list[np.ndarray], list[int]]:
        """Give attribute A one shared code in every class where each rule that reads A is already
        ruled out by a *guard* on another attribute.

        A guard is a top-level part of a rule's matching condition that reads a single attribute
        (e.g. `risk_grade in [high, medium]`). Exactness: two classes merged here carry the same set
        of don't-care attributes and equal codes elsewhere. A rule reading only cared-for attributes
        sees equal codes, so the same truth in both; a rule reading a don't-care attribute is false in
        both, because its false guard is what made the attribute don't-care in each class.
        """
        names = [p.name for p in self._plans]
        index = {name: j for j, name in enumerate(names)}
        guard_false: list[list[tuple[int, np.ndarray]]] = []
        readers: list[list[int]] = [[] for _ in names]
        for r, cond in enumerate(self._conditions):
            false_by = []
            for item in conjuncts(cond):
                attrs = attributes_of(item)
                if len(attrs) == 1:
                    (attr,) = attrs
                    false_by.append((index[attr], ~evaluate_condition(item, reps, n)))
            guard_false.append(false_by)
            for attr in attributes_of(cond):
                readers[index[attr]].append(r)
        out_codes, out_cards = [], []
        for j, (code, card) in enumerate(zip(codes, cards, strict=True)):
            dont_care = np.ones(n, dtype=bool) if readers[j] else np.zeros(n, dtype=bool)
            for r in readers[j]:
                dead = np.zeros(n, dtype=bool)
                for g_attr, g_false in guard_false[r]:
                    if g_attr != j:
                        dead |= g_false
                dont_care &= dead
                if not dont_care.any():
                    break
            code = code.copy()
            code[dont_care] = card
            out_codes.append(code)
            out_cards.append(card + 1)
        return out_codes, out_cards

    def _truncate(self, positions: tuple[int, ...]) -> tuple[int, ...]:
        """The candidate list: ended (inclusive) by the first `stop: true` rule or suppression."""
        for i, p in enumerate(positions):
            if self.rules[p].stop or self.rules[p].suppresses:
                return positions[: i + 1]
        return positions

    # -----------------------------------------------------------------------------------------
    def decide(self, frame: pd.DataFrame, on: dt.date | None = None, *, per_row: bool = False) -> pd.DataFrame:
        """The winning rule, offer, channel and message for every row (same index as `frame`).

        `per_row=True` evaluates every row on its own (reference path for checks; slow)."""
        ev = self.evaluate(frame, on, per_row=per_row)
        rules = self.rules
        n_rules = len(rules)
        # the policy winner: the first rule that can give an offer, or the suppression that ends the list first
        winner_of_class = np.array([c[0] if c else (s if s >= 0 else n_rules)
                                    for c, s in zip(ev.considered, ev.suppressor, strict=True)] or [n_rules],
                                   dtype=np.int64)
        matched_text = np.array([",".join(rules[p].id for p in c) for c in ev.listed] or [""], dtype=object)
        win = winner_of_class[ev.classes] if ev.n_rows else np.zeros(0, dtype=np.int64)
        pick = _picker(win)
        offers = self.policy_set.offers
        messages = np.full(ev.n_rows, None, dtype=object)
        for p in np.unique(win):
            if p == n_rules or rules[p].suppresses:
                continue
            rows = np.flatnonzero(win == p)
            rule = rules[p]
            template = rule.action.message
            if template is None:
                messages[rows] = offers[rule.offer].description
            else:
                messages[rows] = render(template, frame, rows, self._vocabulary)
        return pd.DataFrame({
            "offer_id": pick([r.offer for r in rules]),
            "channel": self.resolve_channels(frame, win),
            "rule_id": pick([r.id for r in rules]),
            "stage": pick([r.stage for r in rules]),
            "priority": pd.array(pick([r.priority for r in rules]), dtype="Int64"),
            "matched_rules": matched_text[ev.classes] if ev.n_rows else np.zeros(0, dtype=object),
            "message": messages,
            "note": pick([r.action.note if r.suppresses else None for r in rules]),
        }, index=frame.index)

    def decide_one(self, record: dict[str, Any], on: dt.date | None = None) -> dict[str, Any]:
        """One subscriber through the same path as `decide` (a one-row frame)."""
        out = self.decide(pd.DataFrame([record]), on).iloc[0].to_dict()
        return {k: _plain(v) for k, v in out.items()}

    def flat_candidates(self, frame: pd.DataFrame, on: dt.date | None = None) -> FlatCandidates:
        """Every considered (rule, channel) per row as flat arrays in (row, rank) order, plus the evaluation.

        The vectorised core of `candidates`: no per-candidate frame is built, so deciding for a million
        subscribers does not pay for a million-row pandas sort. Rank 0 is the policy winner.
        """
        ev = self.evaluate(frame, on)
        n_rules = len(self.rules)
        per_class = np.array([len(c) for c in ev.considered], dtype=np.int64)
        flat = np.fromiter((p for c in ev.considered for p in c), dtype=np.int64, count=int(per_class.sum()))
        class_start = np.cumsum(per_class) - per_class
        k = per_class[ev.classes] if ev.n_rows else np.zeros(0, dtype=np.int64)
        total = int(k.sum())
        rows = np.repeat(np.arange(ev.n_rows, dtype=np.int64), k)
        rank = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(k) - k, k)
        pos = flat[np.repeat(class_start[ev.classes], k) + rank] if total else np.zeros(0, dtype=np.int64)
        channels = self.channel_table(frame)
        channel = channels.table[pos, channels.row_code[rows]] if total else np.zeros(0, dtype=np.int64)
        return FlatCandidates(ev, rows, rank, pos, channel, channels.names, n_rules, ev.suppressed_by())

    def channel_table(self, frame: pd.DataFrame) -> ChannelTable:
        """The channel of every rule for every value of `preferred_channel`, and each row's value code.

        Same semantics as `resolve_channels`, as a lookup: table[rule position, preferred code].
        """
        prefs = list(PREFERRED_TO_CHANNEL)
        needs_pref = any(r.action.channel == PREFERRED for r in self.rules)
        if needs_pref and "preferred_channel" in frame.columns:
            values = column_values(frame, "preferred_channel", object)
            if len(values) <= 256:  # a dictionary look-up beats building a Categorical (~50 us) for a few rows
                index = {p: i for i, p in enumerate(prefs)}
                row_code = np.array([index.get(v, len(prefs)) if isinstance(v, str) else len(prefs)
                                     for v in values.tolist()], dtype=np.int64)
            else:
                row_code = pd.Categorical(values, categories=prefs).codes
                row_code = np.where(row_code < 0, len(prefs), row_code).astype(np.int64)
        else:
            row_code = np.full(len(frame), len(prefs), dtype=np.int64)
        if self._channels is None:  # the rules' part depends on the policy set only: built once
            self._channels = self._channel_codes()
        table, names = self._channels
        return ChannelTable(table, row_code, list(names))

    def _channel_codes(self) -> tuple[np.ndarray, list[str]]:
        rules = self.rules
        offers = self.policy_set.offers
        names: list[str] = []
        index: dict[str, int] = {}

        def code(channel: str) -> int:
            if channel not in index:
                index[channel] = len(names)
                names.append(channel)
            return index[channel]

        prefs = list(PREFERRED_TO_CHANNEL)
        table = np.zeros((len(rules) + 1, len(prefs) + 1), dtype=np.int64)
        for p, rule in enumerate(rules):
            if rule.suppresses:  # never a candidate
                table[p, :] = -1
                continue
            allowed = allowed_channels(rule, offers[rule.offer])
            for j in range(len(prefs) + 1):
                if rule.action.channel != PREFERRED:
                    table[p, j] = code(rule.action.channel)
                    continue
                mapped = PREFERRED_TO_CHANNEL[prefs[j]] if j < len(prefs) else None
                table[p, j] = code(mapped if mapped in allowed else allowed[0])
        table[len(rules), :] = -1
        return table, names

    def reachable(self, frame: pd.DataFrame, attribute: str, values: list[Any],
                  on: dt.date | None = None, *, rows: np.ndarray | None = None) -> np.ndarray:
        """Per row: whether *some* value of `attribute` among `values` gives the row at least one candidate.

        `frame` need not hold `attribute`. Exact: rows are grouped by their classes on every other rule
        input (members of a group answer every other test alike), one representative per group is tried
        with each value, and the answer is broadcast back. Used to skip work that only matters for rows
        an attribute could bring a candidate to (e.g. churn reasons, whose attributions are slow).
        `rows`: answer for these positions of `frame` only (as for `frame.iloc[rows]`, without taking every
        column of a wide frame).
        """
        n = len(frame) if rows is None else len(rows)
        if n == 0:
            return np.zeros(0, dtype=bool)
        others = [plan for plan in self._plans if plan.name != attribute]
        columns = self._columns(frame, skip=attribute)
        if rows is not None:
            columns = {name: Column(col.values[rows], col.missing[rows]) for name, col in columns.items()}
        codes: list[np.ndarray] = []
        cards: list[int] = []
        for plan in others:
            code, card = _codes(plan, columns[plan.name])
            codes.append(code)
            cards.append(card)
        if codes:
            _, first, inverse = _unique_rows(codes, cards, n)
        else:
            first, inverse = np.zeros(1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.check_columns([*frame.columns, attribute])
        # a group's answer never changes for a policy set and day: a real-time caller works it out once
        tag = (attribute, tuple(values), self._day(on))
        keys = [tag + k for k in zip(*(c[first].tolist() for c in codes), strict=True)] if codes else [tag]
        answer = [self._reach_memo.get(key) for key in keys]
        todo = np.array([i for i, a in enumerate(answer) if a is None], dtype=np.int64)
        if len(todo):
            reps = first[todo]
            k = len(reps)
            # every representative with every value (value-major), evaluated as the frame of those rows would be
            trial = {name: Column(np.tile(col.values[reps], len(values)), np.tile(col.missing[reps], len(values)))
                     for name, col in columns.items()}
            plan = next((p for p in self._plans if p.name == attribute), None)
            if plan is not None:  # no rule reads it: every value gives the same answer
                series = pd.Series(np.repeat(np.asarray(values, dtype=object), k))
                col = prepare_column(attribute, series, self._vocabulary.get(attribute))
                _check_numeric(plan, series, col)
                trial[attribute] = col
            ev = self._evaluate_columns({p.name: trial[p.name] for p in self._plans}, k * len(values), on)
            has_class = np.array([bool(c) for c in ev.considered] or [False], dtype=bool)  # suppressed: none
            has = has_class[ev.classes].reshape(len(values), k).any(axis=0)
            if len(self._reach_memo) + k > MEMO_CLASSES:
                self._reach_memo.clear()
            for i, h in zip(todo.tolist(), has.tolist(), strict=True):
                answer[i] = self._reach_memo[keys[i]] = h
        return np.array(answer, dtype=bool)[inverse]

    def candidates(self, frame: pd.DataFrame, on: dt.date | None = None) -> pd.DataFrame:
        """Every considered (rule, offer, channel) per row, long format, for arbitration.

        Columns: row (position in `frame`), subscriber_id (when present), rank (0 = the policy winner),
        rule_id, offer_id, channel, stage, priority, offer_cost, value_kept, and churn_probability and
        reason when the frame has them. Rows with no matching rule have no candidates.
        """
        fc = self.flat_candidates(frame, on)
        rules = self.rules
        offers = self.policy_set.offers
        rows, pos = fc.rows, fc.positions
        take = _picker(pos)
        channel_names = np.array([*fc.channel_names, None], dtype=object)
        out = pd.DataFrame({
            "row": rows, "rank": fc.rank, "rule_id": take([r.id for r in rules]),
            "offer_id": take([r.offer for r in rules]),
            "channel": channel_names[fc.channel],
            "stage": take([r.stage for r in rules]),
            "priority": np.asarray([r.priority for r in rules] + [0], dtype=np.int64)[pos],
            "offer_cost": np.asarray([offers[r.offer].cost if r.offer else 0.0 for r in rules] + [0.0])[pos],
            "value_kept": np.asarray([offers[r.offer].value_kept if r.offer else 0.0 for r in rules] + [0.0])[pos],
        })
        if "subscriber_id" in frame.columns:
            out.insert(1, "subscriber_id", column_values(frame, "subscriber_id")[rows])
        for col in ("churn_probability", "reason"):  # what arbitration needs next to each candidate
            if col in frame.columns:
                out[col] = column_values(frame, col)[rows]
        return out  # already in (row, rank) order

    def matches_offer(self, frame: pd.DataFrame, offer_id: str, on: dt.date | None = None) -> pd.DataFrame:
        """Forward matching: per row, the rules giving `offer_id` that match (offer eligible), if any.

        Looks at every matching rule, also those after a winner or a `stop`, because the question is
        "whom does this offer suit", not "who gets it today".
        """
        ev = self.evaluate(frame, on)
        gives = {i for i, r in enumerate(self.rules) if r.offer == offer_id}
        per_class = np.array([",".join(self.rules[p].id for p in m if p in gives) for m in ev.matched] or [""],
                             dtype=object)
        rules_col = per_class[ev.classes] if ev.n_rows else np.zeros(0, dtype=object)
        return pd.DataFrame({"offer_rules": rules_col}, index=frame.index)

    # -----------------------------------------------------------------------------------------
    def resolve_channels(self, frame: pd.DataFrame, positions: np.ndarray) -> np.ndarray:
        """The channel of the rule at `positions[i]` (evaluation order) for row i of `frame`."""
        rules = self.rules
        offers = self.policy_set.offers
        out = np.full(len(positions), None, dtype=object)
        preferred: np.ndarray | None = None
        for p in np.unique(positions):
            if p >= len(rules) or rules[p].suppresses:
                continue
            rows = np.flatnonzero(positions == p)
            rule = rules[p]
            allowed = allowed_channels(rule, offers[rule.offer])
            if rule.action.channel != PREFERRED:
                out[rows] = rule.action.channel
                continue
            if preferred is None:
                preferred = frame["preferred_channel"].map(PREFERRED_TO_CHANNEL).to_numpy(dtype=object)
            mapped = preferred[rows]
            ok = np.isin(mapped, np.array(allowed, dtype=object))
            out[rows] = np.where(ok, mapped, allowed[0])
        return out


def allowed_channels(rule: Rule, offer: Any) -> list[str]:
    """The offer's channels this rule may use, in the offer's order (its `exclude_channels` removed)."""
    excluded = set(rule.action.exclude_channels)
    return [ch for ch in offer.channels if ch not in excluded]


# ---------------------------------------------------------------------------------------------
# Classes of rule inputs
# ---------------------------------------------------------------------------------------------
def _unique_rows(codes: list[np.ndarray], cards: list[int], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct combinations of per-attribute codes: (keys, first row of each, row -> combination)."""
    key, size = np.zeros(n, dtype=np.int64), 1
    for code, card in zip(codes, cards, strict=True):
        if size * card >= _KEY_LIMIT:
            _, key = np.unique(key, return_inverse=True)
            key = key.reshape(-1).astype(np.int64)
            size = int(key.max()) + 1 if n else 1
        key = key * card + code
        size *= card
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return uniq, first, inverse.reshape(-1).astype(np.int64)


def _plans(conditions: list[Condition], attributes: set[str],
           vocabulary: dict[str, Attribute] | None = None) -> list[_Plan]:
    vocabulary = vocabulary or DECISION_ATTRIBUTES
    left: dict[str, set[float]] = {a: set() for a in attributes}
    right: dict[str, set[float]] = {a: set() for a in attributes}
    cats: dict[str, set[str]] = {a: set() for a in attributes}
    for cond in conditions:
        for t in iter_tests(cond):
            if t.op == "missing":
                continue
            values = t.value if t.op in ("in", "not_in") else (t.value,)
            if vocabulary[t.attribute].kind == "categorical":
                cats[t.attribute].update(str(v) for v in values)
                continue
            if vocabulary[t.attribute].kind != "numeric":
                continue
            for v in values:
                if t.op in ("gte", "lt", "eq", "ne", "in", "not_in"):
                    left[t.attribute].add(float(v))
                if t.op in ("gt", "lte", "eq", "ne", "in", "not_in"):
                    right[t.attribute].add(float(v))
    plans = []
    for name in sorted(attributes):
        kind = vocabulary[name].kind
        if kind == "numeric":
            plans.append(_Plan(name, kind, left=np.array(sorted(left[name]), dtype=float),
                               right=np.array(sorted(right[name]), dtype=float)))
        else:
            plans.append(_Plan(name, kind, values=tuple(sorted(cats[name]))))
    return plans


def _codes(plan: _Plan, col: Column) -> tuple[np.ndarray, int]:
    """Class code per row and the number of codes for one attribute."""
    if plan.kind == "numeric":
        x = col.values
        code = (np.searchsorted(plan.left, x, side="right") + np.searchsorted(plan.right, x, side="left"))
        code = code.astype(np.int64)
        k = len(plan.left) + len(plan.right)
        code[col.missing] = k + 1
        return code, k + 2
    if plan.kind == "boolean":
        code = col.values.astype(np.int64)
        code[col.missing] = 2
        return code, 3
    k = len(plan.values)
    if len(col.values) <= 256:  # a dictionary look-up beats building a Categorical (~50 us) for a few rows
        index = {v: i for i, v in enumerate(plan.values)}
        code = np.array([index.get(v, k) if isinstance(v, str) else k for v in col.values.tolist()], dtype=np.int64)
    else:
        code = pd.Categorical(col.values, categories=list(plan.values)).codes.astype(np.int64)
    code[code < 0] = k
    code[col.missing] = k + 1
    return code, k + 2


def _check_numeric(plan: _Plan, series: pd.Series | np.ndarray, col: Column) -> None:
    if plan.kind != "numeric" or series.dtype.kind in "biuf":
        return
    series = pd.Series(series) if not isinstance(series, pd.Series) else series
    bad = col.missing & series.notna().to_numpy() & (series.astype(str).str.strip() != "").to_numpy()
    if bad.any():
        examples = ", ".join(repr(v) for v in series[bad].astype(str).unique()[:3])
        raise DataError(f"column '{plan.name}': wrong type, expected numbers (e.g. {examples})")


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return _py(v)


def _picker(positions: np.ndarray):
    """Vectorised lookup of a per-rule attribute; the position len(rules) means 'no rule' -> None."""
    def take(values: list[Any]) -> np.ndarray:
        table = np.empty(len(values) + 1, dtype=object)
        table[: len(values)] = values
        table[len(values)] = None
        return table[positions]

    return take


# ---------------------------------------------------------------------------------------------
# Message templates
# ---------------------------------------------------------------------------------------------
def format_value(v: Any, spec: str, kind: str) -> str:
    """How a template prints one value (see the module docs)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    v = _py(v)
    if kind == "boolean" or isinstance(v, bool):
        text = "yes" if v in (True, 1, "true", "True") else "no"
        return format(text, spec) if spec else text
    if kind == "numeric":
        try:
            f = float(v)
        except (TypeError, ValueError):
            return format(str(v), spec) if spec else str(v)
        if spec:
            return format(f, spec)
        return str(int(f)) if f.is_integer() else f"{f:.2f}"
    return format(str(v), spec) if spec else str(v)


def render(template: str, frame: pd.DataFrame | Mapping[str, Any], rows: np.ndarray,
           attributes: dict[str, Attribute] | None = None) -> np.ndarray:
    """Render `template` for the given row positions of `frame`, once per distinct combination of its
    fields' values (a million rows of "{tenure_months} months together" are a few hundred strings, shared).

    `frame`: a frame, or column name -> values. `attributes`: what each field is (the policy set's
    `vocabulary`, so declared attributes print by their kind); the built-ins when not given."""
    parts = list(string.Formatter().parse(template))
    codes, words = [], []
    for _literal, name, spec, _conv in parts:
        if name is None:
            continue
        attr = (attributes or DECISION_ATTRIBUTES).get(name)
        kind = attr.kind if attr is not None else "categorical"
        c, uniques = pd.factorize(np.asarray(frame[name])[rows], use_na_sentinel=True)
        codes.append(np.where(c < 0, len(uniques), c))
        words.append([format_value(u, spec or "", kind) for u in uniques] + [""])
    if not codes:
        return np.full(len(rows), "".join(lit for lit, *_ in parts), dtype=object)
    combos, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    rendered = []
    for combo in combos.tolist():
        text, k = [], 0
        for literal, name, _spec, _conv in parts:
            text.append(literal)
            if name is not None:
                text.append(words[k][combo[k]])
                k += 1
        rendered.append("".join(text))
    return np.array(rendered, dtype=object)[np.asarray(inverse).reshape(-1)]
