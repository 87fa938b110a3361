"""What-if runs of `retain decide`'s decision function: the decision side of `retain policy simulate`, `match`,
`explain` and `test`.

Each runs `decide_frame(..., scored=True)` (engine/decision/decide.py) - the function `retain decide` runs,
started from rows that already carry their scores: a decisions table of an earlier run, or a policy test
case. Arbitration (`first` / `best_value` / `incremental_value`), exploration, contact rules, the control group,
budget and capacity all apply, with the settings given (the same `Settings` object decide reads) and the
decision date. So on the same rows, date and settings, what these report is what decide does; there is no
second arbitration anywhere. Exploration draws by (decision date, subscriber id), so simulate, match and
explain draw exactly what decide draws; test cases (`run_cases`) are decided without it, since a case states
what the rules give.

The policy package builds the figures, audiences, explanations and case verdicts from the results
(engine.policy.simulate / match / explain / testing); it never imports this package, because the decision
engine depends on the policy package and not the reverse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from engine.decision.arbitration import acceptance_rate, acceptance_rates
from engine.decision.assess import assess_scored
from engine.decision.constrain import Decisions, RunState
from engine.decision.decide import decide_frame, scored_model, scored_rows

Learned = Mapping[tuple[str, str], float] | None


def _settings(settings: Any) -> Any:
    if settings is not None:
        return settings
    from engine.config import load_settings

    return load_settings()


def _day(engine: Any, on: dt.date | None) -> dt.date:
    return on or getattr(engine, "decision_date", None) or dt.date.today()


#: tracking URI -> (the uplift model incremental_value what-ifs use, its registered version, when last checked)
_UPLIFT: dict[str, tuple[Any, str | None, float]] = {}
#: How often a long-running process (the workbench) asks the registry whether the uplift champion moved.
UPLIFT_CHECK_SECONDS = 30.0


def _uplift(settings: Any, engine: Any) -> Any:
    """The uplift model `arbitration: incremental_value` decides with (engine.decision.run.uplift_for); None
    for the other modes.

    Why cached and re-checked: loading the model takes a second, and what-ifs come one per click; but the
    workbench runs for days, so at most every UPLIFT_CHECK_SECONDS it asks the registry which version the
    alias names (one small query) and loads again when that changed.
    """
    import time

    from mlflow.exceptions import MlflowException

    from engine.decision.run import uplift_for
    from engine.uplift.registry import uplift_version

    if getattr(engine.policy_set, "arbitration", None) != "incremental_value":
        return None
    key = str(getattr(settings, "tracking_uri", ""))
    now = time.monotonic()
    cached = _UPLIFT.get(key)
    if cached is not None and now - cached[2] < UPLIFT_CHECK_SECONDS:
        return cached[0]
    try:
        mv = uplift_version(settings)
        version = None if mv is None else str(mv.version)
    except MlflowException:  # none registered (yet)
        version = None
    if cached is not None and cached[1] == version:
        _UPLIFT[key] = (cached[0], version, now)
        return cached[0]
    model = uplift_for(settings, engine) if version is not None else None
    _UPLIFT[key] = (model, version, now)
    return model


def decide_scored(engine: Any, frame: pd.DataFrame, *, on: dt.date | None = None, settings: Any = None,
                  history: pd.DataFrame | None = None, learned: Learned = None, source: str = "input",
                  state: RunState | None = None, explore: bool = True) -> Decisions:
    """`retain decide`'s decision function on an already-scored table, with the policy engine `engine`.

    `settings` (default load_settings()), `history` (contact history) and `learned` (learned acceptance) are
    what decide would be given; `state` the run's allowance (from the settings when not given); `explore`
    False decides without the policy set's exploration share.
    """
    engine.check_columns(frame)  # the policy set's own columns first, in its words
    settings = _settings(settings)
    return decide_frame(frame, policy_engine=engine, settings=settings, run_date=_day(engine, on),
                        history=history, learned=learned, source=source, state=state, scored=True,
                        run_id="what-if", explore=explore, uplift=_uplift(settings, engine))


def acceptance(offer_ids: np.ndarray, reasons: np.ndarray, policy_set: Any, settings: Any,
               learned: Learned = None) -> np.ndarray:
    """P(accept | offer, reason) as decide uses it: learned rate, else the offer's prior in offers.yaml (for the
    reason, else its default), else the settings' acceptance_default."""
    priors = {k: o.acceptance or {} for k, o in policy_set.offers.items()}
    return acceptance_rate(np.asarray(offer_ids, dtype=object), np.asarray(reasons, dtype=object),
                           settings.arbitration, learned, priors)


def acceptance_used(table: pd.DataFrame, policy_set: Any, settings: Any, learned: Learned = None) -> pd.DataFrame:
    """Per (offer, reason) of the offers sent: how many, the offer's prior, the learned rate (when there is one)
    and the rate decide used - learned rates beside the priors of offers.yaml."""
    sent = table[table["status"] == "offer"]
    cols = ["offer_id", "reason", "offers", "prior", "learned", "used"]
    if len(sent) == 0:
        return pd.DataFrame(columns=cols)
    pairs = sent.groupby(["offer_id", "reason"], observed=True).size().rename("offers").reset_index()
    priors = {k: o.acceptance or {} for k, o in policy_set.offers.items()}
    used, prior, measured = acceptance_rates(pairs["offer_id"].to_numpy(dtype=object),
                                             pairs["reason"].to_numpy(dtype=object), settings.arbitration, learned,
                                             priors)
    pairs["prior"], pairs["learned"], pairs["used"] = prior, measured, used
    return pairs.sort_values(["offers"], ascending=False, kind="stable").reset_index(drop=True)[cols]


