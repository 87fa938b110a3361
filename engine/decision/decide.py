"""Deciding: raw subscriber rows -> scored, explained, segmented, policy-matched, arbitrated decisions.

One public entry, `decide_frame`, for one subscriber or millions; every entry point (CLI, HTTP service,
Spark, workbench) calls it. It is two steps with explicit state between them:

1. `assess` (engine/decision/assess.py) - per subscriber, pure per row: validate -> score -> grade ->
   segments -> explain (only rows whose decision can depend on the reason) -> policy candidates ->
   contact rules -> expected net value of each candidate. The same row gives the same answer alone or in
   any batch; Spark executors run it in `mapInPandas`.
2. `constrain` (engine/decision/constrain.py) - run level, over a `RunState` (budget and capacity left,
   control group, capacity-grading cut-offs): allocation within budget and channel capacity, control
   group, decision table, work orders, summary. The state is updated with what was used.

Capacity-based risk grades are the one run-level input to step 1; `assess` reads their cut-offs from the
state (see engine/decision/assess.py).

`decide_frame(..., scored=True)` starts from rows already scored - a decisions table of an earlier run,
or a policy test case - and keeps their churn probability, grade, segments and reasons: step 1 without the
model (`assess_scored(explain=False)`), then the same step 2. `retain policy simulate`, `match`, `explain`
and `test` decide this way, so what they report is what `retain decide` does on the same rows, date and
settings (arbitration, contact rules, control group, budget and capacity included); engine/decision/whatif.py
runs them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.data.frames import column_values
from engine.data.schema import ID
from engine.decision.assess import (
    CHUNK_ROWS,
    Assessment,
    ProgressFn,
    assess,
    assess_scored,
    explain_rows,
    score_rows,
)
from engine.decision.constrain import Decisions, RunState, constrain, new_run_id, render_messages
from engine.decision.orders import due_date, work_orders
from engine.errors import DataError
from engine.model.churn import PROBABILITY
from engine.model.registry import LoadedModel

#: What a row decided from scores it already carries must have (a decisions table has them all).
SCORED_COLUMNS = (ID, "opt_out", PROBABILITY, "risk_grade", "value_tier")
#: Columns a decision run writes; an earlier run's are dropped before deciding again on its table.
DECISION_COLUMNS = ("control", "policy_rule", "policy_offer", "matched_rules", "offer_id", "channel", "rule_id",
                    "stage", "priority", "p_accept", "offer_cost", "channel_cost", "expected_saved_value",
                    "net_value", "status", "blocked_reason", "note", "message", "policy_hash", "model_version",
                    "decision_run", "decided_on", "explored", "propensity", "tau")

__all__ = ["Assessment", "Decisions", "ProgressFn", "RunState", "assess", "constrain", "decide_frame", "due_date",
           "new_run_id", "render_messages", "score", "scored_rows", "work_orders"]


def score(frame: pd.DataFrame, loaded: LoadedModel, settings: Settings, *,
          progress: ProgressFn | None = None, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """Scores, segments and reasons for every row whose grade is in `explain_risk_grades` (no policies).

    For analysis and benchmarks; deciding uses `assess`, which also skips rows no reason can help.
    """
    scored = score_rows(frame, loaded, settings, progress=progress, chunk_rows=chunk_rows)
    rows = np.flatnonzero(np.isin(column_values(scored, "risk_grade", object), list(settings.explain_risk_grades)))
    explain_rows(scored, rows, loaded, progress=progress, chunk_rows=chunk_rows)
    return scored


def scored_rows(frame: pd.DataFrame, *, source: str = "input") -> pd.DataFrame:
    """An already-scored table ready for `assess_scored`: an earlier run's decision columns dropped, the
    contact flag read as true/false, positions 0..n-1. Raises one DataError naming missing columns."""
    from engine.data.flags import parse_flags

    if len(frame) == 0:
        raise DataError(f"{source}: the table has no rows")
    missing = [c for c in SCORED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: not a scored table, missing column(s) {missing}",
                        hint="policy commands decide on a decisions table of `retain decide` (e.g. "
                             "out/decisions.parquet)")
    out = frame.drop(columns=[c for c in DECISION_COLUMNS if c in frame.columns]).reset_index(drop=True)
    out[ID] = out[ID].astype(str).to_numpy(dtype=object)
    out["opt_out"] = parse_flags(out["opt_out"], "opt_out", source).fillna(False).to_numpy(dtype=bool)
    p = pd.to_numeric(out[PROBABILITY], errors="coerce").to_numpy(dtype=float)
    bad = ~((p >= 0) & (p <= 1))
    if bad.any():
        example = frame[PROBABILITY].iloc[int(np.flatnonzero(bad)[0])]
        raise DataError(f"{source}: column '{PROBABILITY}': {int(bad.sum())} value(s) not a probability between 0 "
                        f"and 1 (e.g. {example})")
    out[PROBABILITY] = p
    return out


def scored_model(frame: pd.DataFrame) -> LoadedModel:
    """A stand-in for the model of a table scored by an earlier run (named by its model_version column)."""
    version = None
    if "model_version" in frame.columns and len(frame):
        first = frame["model_version"].iloc[0]
        version = None if pd.isna(first) else str(first)
    return LoadedModel(uri=version or "scored input", name="scored input", version=version, run_id=None, model=None)


def decide_frame(frame: pd.DataFrame, *, loaded: LoadedModel | None = None, policy_engine: Any, settings: Settings,
                 run_id: str | None = None, run_date: dt.date | None = None, source: str = "input",
                 history: pd.DataFrame | None = None, learned: Mapping[tuple[str, str], float] | None = None,
                 progress: ProgressFn | None = None, state: RunState | None = None,
                 scored: bool = False, uplift: Any = None, explore: bool = True) -> Decisions:
    """Decide for every subscriber in `frame` (one row or millions).

    `state`: the run's budget and capacity left (and control group, capacity-grading cut-offs); from the
    settings when not given. It is updated in place with what this call used, so a caller deciding in
    several calls against one allowance passes the same state each time.
    `scored=True`: `frame` already carries scores, grades, segments and reasons (a decisions table of an
    earlier run): they are kept, the model is not needed (see the module docs).
    `uplift`: the uplift model for `arbitration: incremental_value` (engine.uplift.registry.load_uplift;
    engine.decision.run.uplift_for resolves it once per process); None uses the offers' prior effects and
    the summary's `effect` says so.
    `explore`: apply the policy set's exploration share (engine/decision/constrain.py); False decides without
    it (policy test cases, the target policy of an off-policy evaluation).
    """
    state = state if state is not None else RunState.from_settings(settings, run_id=run_id)
    if run_id:
        state.run_id = run_id
    run_date = run_date or dt.date.today()
    if scored:
        rows = scored_rows(frame, source=source)
        assessment = assess_scored(rows, loaded=loaded or scored_model(frame), policy_engine=policy_engine,
                                   settings=settings, run_date=run_date, history=history, learned=learned,
                                   progress=progress, explain=False, source=source, uplift=uplift)
    else:
        if loaded is None:
            raise TypeError("decide_frame needs the loaded model (or scored=True for already-scored rows)")
        assessment = assess(frame, loaded=loaded, policy_engine=policy_engine, settings=settings,
                            run_date=run_date, history=history, learned=learned, source=source,
                            state=state, progress=progress, uplift=uplift)
    return constrain(assessment, state, progress=progress, explore=explore)
