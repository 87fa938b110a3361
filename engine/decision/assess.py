"""Per-subscriber work: everything about a subscriber that does not depend on who else is in the run.

`assess` turns raw subscriber rows into an `Assessment`: validated inputs, the model's score (derived
signals, churn probability, value tier), the risk grade, segments, the churn reason for the rows whose
decision can depend on it, every policy candidate with its channel, whether contact rules allow it, and
its expected net value. It is pure per row: the same row gives the same answer alone or in any batch,
so the front desk, the HTTP service, a Spark executor (`mapInPandas`) and tonight's batch all agree.
What depends on the whole run (budget, channel capacity, control group) is `constrain`'s job
(engine/decision/constrain.py), which takes explicit state.

Capacity-based risk grades (`risk_grades.capacity_high`) are the one run-level input to per-row work,
because grades decide which rules match. They are handled as probability cut-offs held in the run's
state: the top `capacity_high` probabilities of a batch fix the 'high' cut-off (ties at the cut-off share
the grade), and every row is then graded by thresholds. A batch computes the cut-offs from its own rows
and records them in the state; a single subscriber (or a Spark partition) is graded with cut-offs
passed in. Without cut-offs, capacity grading ranks within the rows given, as it always has.

Why only some rows are explained: attributions cost ~30-70 us a row, the slow part of a run. A row's
reason is computed when its risk grade is in `explain_risk_grades` *and* some value of the reason
would give it at least one candidate (the policy engine answers that exactly per class of rule inputs,
`PolicyEngine.reachable`); for every other row the reason cannot change the decision, and is 'none'.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.config import RiskGrades, Settings
from engine.data.frames import column_values, frame_of, with_columns
from engine.data.schema import ID, LABEL_COLUMNS
from engine.decision.arbitration import acceptance_rates, eligible, preference_order
from engine.decision.contact import blocked_reasons, read_history
from engine.decision.validate import validate_declared, validate_rows
from engine.model.churn import PROBABILITY
from engine.model.registry import LoadedModel
from engine.model.segments import graded, is_prepaid, labels, lifecycle_stage, need_group, value_tier
from engine.vocabulary import NO_REASON, OUTBOUND_CHANNELS, REASON_VALUES

if TYPE_CHECKING:
    from engine.decision.constrain import RunState

ProgressFn = Callable[[str, int, int], None]
CHUNK_ROWS = 200_000
INCREMENTAL = "incremental_value"
CHUNK_SMALL = 64
REASON_COLUMNS = ("reason", "reason_share", "reason_signal")


@dataclass
class Assessment:
    """The per-subscriber half of a decision run.

    `scored`: one row per subscriber (positions 0..n-1, RangeIndex): inputs, derived signals, churn
    probability, risk grade, value tier, lifecycle stage, need group, prepaid flag, reason.
    `candidates`: one row per (subscriber, candidate rule that can give an offer), in (row, rank) order;
    rank 0 is the policy winner. Columns: row, subscriber_id, rank, rule_id, offer_id, channel, stage,
    priority, offer_cost, value_kept, p_accept (the rate used), p_prior (the offer's prior for the reason),
    p_learned (the learned rate, NaN when none), channel_cost, total_cost, expected_saved_value, net_value,
    contactable (False when the channel is outbound and contact rules block the subscriber); under
    `arbitration: incremental_value` also tau (the offer's incremental effect on churn), and the expected
    saved value is tau x value kept x horizon instead of P(churn) x P(accept) x value kept x horizon. This
    flat frame is what the run-level step allocates over.
    `matched_rules`: per row, the candidate list in evaluation order, comma-joined (with the suppression
    that ends it, if any).
    `blocked`: per row, why outbound contact is not allowed today ('' when it is).
    `suppressed_by`: per row, the position (evaluation order) of the suppression rule that is its first
    matching rule, or -1. Such a subscriber has no candidate.
    """

    scored: pd.DataFrame
    candidates: pd.DataFrame
    matched_rules: np.ndarray
    blocked: np.ndarray
    run_date: dt.date
    settings: Settings
    policy_engine: Any
    loaded: LoadedModel
    suppressed_by: np.ndarray | None = None
    effect_note: str | None = None  # incremental_value: where tau came from (uplift model, or the priors)

    def __len__(self) -> int:
        return len(self.scored)

    @property
    def prefer(self) -> str:
        """How a subscriber's candidates are ranked: the policy set's `arbitration` mode."""
        return str(getattr(self.policy_engine.policy_set, "arbitration", "best_value"))

    def best(self) -> np.ndarray:
        """Per row, the index (into `candidates`) of its best candidate before run-level constraints, or -1.

        Among the contactable candidates: under `arbitration: first` the lowest rank, whatever its net value;
        under `best_value` and `incremental_value` the highest positive net value (ties by priority, then
        rank). This is what the subscriber gets when budget and capacity allow.
        """
        c = self.candidates
        ok = np.flatnonzero(column_values(c, "contactable") & eligible(column_values(c, "net_value"), self.prefer))
        out = np.full(len(self.scored), -1, dtype=np.int64)
        if len(ok) == 0:
            return out
        rows = column_values(c, "row")[ok]
        order = preference_order(rows, column_values(c, "rank")[ok], column_values(c, "priority")[ok],
                                 column_values(c, "net_value")[ok], self.prefer)
        first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
        out[rows[first]] = ok[first]
        return out


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


# ---------------------------------------------------------------------------------------------
# Risk grades
# ---------------------------------------------------------------------------------------------
def capacity_cutoffs(probability: np.ndarray, grades: RiskGrades) -> tuple[float, float]:
    """The probability cut-offs that make the top `capacity_high` rows 'high' and the next
    `capacity_medium` 'medium' (-inf when the batch is smaller than the capacity)."""
    assert grades.capacity_high is not None
    p = np.sort(np.asarray(probability, dtype=float))[::-1]
    n_high = grades.capacity_high
    n_medium = n_high + (grades.capacity_medium or 0)
    high = float(p[n_high - 1]) if len(p) >= n_high else -np.inf
    medium = -np.inf if len(p) < n_medium else float(p[n_medium - 1])
    medium = high if not grades.capacity_medium else medium  # no medium grade without a medium capacity
    return high, medium


def grade(probability: np.ndarray, settings: Settings, state: RunState | None = None) -> np.ndarray:
    """Risk grade per row: configured thresholds, or the run's capacity cut-offs (see the module docs)."""
    p = np.asarray(probability, dtype=float)
    grades = settings.risk_grades
    if grades.capacity_high is None:
        high, medium = grades.high, grades.medium
    elif state is not None and state.risk_cutoffs is not None:
        high, medium = state.risk_cutoffs
    else:
        high, medium = capacity_cutoffs(p, grades)
        if state is not None:
            state.risk_cutoffs = (high, medium)
    return graded(p, high, medium)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def score_rows(frame: pd.DataFrame, loaded: LoadedModel, settings: Settings, *, source: str = "input",
               state: RunState | None = None, progress: ProgressFn | None = None,
               chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """Validate once, score with the model in chunks, grade and segment. No reasons yet.

    Returns a new frame (RangeIndex) sharing the input's column data; label columns are dropped.
    """
    return _score_rows(frame, loaded, settings, source=source, state=state, progress=progress,
                       chunk_rows=chunk_rows)[0]


def _takes_features(method: Any) -> bool:
    """Whether a model method accepts `features=` (models logged before `score` did still load)."""
    return _accepts_features(getattr(method, "__func__", method))


@functools.lru_cache(maxsize=64)
def _accepts_features(function: Any) -> bool:
    """(Once per model class's function: reading a signature costs ~20 us a call.)"""
    try:
        return "features" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _score_rows(frame: pd.DataFrame, loaded: LoadedModel, settings: Settings, *, source: str,
                state: RunState | None, progress: ProgressFn | None,
                chunk_rows: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """`score_rows`, plus the model's feature frame when the rows are few (CHUNK_SMALL): `explain` then reuses
    it instead of computing it again (~0.6 ms a call). Big batches recompute features per explained chunk
    rather than hold a feature frame of every row."""
    valid = validate_rows(frame, source=source)
    label_columns = {c.name for c in LABEL_COLUMNS}  # (not `labels`, the segments helper used below)
    out = valid.copy(deep=False)
    for col in [c for c in out.columns if c in label_columns]:
        del out[col]
    out.index = pd.RangeIndex(len(out))
    model = loaded.model
    total = len(out)
    parts: list[pd.DataFrame] = []
    features = None
    if total <= min(CHUNK_SMALL, chunk_rows) and _takes_features(model.score):
        features = model.features(out)
        parts.append(model.score(out, features=features))
        if progress:
            progress("scoring", total, total)
    else:
        for start, stop in _chunks(total, chunk_rows):
            parts.append(model.score(out.iloc[start:stop] if (start, stop) != (0, total) else out))
            if progress:
                progress("scoring", stop, total)
    scores = {col: (np.concatenate([column_values(p, col) for p in parts]) if len(parts) > 1
                    else column_values(parts[0], col)) for col in parts[0].columns}
    new: dict[str, Any] = {col: scores[col] for col in model.derived_columns}

    def column(name: str) -> np.ndarray:  # as `out[name]` after the columns above were assigned
        return new[name] if name in new else column_values(out, name)

    new[PROBABILITY] = scores[PROBABILITY]
    new["risk_grade"] = grade(scores[PROBABILITY], settings, state)
    tiers = scores.get("value_tier")
    if settings.value_tiers.method == "kmeans" and tiers is not None and not pd.isna(tiers).all():
        new["value_tier"] = np.asarray(tiers, dtype=object)
    else:
        new["value_tier"] = value_tier(column("arpu_mean_3m"), settings.value_tiers)
    new["lifecycle_stage"] = lifecycle_stage(column("tenure_months"), column("data_change"), column("voice_change"),
                                             settings.lifecycle)
    new["need_group"] = need_group(column("plan"), column("age_group"))
    new["is_prepaid"] = is_prepaid(column("plan"))
    return with_columns(out, new), features


def explain_rows(scored: pd.DataFrame, rows: np.ndarray, loaded: LoadedModel, *,
                 progress: ProgressFn | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
    """Add reason, reason_share, reason_signal to `scored`: the model's for `rows`, 'none' elsewhere."""
    for col, values in reason_columns(scored, rows, loaded, progress=progress, chunk_rows=chunk_rows).items():
        scored[col] = values


def reason_columns(scored: pd.DataFrame, rows: np.ndarray, loaded: LoadedModel, *,
                   progress: ProgressFn | None = None, chunk_rows: int = CHUNK_ROWS,
                   features: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """reason, reason_share, reason_signal per row of `scored`: the model's for `rows`, 'none' elsewhere.
    `features`: the model's feature frame of every row of `scored`, when the caller kept it (few rows)."""
    n = len(scored)
    reason = np.full(n, NO_REASON, dtype=object)
    share = np.zeros(n, dtype=float)
    signal = np.full(n, "", dtype=object)
    if len(rows) == 0:
        return {"reason": reason, "reason_share": share, "reason_signal": signal}
    needs = getattr(loaded.model, "input_columns", None)
    # the model's columns only, so chunks of a big batch do not copy the rest (a few rows: not worth a copy)
    source = scored[list(needs)] if n > CHUNK_SMALL and needs and set(needs) <= set(scored.columns) else scored
    for start, stop in _chunks(len(rows), chunk_rows):
        part = rows[start:stop]
        if features is not None:  # the rows' features are all explain reads (the rows give the index only)
            feats = features if len(part) == n else features.iloc[part]
            r = loaded.model.explain(feats, features=feats)
        else:
            r = loaded.model.explain(source if len(part) == n else source.iloc[part])
        codes, names = pd.factorize(column_values(r, "reason", object), use_na_sentinel=False)
        reason[part] = labels(names, codes)  # one str per reason, not one per row (see engine/model/segments.py)
        share[part] = column_values(r, "reason_share", float)
        signal[part] = column_values(r, "reason_signal", object)
        if progress:
            progress("reasons", stop, len(rows))
    return {"reason": reason, "reason_share": share, "reason_signal": signal}


def reason_values(loaded: LoadedModel) -> list[str]:
    """Every reason the model can give: its reason families and 'none'."""
    families = list((getattr(loaded.model, "spec", None) or {}).get("reasons", {}) or {})
    return list(dict.fromkeys([*families, *REASON_VALUES]))


def rows_to_explain(scored: pd.DataFrame, policy_engine: Any, settings: Settings, loaded: LoadedModel,
                    run_date: dt.date) -> np.ndarray:
    """Rows whose decision can depend on the reason: an explained grade, and a candidate under some reason."""
    graded = np.flatnonzero(np.isin(column_values(scored, "risk_grade", object), list(settings.explain_risk_grades)))
    if len(graded) == 0:
        return graded
    reachable = policy_engine.reachable(scored, "reason", reason_values(loaded), run_date,
                                        rows=None if len(graded) == len(scored) else graded)
    return graded[reachable]


# ---------------------------------------------------------------------------------------------
# Candidates and their value
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _categories(names: tuple[str, ...]) -> pd.CategoricalDtype:
    """The dtype of a candidates column (rule ids, offers, channels, stages): the same few per policy set, so
    made once (checking a set of categories costs ~40 us a column on every call)."""
    return pd.CategoricalDtype(pd.Index(list(names), dtype=object))


def _candidates(scored: pd.DataFrame, policy_engine: Any, settings: Settings, blocked: np.ndarray,
                learned: Mapping[tuple[str, str], float] | None,
                run_date: dt.date, uplift: Any = None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    fc = policy_engine.flat_candidates(scored, run_date)
    rules = policy_engine.rules
    offers = policy_engine.policy_set.offers
    rows, pos = fc.rows, fc.positions

    def per_rule(values: list[Any], dtype: Any) -> np.ndarray:
        return np.asarray(values, dtype=dtype)[pos]

    def categorical(codes: np.ndarray, names: list[str]) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, dtype=_categories(tuple(names)), validate=False)

    rule_ids = [r.id for r in rules]
    offer_names = list(dict.fromkeys(r.offer for r in rules if r.offer is not None))
    # a suppression is never a candidate (flat_candidates leaves it out): its codes below are placeholders
    offer_code_of_rule = np.array([offer_names.index(r.offer) if r.offer is not None else 0 for r in rules] + [0],
                                  dtype=np.int64)
    stage_names = list(dict.fromkeys(r.stage for r in rules))
    stage_code_of_rule = np.array([stage_names.index(r.stage) for r in rules] + [0], dtype=np.int64)
    offer_code = offer_code_of_rule[pos]

    # P(accept | offer, reason) from a small (offer x reason) grid, then looked up per candidate
    reason_codes, reason_names = pd.factorize(column_values(scored, "reason", object))
    grid_offer = np.repeat(np.asarray(offer_names, dtype=object), len(reason_names))
    grid_reason = np.tile(np.asarray(reason_names, dtype=object), len(offer_names))
    priors = {name: getattr(offers[name], "acceptance", None) or {} for name in offer_names}
    shape = (len(offer_names), max(len(reason_names), 1))
    if len(reason_names):
        grids = [g.reshape(shape) for g in acceptance_rates(grid_offer, grid_reason, settings.arbitration, learned,
                                                            priors)]
    else:
        grids = [np.zeros(shape) for _ in range(3)]
    p_accept, p_prior, p_learned = ((g[offer_code, reason_codes[rows]] if len(rows) else np.zeros(0))
                                    for g in grids)

    channel_cost_of = np.array([settings.channels[ch].cost if ch in settings.channels else 0.0
                                for ch in fc.channel_names] + [0.0], dtype=float)
    channel_cost = channel_cost_of[fc.channel]
    offer_cost = per_rule([offers[r.offer].cost if r.offer else 0.0 for r in rules] + [0.0], float)
    value_kept = per_rule([offers[r.offer].value_kept if r.offer else 0.0 for r in rules] + [0.0], float)
    total_cost = offer_cost + channel_cost
    saved = (column_values(scored, PROBABILITY, float)[rows] * p_accept * value_kept
             * settings.arbitration.horizon_months)
    outbound = np.array([ch in OUTBOUND_CHANNELS for ch in fc.channel_names] + [False], dtype=bool)
    contactable = ~(outbound[fc.channel] & (blocked[rows] != ""))

    cands = frame_of({
        "row": rows,
        ID: column_values(scored, ID, object)[rows],
        "rank": fc.rank,
        "rule_id": categorical(pos, rule_ids),
        "offer_id": categorical(offer_code, offer_names),
        "channel": categorical(fc.channel, fc.channel_names),
        "stage": categorical(stage_code_of_rule[pos], stage_names),
        "priority": per_rule([r.priority for r in rules] + [0], np.int64),
        "offer_cost": offer_cost,
        "value_kept": value_kept,
        "p_accept": p_accept,
        "p_prior": p_prior,
        "p_learned": p_learned,
        "channel_cost": channel_cost,
        "total_cost": total_cost,
        "expected_saved_value": saved,
        "net_value": saved - total_cost,
        "contactable": contactable,
    })
    if getattr(policy_engine.policy_set, "arbitration", None) == INCREMENTAL:
        from engine.uplift.effect import incremental_net_value, priors_from_offers

        cands = incremental_net_value(cands, scored.iloc[rows], uplift, priors_from_offers(offers),
                                      settings.arbitration.horizon_months)
    ev = fc.evaluation
    listed = ev.listed or ev.considered
    matched_text = np.array([",".join(rule_ids[p] for p in c) for c in listed] or [""], dtype=object)
    matched = matched_text[ev.classes] if ev.n_rows else np.zeros(0, dtype=object)
    suppressed_by = fc.suppressed_by if fc.suppressed_by is not None else np.full(len(scored), -1, dtype=np.int64)
    return cands, matched, suppressed_by


def assess_scored(scored: pd.DataFrame, *, loaded: LoadedModel, policy_engine: Any, settings: Settings,
                  run_date: dt.date, history: pd.DataFrame | None = None,
                  learned: Mapping[tuple[str, str], float] | None = None,
                  progress: ProgressFn | None = None, explain: bool = True, source: str = "input",
                  uplift: Any = None, features: pd.DataFrame | None = None) -> Assessment:
    """The rest of `assess` for rows already scored and graded (see `score_rows`).

    `explain=False` keeps the reasons the rows already carry (a decisions table of an earlier run: what
    `retain policy simulate / match / explain / test` start from); rows without a reason column get 'none'.
    The policy set's declared attributes are checked and typed here (`validate_declared`).
    `uplift`: the uplift model (engine.uplift.registry.load_uplift) for `arbitration: incremental_value`;
    None uses the offers' prior effects (`effect:` in offers.yaml), and `effect_note` says so.
    `features`: the model's feature frame of `scored`'s rows when `assess` kept it (a few rows), so explaining
    does not compute it again.
    """
    history = read_history(None) if history is None else history
    declared = getattr(policy_engine.policy_set, "declared", None) or {}
    if declared:
        typed = validate_declared(scored, declared, source=source)
        for name in declared:
            scored[name] = typed[name]
    if explain:
        scored = with_columns(scored, reason_columns(scored, rows_to_explain(scored, policy_engine, settings, loaded,
                                                                             run_date), loaded, progress=progress,
                                                     features=features))
    else:
        for col, fill in (("reason", NO_REASON), ("reason_share", 0.0), ("reason_signal", "")):
            if col not in scored.columns:
                scored[col] = fill
    blocked = blocked_reasons(scored[ID], scored["opt_out"], history, run_date, settings.contact).to_numpy()
    cands, matched, suppressed_by = _candidates(scored, policy_engine, settings, blocked, learned, run_date, uplift)
    if progress:
        progress("policies", 1, 1)
    note = None
    if getattr(policy_engine.policy_set, "arbitration", None) == INCREMENTAL:
        note = effect_source(uplift)
    return Assessment(scored=scored, candidates=cands, matched_rules=matched, blocked=blocked, run_date=run_date,
                      settings=settings, policy_engine=policy_engine, loaded=loaded, suppressed_by=suppressed_by,
                      effect_note=note)


def effect_source(uplift: Any) -> str:
    """Where incremental_value's tau comes from, in words: the uplift model, or the priors (PRIOR_NOTE)."""
    from engine.uplift.effect import effect_note

    note = effect_note(uplift)
    if note:
        return note
    uri = getattr(uplift, "uri", None) or "in memory"
    version = getattr(uplift, "version", None)
    return f"uplift model {uri}" + (f" (version {version})" if version else "")


def assess(frame: pd.DataFrame, *, loaded: LoadedModel, policy_engine: Any, settings: Settings,
           run_date: dt.date | None = None, history: pd.DataFrame | None = None,
           learned: Mapping[tuple[str, str], float] | None = None, source: str = "input",
           state: RunState | None = None, progress: ProgressFn | None = None, uplift: Any = None) -> Assessment:
    """Everything per subscriber, for one row or millions: validate, score, grade, segment, explain,
    candidates, contact rules, expected net value. Pure per row.

    `state` is read only for capacity-based risk grades (its `risk_cutoffs`; see the module docs).
    """
    run_date = run_date or dt.date.today()
    declared = getattr(getattr(policy_engine, "policy_set", None), "declared", None)
    if declared:  # the operator's own columns: present and well typed, before the slow part
        frame = validate_declared(frame, declared, source=source)
    scored, features = _score_rows(frame, loaded, settings, source=source, state=state, progress=progress,
                                   chunk_rows=CHUNK_ROWS)
    return assess_scored(scored, loaded=loaded, policy_engine=policy_engine, settings=settings, run_date=run_date,
                         history=history, learned=learned, progress=progress, source=source, uplift=uplift,
                         features=features)
