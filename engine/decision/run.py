"""Use cases the CLI (and later the API) call: each loads its inputs, runs the library, publishes outputs.

Why a service layer: `retain decide` on a file and a future real-time lookup share everything but
I/O. Keeping file handling here keeps `decide.py` pure (frame in, decisions out).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import Settings
from engine.data.io import failpoint, read_table
from engine.decision.contact import append_history, read_history
from engine.decision.decide import ProgressFn, decide_frame
from engine.decision.publish import log_decision_run, write_decisions
from engine.model.registry import load_model


@dataclass
class DecisionRunResult:
    summary: dict[str, Any]
    files: dict[str, Path]
    mlflow_run_id: str | None


def load_policy_engine(policy_dir: str | Path):
    """Load, validate and compile a policy set. A set with errors raises and is never used."""
    from engine.policy import PolicyEngine, load_policy_set

    return PolicyEngine(load_policy_set(policy_dir))


def learned_rates(settings: Settings, learned: Mapping[tuple[str, str], float] | bool,
                  policy_dir: str | Path | None) -> Mapping[tuple[str, str], float] | None:
    """decide's default for every engine: True reads the rates learned from ingested outcomes (shrunk toward
    the policy set's priors), False uses the priors only, a mapping is used as given."""
    if learned is True:
        from engine.feedback.learning import learned_acceptance

        return learned_acceptance(settings, policies=policy_dir)
    return None if learned is False else learned


EMP_TAG, EMP_SHARE_TAG = "emp_threshold", "emp_contact_share"


def resolve_risk_grades(settings: Settings, loaded: Any) -> Settings:
    """The settings a run grades with: unchanged, or under `risk_grades.mode: emp` with 'high' set to the churn
    model's EMP threshold (its version tag `emp_threshold`; engine/config.py RiskGrades) and 'medium' kept
    below it. One line naming the version when it carries no EMP threshold."""
    grades = settings.risk_grades
    if grades.mode != "emp":
        return settings
    from engine.errors import ConfigError

    raw = (getattr(loaded, "tags", None) or {}).get(EMP_TAG)
    try:
        high = float(raw) if raw is not None else float("nan")
    except ValueError:
        high = float("nan")
    if not 0 < high < 1:
        version = getattr(loaded, "version", None) or getattr(loaded, "uri", "?")
        raise ConfigError(f"risk_grades.mode is 'emp' but model version {version} carries no EMP threshold",
                          hint="retrain with `retain train` (it measures EMP on the hold-out), or set it with "
                               "`retain uplift emp --data LABELLED --save`")
    medium = grades.medium if grades.medium < high else high / 2
    return settings.model_copy(update={"risk_grades": grades.model_copy(update={"high": high, "medium": medium})})


def uplift_for(settings: Settings, policy_engine: Any, uplift: Any = True) -> Any:
    """The uplift model `arbitration: incremental_value` uses, resolved once per caller: True loads the
    registered `models:/uplift@champion` (None when there is none: the offers' prior effects are used and the
    summary says so), False forces the priors, anything else is used as given. Other modes load nothing."""
    if getattr(policy_engine.policy_set, "arbitration", None) != "incremental_value":
        return None
    if uplift is True:
        from engine.uplift.registry import load_uplift

        return load_uplift(settings)
    return None if uplift is False else uplift


