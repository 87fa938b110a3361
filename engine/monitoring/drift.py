"""Drift and decay checks: does the model still see the world it was trained on, and still rank churners?

Why this shape: a nightly or monthly job must answer without anyone reading a notebook. So the check is a
library function on two DataFrames (`run_drift_check`) that returns a `DriftResult` with a status
("healthy" | "drift" | "decay"), an exit code (0 healthy, 1 drift or decay; errors raise a RetainError,
exit 2), a one-line status and a JSON summary whose format is a contract (`SUMMARY_SCHEMA`). The
statistics are Evidently's (HTML for people, JSON for machines); this module only chooses what to
measure, reads the numbers back from `snapshot.dict()` (never from the HTML) and applies the alert
thresholds of `engine.config.Drift`.

Four signals, each with its own threshold:
- **features**: Evidently's per-column drift test, chosen by Evidently per type and reference size
  (reference > 1,000 rows: Wasserstein distance for numbers, Jensen-Shannon for categories; smaller
  references: KS / chi-square / z p-values). Two rules, either alerts:
  - `important_features`: any of the `top_features` most important inputs (the model's own importance,
    `engine.monitoring.importance`) drifted. Without importances (no model and no champion to borrow them
    from) every feature counts as important: rule `any_feature`, any flagged feature alerts.
  - `features`: the share of drifted features reaches `drift_share` (Evidently's own "share of drifted
    columns" rule; its "Dataset Drift" verdict in the HTML uses only this rule and is relabelled so).
  Why both: a campaign that moves 5 of 23 inputs stays under a 30% share, yet one of them is the
  model's second strongest signal.
- **score**: the churn-probability distribution, always by normed Wasserstein distance. Why fixed: it
  is a single alarm, so a size-independent effect size keeps the false-alarm rate of a nightly job low
  whatever the batch size (a p-value test fires on trivial shifts at 200 k rows and 5% of nights at 800).
- **risk mix**: the high / medium / low grade shares, by PSI (the credit-risk industry's measure for
  grade migration), because call-centre capacity is planned on those shares.
- **quality** (only when the current table carries outcomes): ROC AUC, PR AUC, log loss, Brier score
  and calibration on current vs reference; alert ("decay") when ROC AUC fell by `auc_drop` or more.
  Decay outranks drift: a model that ranks churners worse needs retraining whatever the inputs did.

Big batches are sampled (seeded) down to `sample_rows`; the summary, the one-line status and the HTML
banner all say so.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from engine.config import Drift, RiskGrades
from engine.data.flags import parse_flags
from engine.errors import DataError
from engine.model.metrics import auc_standard_error, calibration_table, clip_probabilities, probability_metrics
from engine.monitoring.importance import Importance

Status = Literal["healthy", "drift", "decay"]
SUMMARY_SCHEMA = "retain.drift.summary/1"
PREDICTION = "churn_probability"
TARGET = "churn"
RISK_GRADE = "risk_grade"
GRADES = ("high", "medium", "low")
MISSING = "(missing)"
SCORE_METHOD = "wasserstein"
RISK_MIX_METHOD = "psi"
REPORT_HTML, REPORT_JSON, SUMMARY_JSON = "report.html", "report.json", "summary.json"
EXIT_CODES: dict[str, int] = {"healthy": 0, "drift": 1, "decay": 1}
#: Evidently switches from p-value tests to distance measures above this many reference rows.
SMALL_REFERENCE = 1000


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------
@dataclass
class Sampling:
    """How many rows a side had and how many the check used (seeded sample above `max_rows`)."""

    rows: int
    rows_used: int
    seed: int
    max_rows: int

    @property
    def applied(self) -> bool:
        return self.rows_used < self.rows

    def note(self, side: str) -> str:
        return (f"{side}: sampled {self.rows_used:,} of {self.rows:,} rows (seed {self.seed})" if self.applied
                else f"{side}: all {self.rows:,} rows")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rows_used": self.rows_used, "sampled": self.applied, "seed": self.seed,
                "max_rows": self.max_rows}


@dataclass
class DriftResult:
    """Everything a scheduler, a webhook receiver or a person needs from one check.

    `summary()` is the JSON contract (written as summary.json and POSTed to webhooks); `snapshot` is the
    Evidently snapshot behind report.html / report.json.
    """

    status: Status
    features: dict[str, dict[str, Any]]          # column -> kind, method, score, threshold, drifted
    drifted_features: list[str]
    drifted_share: float
    prediction: dict[str, Any] | None          # score drift: method, score, threshold, drifted, means
    risk_mix: dict[str, Any] | None            # grade shares on both sides, PSI, drifted
    quality: dict[str, Any] | None             # current / reference metrics, auc_drop, decayed
    alerts: list[str]                          # which rules tripped: important_features | any_feature,
                                               # features (share), score, risk_mix, auc
    thresholds: dict[str, Any]
    reference_sampling: Sampling
    current_sampling: Sampling
    notes: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)   # model, sources, mlflow run: set by callers
    important: dict[str, Any] | None = None    # importance rule: source, k, top features, drifted among them
    snapshot: Any = None                       # evidently.core.report.Snapshot
    seconds: float = 0.0
    checked_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def prediction_score(self) -> float | None:
        return None if self.prediction is None else self.prediction["score"]

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.prediction and self.prediction["drifted"])

    @property
    def auc_current(self) -> float | None:
        return _dig(self.quality, "current", "roc_auc")

    @property
    def auc_reference(self) -> float | None:
        return _dig(self.quality, "reference", "roc_auc")

    @property
    def one_line(self) -> str:
        """`DRIFT: 5/23 features drifted (22%, alert at 30%); score drift 0.61 (alert at 0.10); ...`."""
        t = self.thresholds
        n = len(self.features)
        parts = []
        imp = self.important or {}
        if imp.get("drifted"):
            if imp["rule"] == "any_feature":
                parts.append(f"rule any_feature fired (no importances, every feature counts): "
                             f"{', '.join(imp['drifted'][:6])}{' ...' if len(imp['drifted']) > 6 else ''} drifted")
            else:
                parts.append(f"rule important_features fired: top-{imp['k']} input(s) "
                             f"{', '.join(imp['drifted'])} drifted ({imp['source_short']})")
        parts += [f"{len(self.drifted_features)}/{n} features drifted ({self.drifted_share:.0%}, "
                 f"alert at {t['drift_share']:.0%})"
                 + (f": {', '.join(self.drifted_features[:6])}{' ...' if len(self.drifted_features) > 6 else ''}"
                    if self.drifted_features else "")]
        if self.prediction:
            parts.append(f"score drift {self.prediction['score']:.3f} (alert at {t['score_threshold']:.2f})")
        if self.risk_mix:
            parts.append(f"risk-mix PSI {self.risk_mix['score']:.3f} (alert at {t['risk_mix_threshold']:.2f})")
        if self.auc_current is not None:
            ref = self.auc_reference
            parts.append(f"ROC AUC {self.auc_current:.3f}"
                         + (f" vs {ref:.3f} reference (alert at a {t['auc_drop']:.2f} drop)" if ref is not None
                            else " (no labelled reference to compare)"))
        for sampling, side in ((self.current_sampling, "current"), (self.reference_sampling, "reference")):
            if sampling.applied:
                parts.append(sampling.note(side))
        return f"{self.status.upper()}: " + "; ".join(parts)

    def rules(self) -> list[dict[str, Any]]:
        """Every alert rule, whether it fired, and the features or values behind it (summary.json `rules`)."""
        t = self.thresholds
        out = []
        imp = self.important
        if imp is not None:
            out.append({"rule": imp["rule"], "fired": imp["rule"] in self.alerts, "features": imp["drifted"],
                        "detail": (f"any flagged feature (no importances: {imp['source']})"
                                   if imp["rule"] == "any_feature" else
                                   f"any of the top {imp['k']} inputs by {imp['source']}: {', '.join(imp['top'])}")})
        out.append({"rule": "features", "fired": "features" in self.alerts, "features": self.drifted_features,
                    "detail": f"share of drifted features {self.drifted_share:.0%} (alert at {t['drift_share']:.0%})"})
        if self.prediction:
            out.append({"rule": "score", "fired": "score" in self.alerts, "features": [],
                        "detail": f"score drift {self.prediction['score']:.3f} (alert at {t['score_threshold']})"})
        if self.risk_mix:
            out.append({"rule": "risk_mix", "fired": "risk_mix" in self.alerts, "features": [],
                        "detail": f"risk-mix PSI {self.risk_mix['score']:.3f} (alert at {t['risk_mix_threshold']})"})
        if self.quality and self.quality.get("auc_drop") is not None:
            out.append({"rule": "auc", "fired": "auc" in self.alerts, "features": [],
                        "detail": f"ROC AUC drop {self.quality['auc_drop']:.3f} (alert at {t['auc_drop']})"})
        return out

    def summary(self) -> dict[str, Any]:
        """The JSON status contract (see README 'Scheduled checks'); stable keys, JSON-able values."""
        return _jsonable({
            "schema": SUMMARY_SCHEMA,
            "status": self.status,
            "exit_code": self.exit_code,
            "one_line": self.one_line,
            "alerts": self.alerts,
            "checked_at": self.checked_at,
            "seconds": round(self.seconds, 2),
            **{k: self.context.get(k) for k in ("model", "reference_source", "current_source", "report_dir",
                                                 "mlflow_run_id")},
            "thresholds": self.thresholds,
            "sampling": {"current": self.current_sampling.to_dict(), "reference": self.reference_sampling.to_dict()},
            "rules": self.rules(),
            "features": {"count": len(self.features), "drifted_count": len(self.drifted_features),
                         "drifted_share": self.drifted_share, "drifted": self.drifted_features,
                         "alert": bool({"features", "important_features", "any_feature"} & set(self.alerts)),
                         "share_alert": "features" in self.alerts, "important": self.important,
                         "columns": self.features},
            "prediction": self.prediction,
            "risk_mix": self.risk_mix,
            "quality": self.quality,
            "notes": self.notes,
            "outputs": {"html": REPORT_HTML, "json": REPORT_JSON, "summary": SUMMARY_JSON},
        })


def _dig(obj: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only: numpy scalars to Python, NaN/inf to null (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _kind(series: pd.Series) -> str:
    """Coarse type used to compare two tables: a CSV int column and a Parquet float column agree."""
    if ptypes.is_bool_dtype(series):
        return "true/false"
    if ptypes.is_numeric_dtype(series):
        return "numbers"
    if ptypes.is_datetime64_any_dtype(series):
        return "dates"
    return "text"


def _names(cols: list[str]) -> str:
    return ", ".join(f"'{c}'" for c in cols)


def check_tables(reference: pd.DataFrame, current: pd.DataFrame, *, numeric: list[str], categorical: list[str],
                 prediction: str | None = None) -> None:
    """Refuse tables a drift check cannot compare, with one line naming every offending column.

    Why before Evidently: Evidently raises a stack trace for a column present on one side only, and
    silently computes nonsense for a column that is empty or changed type. A scheduled check must
    instead stop with exit code 2 and a message an operator can act on.
    """
    for side, df in (("reference", reference), ("current", current)):
        if len(df) == 0:
            raise DataError(f"the {side} table has no rows")
    wanted = [*categorical, *numeric, *([prediction] if prediction else [])]
    missing_ref = [c for c in wanted if c not in reference.columns]
    if missing_ref:
        raise DataError(f"the reference table lacks column(s) {_names(missing_ref)} the check needs",
                        hint="pass a reference with the model's input columns")
    missing_cur = [c for c in wanted if c not in current.columns]
    if missing_cur:
        raise DataError(f"the current table lacks column(s) present in the reference: {_names(missing_cur)}",
                        hint="export the current month with the same columns as the training data")
    for side, df in (("reference", reference), ("current", current)):
        empty = [c for c in wanted if df[c].isna().all()]
        if empty:
            raise DataError(f"the {side} table has entirely empty column(s) {_names(empty)}",
                            hint="fix the export; an empty column cannot be compared")
    problems = []
    for col in wanted:
        ref_kind, cur_kind = _kind(reference[col]), _kind(current[col])
        if col in categorical:  # booleans with gaps load as text from CSV; both compare as category labels
            ref_kind, cur_kind = (("text" if k == "true/false" else k) for k in (ref_kind, cur_kind))
        if ref_kind != cur_kind:
            problems.append(f"'{col}' (reference {ref_kind}, current {cur_kind})")
        elif (col in numeric or col == prediction) and ref_kind not in ("numbers", "true/false"):
            problems.append(f"'{col}' (expected numbers, both tables hold {ref_kind})")
    if problems:
        raise DataError(f"column(s) with different or wrong types: {'; '.join(problems)}",
                        hint="both tables must come from the same schema")


def binary_outcomes(series: pd.Series, column: str, side: str) -> pd.Series:
    """Outcomes as 1.0 / 0.0 / NaN (not yet known), parsed by `engine.data.flags.parse_flags`.

    Rows are not numbered in errors: the tables here may be samples of the file.
    """
    flags = parse_flags(series, column, f"the {side} table's outcomes", row_numbers=False)
    return flags.astype("Float64").astype(float)


def sample_rows(df: pd.DataFrame, max_rows: int, seed: int) -> tuple[pd.DataFrame, Sampling]:
    """A seeded random sample of at most `max_rows` rows, and how it was taken."""
    if len(df) <= max_rows:
        return df, Sampling(len(df), len(df), seed, max_rows)
    return df.sample(max_rows, random_state=seed), Sampling(len(df), max_rows, seed, max_rows)


# ---------------------------------------------------------------------------------------------
# Quality metrics (sklearn): the same numbers on both sides, including calibration
# ---------------------------------------------------------------------------------------------
def quality_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any] | None:
    """ROC AUC (with its standard error), PR AUC, log loss, Brier, ECE and the calibration table.

    The same computation as the training hold-out's (`engine.model.metrics`). None when only one class is
    present: ranking quality is undefined then.
    """
    y = np.asarray(y, dtype=int)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return None
    p = clip_probabilities(p)
    scores = probability_metrics(y, p)
    n_pos = int(y.sum())
    return {"rows": int(len(y)), "churn_rate": float(y.mean()), "mean_probability": float(p.mean()),
            "roc_auc": scores["roc_auc"], "roc_auc_se": auc_standard_error(scores["roc_auc"], n_pos, len(y) - n_pos),
            "pr_auc": scores["pr_auc"], "log_loss": scores["log_loss"], "brier": scores["brier"],
            "ece": scores["ece"], "calibration": calibration_table(y, p)}


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------
def _evidently_frame(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Only the compared columns, typed the way Evidently expects; missing categories become a level.

    Why a level: a jump in missing values (a broken export) is drift that an operator must see, and
    Evidently ignores NaN in categorical columns.
    """
    out = pd.DataFrame(index=df.index)
    for col in categorical:
        out[col] = df[col].astype("string").fillna(MISSING).astype(str)
    for col in numeric:
        out[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return out


def run_drift_check(reference: pd.DataFrame, current: pd.DataFrame, *, numeric: list[str], categorical: list[str],
                    prediction: str | None = PREDICTION, target: str | None = TARGET,
                    settings: Drift | None = None, risk_grades: RiskGrades | None = None,
                    risk_grade_column: str = RISK_GRADE, presampled: dict[str, Sampling] | None = None,
                    quality_baseline: dict[str, Any] | None = None, quality_baseline_source: str | None = None,
                    context: dict[str, Any] | None = None, importance: Importance | None = None,
                    importance_note: str | None = None) -> DriftResult:
    """Compare `current` with `reference`: feature drift, score drift, risk-mix shift and, with outcomes, decay.

    `numeric` / `categorical` are the model's raw input features (booleans count as categorical).
    `prediction` is the churn-probability column on both sides (None: no score or risk-mix check).
    Risk grades come from `risk_grade_column` when both tables carry it, else from `prediction` cut by
    `risk_grades`. Quality is measured when `target` is in the current table (rows with an empty
    outcome are left out); it is compared with the reference when the reference is labelled too.
    `presampled` records sampling a caller already did (to score fewer rows); it is reported as such.
    `quality_baseline` (a `quality_metrics` dict) replaces the reference table as the yardstick for decay:
    the service passes the model's training hold-out, so a reference *file* (possibly in-sample training
    data, whose AUC is optimistic) never decides decay; Evidently's classification section (which could
    only compare with the reference table) is then left out of the HTML, whose headline shows the baseline.
    `importance` (`engine.monitoring.importance`) ranks the inputs for the `important_features` rule; without
    it every feature counts as important (`any_feature`); `importance_note` says why there is none.
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset
    from evidently.tests import gte

    started = time.perf_counter()
    cfg = settings or Drift()
    grades = risk_grades or RiskGrades()
    numeric, categorical = list(numeric), list(categorical)
    features = [*categorical, *numeric]
    if not features:
        raise DataError("no feature columns to compare", hint="name the model's numeric and categorical inputs")
    if prediction and (prediction not in reference.columns or prediction not in current.columns):
        raise DataError(f"prediction column '{prediction}' is missing from the "
                        f"{'reference' if prediction not in reference.columns else 'current'} table",
                        hint="score the table with the model first (retain drift does this)")
    check_tables(reference, current, numeric=numeric, categorical=categorical, prediction=prediction)
    notes: list[str] = []

    seed = cfg.seed
    ref, ref_sampling = sample_rows(reference, cfg.sample_rows, seed)
    cur, cur_sampling = sample_rows(current, cfg.sample_rows, seed)
    if presampled:
        ref_sampling = presampled.get("reference", ref_sampling)
        cur_sampling = presampled.get("current", cur_sampling)
    if len(ref) <= SMALL_REFERENCE:
        notes.append(f"the reference has only {len(ref):,} rows, so Evidently tests features with p-values "
                     "(KS, chi-square, z) whose false-alarm rate is 5% per feature or more; use a reference of "
                     "more than 1,000 rows for distance-based tests")
    for sampling, side in ((cur_sampling, "current"), (ref_sampling, "reference")):
        if sampling.applied:
            notes.append(f"{sampling.note(side)}: tables above {sampling.max_rows:,} rows are sampled to keep "
                         "the check fast (drift.sample_rows)")

    # -- the frames Evidently sees: the same columns on both sides ------------------------------
    num_cols, cat_cols = list(numeric), list(categorical)
    ev_ref = _evidently_frame(ref, numeric, categorical)
    ev_cur = _evidently_frame(cur, numeric, categorical)
    if prediction:
        ev_ref[prediction] = pd.to_numeric(ref[prediction], errors="coerce").astype(float)
        ev_cur[prediction] = pd.to_numeric(cur[prediction], errors="coerce").astype(float)
        num_cols.append(prediction)
        if risk_grade_column in ref.columns and risk_grade_column in cur.columns:
            ev_ref[RISK_GRADE] = ref[risk_grade_column].astype("string").fillna(MISSING).astype(str)
            ev_cur[RISK_GRADE] = cur[risk_grade_column].astype("string").fillna(MISSING).astype(str)
            grade_source = f"column '{risk_grade_column}'"
        else:
            from engine.model.segments import risk_grade

            ev_ref[RISK_GRADE] = risk_grade(ev_ref[prediction], grades).astype(str)
            ev_cur[RISK_GRADE] = risk_grade(ev_cur[prediction], grades).astype(str)
            grade_source = f"{prediction} cut at high >= {grades.high}, medium >= {grades.medium}"
        cat_cols.append(RISK_GRADE)

    # -- outcomes ---------------------------------------------------------------------------------
    quality: dict[str, Any] | None = None
    classification = None
    quality_in_report = False
    if target and prediction and target in cur.columns:
        y_cur = binary_outcomes(cur[target], target, "current")
        labelled = y_cur.notna().to_numpy()
        cur_quality = quality_metrics(y_cur[labelled].to_numpy(), ev_cur[prediction].to_numpy()[labelled])
        ref_labelled = target in ref.columns
        if ref_labelled:
            y_ref = binary_outcomes(ref[target], target, "reference")
            ref_labelled = bool(y_ref.notna().all())
        if quality_baseline is not None:
            ref_quality, ref_quality_source = quality_baseline, quality_baseline_source or "quality baseline"
        elif target in ref.columns:
            ref_lab = y_ref.notna().to_numpy()
            ref_quality = quality_metrics(y_ref[ref_lab].to_numpy(), ev_ref[prediction].to_numpy()[ref_lab])
            ref_quality_source = quality_baseline_source or "the reference table"
        else:
            ref_quality, ref_quality_source = None, None
            notes.append(f"the reference has no '{target}' outcomes: quality is reported, not compared")
        if cur_quality is None:
            notes.append(f"current outcomes '{target}' hold one class only (or none): ROC AUC is undefined")
        if labelled.sum() < len(labelled):
            notes.append(f"{int((~labelled).sum()):,} current rows have no outcome yet: quality uses the "
                         f"{int(labelled.sum()):,} labelled rows")
        auc_drop = None
        noise = None
        decayed = False
        if cur_quality and ref_quality:
            auc_drop = ref_quality["roc_auc"] - cur_quality["roc_auc"]
            # A drop counts only when it is both large enough to matter and larger than chance on samples of
            # this size (1.96 standard errors of the difference): a few hundred labelled rows move AUC by 0.05.
            noise = 1.96 * float(np.hypot(ref_quality["roc_auc_se"], cur_quality["roc_auc_se"]))
            decayed = auc_drop >= cfg.auc_drop and auc_drop > noise
            if auc_drop >= cfg.auc_drop and not decayed:
                notes.append(f"ROC AUC fell {auc_drop:.3f}, within chance for these sample sizes (+/- {noise:.3f}):"
                             " not flagged as decay")
        quality = {"target": target, "labelled_rows": int(labelled.sum()), "current": cur_quality,
                   "reference": ref_quality, "reference_source": ref_quality_source, "auc_drop": auc_drop,
                   "auc_drop_noise": noise, "decayed": decayed}
        # Evidently's classification section needs fully labelled tables on both sides; its ROC AUC test
        # uses the same floor as the status (baseline AUC minus auc_drop).
        # With a separate baseline (the training hold-out) Evidently could only chart the reference *table*'s
        # quality, e.g. in-sample training rows: figures that contradict summary.json. Left out then; the
        # headline shows current vs baseline.
        quality_in_report = bool(cur_quality and ref_quality and labelled.all() and ref_labelled
                                 and len(np.unique(y_ref)) == 2 and quality_baseline is None)
        if quality_in_report:
            ev_cur[target] = y_cur.astype(int).to_numpy()
            ev_ref[target] = y_ref.astype(int).to_numpy()
            cat_cols.append(target)
            classification = [BinaryClassification(target=target, prediction_probas=prediction, pos_label=1)]
        elif cur_quality and quality_baseline is not None:
            notes.append(f"quality is compared with the {ref_quality_source} (figures in the headline); "
                         "Evidently's classification charts are left out because they could only compare with "
                         "the reference table")
        elif cur_quality:
            notes.append("the HTML report has no classification section (outcomes partly missing or reference "
                         "unlabelled); summary.json carries the quality numbers")

    definition = DataDefinition(numerical_columns=num_cols, categorical_columns=cat_cols,
                                classification=classification)
    metrics: list[Any] = [DataDriftPreset(columns=features, drift_share=cfg.drift_share,
                                          threshold=cfg.feature_threshold)]
    if prediction:
        metrics += [ValueDrift(column=prediction, method=SCORE_METHOD, threshold=cfg.score_threshold),
                    ValueDrift(column=RISK_GRADE, method=RISK_MIX_METHOD, threshold=cfg.risk_mix_threshold)]
    if quality_in_report:
        floor = ref_quality["roc_auc"] - cfg.auc_drop
        metrics.append(ClassificationPreset(probas_threshold=grades.high, rocauc_tests=[gte(floor)],
                                            **{f"{m}_tests": [] for m in ("accuracy", "precision", "recall",
                                                                          "f1score", "logloss", "tpr", "tnr",
                                                                          "fpr", "fnr")},
                                            **{f"{m}_by_label_tests": [] for m in ("f1score", "precision",
                                                                                   "recall", "rocauc")}))
    report = Report(metrics, include_tests=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = report.run(Dataset.from_pandas(ev_cur, data_definition=definition),
                              Dataset.from_pandas(ev_ref, data_definition=definition))
    data = snapshot.dict()

    # -- read the numbers back ------------------------------------------------------------------------
    drift_by_column = _value_drift(data)
    feature_rows: dict[str, dict[str, Any]] = {}
    for col in features:
        row = drift_by_column.get(col)
        if row is None:  # pragma: no cover - Evidently computes every requested column
            raise DataError(f"Evidently returned no drift result for column '{col}'")
        feature_rows[col] = {"kind": "categorical" if col in categorical else "numeric", **row}
    drifted = [c for c in features if feature_rows[c]["drifted"]]
    share = len(drifted) / len(features)

    prediction_row = risk_row = None
    if prediction:
        p = drift_by_column[prediction]
        prediction_row = {"column": prediction, **p, "mean_reference": float(ev_ref[prediction].mean()),
                          "mean_current": float(ev_cur[prediction].mean())}
        r = drift_by_column[RISK_GRADE]
        levels = [g for g in GRADES if g in set(ev_ref[RISK_GRADE]) | set(ev_cur[RISK_GRADE])] or sorted(
            set(ev_ref[RISK_GRADE]) | set(ev_cur[RISK_GRADE]))
        risk_row = {**r, "source": grade_source,
                    "reference": _shares(ev_ref[RISK_GRADE], levels), "current": _shares(ev_cur[RISK_GRADE], levels)}

    important = _important_rule(features, drifted, importance, importance_note, cfg.top_features)
    alerts = []
    if important and important["drifted"]:
        alerts.append(important["rule"])
    if share >= cfg.drift_share:
        alerts.append("features")
    if prediction_row and prediction_row["drifted"]:
        alerts.append("score")
    if risk_row and risk_row["drifted"]:
        alerts.append("risk_mix")
    if quality and quality["decayed"]:
        alerts.append("auc")
    status: Status = "decay" if "auc" in alerts else ("drift" if alerts else "healthy")
    thresholds = {"drift_share": cfg.drift_share, "top_features": cfg.top_features,
                  "feature_threshold": cfg.feature_threshold,
                  "feature_method": "Evidently default per column type and reference size",
                  "score_method": SCORE_METHOD, "score_threshold": cfg.score_threshold,
                  "risk_mix_method": RISK_MIX_METHOD, "risk_mix_threshold": cfg.risk_mix_threshold,
                  "auc_drop": cfg.auc_drop, "risk_grades": {"high": grades.high, "medium": grades.medium}}
    return DriftResult(status=status, features=feature_rows, drifted_features=drifted, drifted_share=share,
                       prediction=prediction_row, risk_mix=risk_row, quality=quality, alerts=alerts,
                       thresholds=thresholds, reference_sampling=ref_sampling, current_sampling=cur_sampling,
                       notes=notes, context=dict(context or {}), snapshot=snapshot, important=important,
                       seconds=time.perf_counter() - started)


def _important_rule(features: list[str], drifted: list[str], importance: Importance | None, note: str | None,
                    k: int) -> dict[str, Any] | None:
    """The importance rule: top-k inputs by importance, or every feature when there are no importances.

    None when disabled (`top_features: 0`). Importances that cover none of the checked columns (a foreign
    table checked with a champion's importances) count as no importances.
    """
    if k <= 0:
        return None
    ranked = importance.ranked(features) if importance is not None else []
    if ranked:
        top = ranked[:k]
        return {"rule": "important_features", "k": k, "source": importance.source,
                "source_short": importance.short or importance.source,
                "model_version": importance.model_version,
                "top": top, "shares": {c: round(importance.shares[c], 4) for c in top},
                "drifted": [c for c in top if c in drifted]}
    why = note or ("no importances given" if importance is None else
                   f"{importance.source} covers none of the checked columns")
    return {"rule": "any_feature", "k": len(features), "source": why, "source_short": why, "model_version": None,
            "top": list(features), "shares": {}, "drifted": list(drifted)}


def _shares(values: pd.Series, levels: list[str]) -> dict[str, float]:
    counts = values.value_counts(normalize=True)
    return {level: float(counts.get(level, 0.0)) for level in levels}


def _value_drift(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-column drift from snapshot.dict(): the ValueDrift metric value and its test's status."""
    status_by_metric = {t["metric_config"]["metric_id"]: t["status"] for t in data.get("tests", [])
                        if t.get("id") == "drift"}
    out: dict[str, dict[str, Any]] = {}
    for metric in data["metrics"]:
        cfg = metric.get("config", {})
        if cfg.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        status = status_by_metric.get(metric["id"])
        score = metric["value"]
        score = float(score) if score is not None else float("nan")
        out[cfg["column"]] = {"method": cfg.get("method"), "score": score, "threshold": cfg.get("threshold"),
                              "drifted": status == "FAIL" if status else False}
    return out


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
_EVIDENTLY_VERDICT = re.compile(r'"value": "Dataset Drift", "label": "Dataset Drift is (NOT )?detected\. '
                                r'Dataset drift detection threshold is ([0-9.]+)"')


def relabel_evidently_verdict(page: str, result: DriftResult) -> str:
    """Evidently's "Dataset Drift is (NOT) detected" counter, reworded as the one rule it is.

    Why: Evidently's dataset verdict applies only the share-of-columns rule, so under a DRIFT headline (an
    important input drifted) it said "Dataset Drift is NOT detected". The counter now names its rule and
    points at the verdict that sets the exit code.
    """
    def words(match: re.Match[str]) -> str:
        met = "not met" if match.group(1) else "met"
        label = (f"Evidently's share-of-columns rule (alert at {float(match.group(2)):.0%} of columns): {met}. "
                 f"Check status (exit code {result.exit_code}): {result.status.upper()}, see the headline.")
        return json.dumps({"value": "Share of drifted columns"})[1:-1] + ", " + json.dumps({"label": label})[1:-1]

    page = _EVIDENTLY_VERDICT.sub(words, page)
    # Should Evidently lay the counter out differently, its words still must not contradict the headline.
    return (page.replace("Dataset Drift is NOT detected", "Evidently's share-of-columns rule is not met")
            .replace("Dataset Drift is detected", "Evidently's share-of-columns rule is met"))


def _quality_table(result: DriftResult) -> str:
    """Current vs baseline quality, the numbers of summary.json (the baseline may be the training hold-out)."""
    q = result.quality or {}
    cur, ref = q.get("current") or {}, q.get("reference") or {}
    if not cur:
        return ""
    rows = []
    for key, label in (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"), ("log_loss", "log loss"), ("brier", "Brier"),
                       ("ece", "calibration error (ECE)")):
        r = ref.get(key)
        rows.append(f"<tr><td>{label}</td><td>{cur[key]:.3f}</td><td>{'-' if r is None else f'{r:.3f}'}</td></tr>")
    source = html.escape(str(q.get("reference_source") or "no labelled reference"))
    return ('<table id="retain-quality" style="border-collapse:collapse;margin-top:6px;font-size:13px">'
            f"<tr><th align=left>quality</th><th align=left>current ({cur['rows']:,} labelled rows)</th>"
            f"<th align=left>baseline: {source}</th></tr>" + "".join(rows) + "</table>")


def banner_html(result: DriftResult) -> str:
    """The headline of the HTML: our status (the exit code's), the rules that fired, quality, sampling."""
    colour = {"healthy": "#1b7f3b", "drift": "#b36b00", "decay": "#b00020"}[result.status]
    ctx = result.context
    model = ctx.get("model") or {}
    detail = result.one_line.split(": ", 1)[-1]
    fired = [r for r in result.rules() if r["fired"]]
    lines = [f'<span id="retain-verdict" style="font-size:20px"><b>{html.escape(result.status.upper())}</b> '
             f"(exit code {result.exit_code})</span> &mdash; retain drift check",
             html.escape(detail)]
    if fired:
        lines.append("rules that fired: " + "; ".join(
            html.escape(f"{r['rule']} ({r['detail']})" + (f": {', '.join(r['features'])}" if r["features"] else ""))
            for r in fired))
    else:
        lines.append("no alert rule fired: " + html.escape("; ".join(r["detail"] for r in result.rules())))
    lines.append("This headline is the check's verdict. Evidently's own \"share of drifted columns\" counter "
                 "below applies only the share rule; an important input drifting alerts even when that share "
                 "stays under its threshold.")
    if model:
        lines.append(f"model: {html.escape(str(model.get('uri') or model.get('name')))} "
                     f"(version {html.escape(str(model.get('version')))})")
    for key, label in (("reference_source", "reference"), ("current_source", "current")):
        if ctx.get(key):
            lines.append(f"{label}: {html.escape(str(ctx[key]))}")
    lines.append(html.escape(result.current_sampling.note("current") + "; "
                             + result.reference_sampling.note("reference")))
    lines += [html.escape(n) for n in result.notes]
    return (f'<div id="retain-status" style="font-family:sans-serif;padding:12px 18px;margin:0 0 8px 0;'
            f'border-left:8px solid {colour};background:#f6f6f6">'
            + "<br>".join(lines) + _quality_table(result) + "</div>")


def write_report(result: DriftResult, folder: str | Path) -> dict[str, Path]:
    """Write report.html (Evidently + status banner), report.json (Evidently) and summary.json into `folder`.

    Callers publish through `engine.data.io.staged_outputs`, so a failure leaves no partial report.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"html": folder / REPORT_HTML, "json": folder / REPORT_JSON, "summary": folder / SUMMARY_JSON}
    page = result.snapshot.get_html_str(as_iframe=False)
    page = relabel_evidently_verdict(page, result).replace("<body>", "<body>\n" + banner_html(result), 1)
    paths["html"].write_text(page, encoding="utf-8")
    result.snapshot.save_json(str(paths["json"]))
    paths["summary"].write_text(json.dumps(result.summary(), indent=2) + "\n", encoding="utf-8")
    return paths