def simulate(engine: Any, frame: pd.DataFrame, *, against: Any = None, on: dt.date | None = None,
             settings: Any = None, history: pd.DataFrame | None = None, learned: Learned = None,
             source: str = "input") -> Any:
    """`retain policy simulate`: what decide would do with `engine`'s policy set on the scored table `frame`
    (and with `against`'s, for the comparison). Returns engine.policy.simulate.Simulation."""
    from engine.policy.simulate import figures

    settings = _settings(settings)
    day = _day(engine, on)
    run = decide_scored(engine, frame, on=day, settings=settings, history=history, learned=learned, source=source)
    baseline = None
    if against is not None:
        baseline = decide_scored(against, frame, on=day, settings=settings, history=history, learned=learned,
                                 source=source).table
    return figures(engine, run.table, run.summary, on=day,
                   acceptance=acceptance_used(run.table, engine.policy_set, settings, learned), against=against,
                   baseline=baseline)


def match_offer(engine: Any, frame: pd.DataFrame, offer_id: str, on: dt.date | None = None, *,
                settings: Any = None, history: pd.DataFrame | None = None, learned: Learned = None,
                source: str = "input") -> pd.DataFrame:
    """`retain policy match`: who qualifies for `offer_id` and who decide would actually send it to."""
    from engine.policy.match import audience, check_offer

    check_offer(engine, offer_id)
    day = _day(engine, on)
    table = decide_scored(engine, frame, on=day, settings=settings, history=history, learned=learned,
                          source=source).table
    return audience(engine, frame, offer_id, table, day)


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def explain(engine: Any, record: dict[str, Any], on: dt.date | None = None, *, frame: pd.DataFrame | None = None,
            settings: Any = None, history: pd.DataFrame | None = None, learned: Learned = None,
            source: str = "input") -> Any:
    """`retain policy explain`: every rule's verdict for one subscriber, then the arbitration step of decide.

    `frame`: the whole scored table the record comes from; the run is decided on it (budget and capacity are
    shared by everyone in a run). Without it, the record is decided alone. Returns
    engine.policy.explain.Explanation with `candidates`, `status` and `why` filled in.
    """
    from engine.policy.explain import arbitration_lines, explain_record, why_text

    settings = _settings(settings)
    day = _day(engine, on)
    one = pd.DataFrame([record])
    table = decide_scored(engine, frame if frame is not None else one, on=day, settings=settings, history=history,
                          learned=learned, source=source).table
    at = [0]
    if frame is not None:
        at = np.flatnonzero(table["subscriber_id"].astype(str).to_numpy() == str(record.get("subscriber_id", "")))
    row = table.iloc[int(at[0]) if len(at) else 0]
    decision = {k: _plain(row.get(k)) for k in ("offer_id", "channel", "rule_id", "stage", "priority", "status",
                                                "note", "message", "matched_rules", "blocked_reason", "p_accept",
                                                "net_value")}
    if decision["status"] not in ("offer", "control"):
        for k in ("offer_id", "channel", "message"):
            decision[k] = None
    # the per-subscriber half again, for this row alone: pure per row, so the same candidates as in the run
    assessment = assess_scored(scored_rows(one, source=source), loaded=scored_model(one), policy_engine=engine,
                               settings=settings, run_date=day, history=history, learned=learned, explain=False,
                               source=source)
    ex = explain_record(engine.policy_set, record, day, engine=engine, decision=decision)
    blocked = str(assessment.blocked[0]) if len(assessment.blocked) else ""
    ex.candidates = arbitration_lines(assessment.candidates, decision, engine.policy_set.arbitration, blocked)
    ex.status = decision["status"]
    ex.why = why_text(ex, decision, settings)
    return ex


def run_cases(engine: Any, cases: list[Any], *, settings: Any = None, learned: Learned = None) -> list[Any]:
    """`retain policy test`: decide every case as `retain decide` would decide that one subscriber, and compare
    with what it expects (engine.policy.testing.compare_case).

    Each case goes alone through decide's function (arbitration, contact rules - a case with `opt_out: true`
    is not contacted on outbound channels -, budget and capacity with the settings' daily allowances). A case
    whose subscriber falls in the control group is compared with the offer decide records for it (the one it
    would have been sent).
    """
    from engine.policy.testing import compare_case

    settings = _settings(settings)
    vocabulary = engine.policy_set.vocabulary
    results = []
    for lc in cases:
        frame = pd.DataFrame([lc.record])
        for col in frame.columns:
            if vocabulary.get(col) is not None and vocabulary[col].kind == "numeric":
                frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
        table = decide_scored(engine, frame, on=lc.case.date, settings=settings, learned=learned,
                              source=lc.where, explore=False).table  # a case states what the rules give
        got = {c: _plain(table[c].iloc[0]) for c in table.columns}
        results.append(compare_case(lc, got, engine.policy_set))
    return results
