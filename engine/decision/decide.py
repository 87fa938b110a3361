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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Settings
from engine.decision.assess import CHUNK_ROWS, Assessment, ProgressFn, assess, explain_rows, score_rows
from engine.decision.constrain import Decisions, RunState, constrain, new_run_id, render_messages
from engine.decision.orders import due_date, work_orders
from engine.model.registry import LoadedModel

__all__ = ["Assessment", "Decisions", "ProgressFn", "RunState", "assess", "constrain", "decide_frame", "due_date",
           "new_run_id", "render_messages", "score", "work_orders"]


def score(frame: pd.DataFrame, loaded: LoadedModel, settings: Settings, *,
          progress: ProgressFn | None = None, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """Scores, segments and reasons for every row whose grade is in `explain_risk_grades` (no policies).

    For analysis and benchmarks; deciding uses `assess`, which also skips rows no reason can help.
    """
    scored = score_rows(frame, loaded, settings, progress=progress, chunk_rows=chunk_rows)
    rows = np.flatnonzero(np.isin(scored["risk_grade"].to_numpy(dtype=object), list(settings.explain_risk_grades)))
    explain_rows(scored, rows, loaded, progress=progress, chunk_rows=chunk_rows)
    return scored


def decide_frame(frame: pd.DataFrame, *, loaded: LoadedModel, policy_engine: Any, settings: Settings,
                 run_id: str | None = None, run_date: dt.date | None = None, source: str = "input",
                 history: pd.DataFrame | None = None, learned: Mapping[tuple[str, str], float] | None = None,
                 progress: ProgressFn | None = None, state: RunState | None = None) -> Decisions:
    """Decide for every subscriber in `frame` (one row or millions).

    `state`: the run's budget and capacity left (and control group, capacity-grading cut-offs); from the
    settings when not given. It is updated in place with what this call used, so a caller deciding in
    several calls against one allowance passes the same state each time.
    """
    state = state if state is not None else RunState.from_settings(settings, run_id=run_id)
    if run_id:
        state.run_id = run_id
    assessment = assess(frame, loaded=loaded, policy_engine=policy_engine, settings=settings,
                        run_date=run_date or dt.date.today(), history=history, learned=learned, source=source,
                        state=state, progress=progress)
    return constrain(assessment, state, progress=progress)