def decide_file(input_path: str | Path, out_dir: str | Path, *, settings: Settings, model: str | None = None,
                policy_dir: str | Path | None = None, log_run: bool = True, contact_history: str | Path | None = None,
                run_date: dt.date | None = None, learned: Mapping[tuple[str, str], float] | bool = True,
                record: bool = True, progress: ProgressFn | None = None, uplift: Any = True) -> DecisionRunResult:
    """Decide for every subscriber in a file and publish decisions + work orders into `out_dir`.

    The defaults are `retain decide`'s, decided here once for every caller: acceptance rates learned from
    ingested outcomes apply (`learned=True`; False: the priors only; or a mapping to use), and the run is
    recorded in the decision store so outcomes can be ingested against it. With `contact_history`, the
    file's contacts feed the contact rules and this run's contacts are appended to it (outcome 'pending').

    Order, so that the store and the published folder never disagree about a run that went out: the run is
    recorded first (one transaction), then the folder is published; if publishing fails the record is
    removed again. A process killed between the two leaves a recorded run with no published orders, which
    is harmless (nothing was sent) and visible in `retain feedback runs`; a published run is always in
    the store.
    `uplift`: see `uplift_for` (only `arbitration: incremental_value` uses it).
    """
    policy_engine = load_policy_engine(policy_dir or settings.policy_dir)  # fail fast, before heavy work
    history = read_history(contact_history)
    frame = read_table(input_path, what="subscriber table")
    loaded = load_model(settings, model)
    settings = resolve_risk_grades(settings, loaded)
    learned = learned_rates(settings, learned, policy_dir)
    decisions = decide_frame(frame, loaded=loaded, policy_engine=policy_engine, settings=settings,
                             source=str(input_path), history=history, run_date=run_date, learned=learned,
                             progress=progress, uplift=uplift_for(settings, policy_engine, uplift))
    del frame  # the decisions table holds what is still needed: a million raw rows are ~0.3 GiB
    decisions.summary["input"] = str(Path(input_path).resolve())
    if record:
        from engine.feedback.ingest import record_run
        from engine.feedback.store import open_store

        record_run(settings, decisions.table, decisions.summary, work_orders=decisions.work_orders)
        failpoint("decide:recorded")
        try:
            files = write_decisions(decisions, out_dir)
        except BaseException:
            store = open_store(settings)
            with store.transaction() as conn:
                store.delete_run(conn, decisions.run_id)
            raise
    else:
        files = write_decisions(decisions, out_dir)
    if contact_history:
        offered = decisions.table[decisions.table["status"] == "offer"]
        contacts = offered[["subscriber_id", "channel", "offer_id"]].assign(contacted_on=decisions.run_date)
        files["contact_history"] = append_history(contact_history, history, contacts)
    run_id = log_decision_run(settings, decisions, files) if log_run else None
    return DecisionRunResult(summary=decisions.summary, files=files, mlflow_run_id=run_id)


def policy_target(settings: Settings, policy_dir: str | Path, model: str | None = "champion", uplift: Any = True):
    """The target policy of an off-policy evaluation (engine.uplift.evaluate.evaluate_policy's `target_actions`):
    the shared decide function with the policy set in `policy_dir` - its arbitration mode, the uplift model when
    it is `incremental_value` - on the logged subscribers' raw rows, on each run's own decision date, without
    exploration; the action is the policy's choice before the control group is held back (held-out subscribers
    keep their would-be offer)."""
    import numpy as np
    import pandas as pd

    def target_actions(frame: pd.DataFrame) -> pd.DataFrame:
        loaded = load_model(settings, model)
        engine = load_policy_engine(policy_dir)
        raw = frame[[c for c in [*loaded.input_columns, "subscriber_id"] if c in frame.columns]]
        effect = uplift_for(settings, engine, uplift)
        days = (frame["decided_on"].astype(str).str[:10] if "decided_on" in frame.columns
                else pd.Series([None] * len(frame), index=frame.index))
        parts = []
        for day in pd.unique(days):  # each logged run decided again on its own date (offer validity, due dates)
            rows = raw[(days == day).to_numpy()] if day is not None else raw
            t = decide_frame(rows, loaded=loaded, policy_engine=engine, settings=settings, source="logged decisions",
                             run_date=dt.date.fromisoformat(day) if day else None, uplift=effect,
                             explore=False).table
            parts.append(t.assign(_row=np.flatnonzero((days == day).to_numpy()) if day is not None
                                  else np.arange(len(frame))))
        table = pd.concat(parts, ignore_index=True).set_index("_row").sort_index()
        chosen = table["status"].isin(["offer", "control"]).to_numpy()
        return pd.DataFrame({"offer_id": np.where(chosen, table["offer_id"].to_numpy(dtype=object), None),
                             "channel": np.where(chosen, table["channel"].to_numpy(dtype=object), None)})

    return target_actions
