"""`retain drift` as one library call: files and a registered model in, a published report and a status out.

Why here and not in the CLI: the scheduled job, `retain demo` and tests all need the same sequence, and
its order is what makes "no partial report" true:

1. read the current table (and `--reference FILE`, or the reference sample logged with the model);
2. load the model (alias, version, URI; or `none` for a pure data-drift check);
3. validate both tables *before* scoring: against the subscriber schema, exactly as `retain decide` does, when
   the model's inputs are the built-in schema (the current table, and the reference when it is a file);
   then check both can be compared, so a missing column is named, not a CatBoost trace;
4. sample big tables (seeded) and score only the sample (`churn_probability` from the model);
5. run the check (`engine.monitoring.drift.run_drift_check`);
6. write report.html / report.json / summary.json in a private temporary folder, create the MLflow
   monitoring run and attach them, then POST the webhook (bounded by `drift.webhook_deadline_seconds` in
   total): it announces a check that is already fully recorded;
7. publish the files through `staged_outputs` (milliseconds). Any error before that leaves `--out`
   untouched (and no staging folder beside it), and a started MLflow run is deleted, so a failed check
   (exit code 2) leaves no trace but its one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api import types as ptypes

from engine.config import Settings
from engine.data.io import read_table, staged_outputs
from engine.data.schema import DatasetConfig, validate_subscribers
from engine.errors import ConfigError, DataError, mask_secrets
from engine.monitoring.drift import (
    PREDICTION,
    REPORT_HTML,
    REPORT_JSON,
    SUMMARY_JSON,
    TARGET,
    DriftResult,
    binary_outcomes,
    check_tables,
    quality_metrics,
    run_drift_check,
    sample_rows,
    write_report,
)

NO_MODEL = "none"
#: Columns that are never input features when roles are inferred without a model.
NOT_FEATURES = {TARGET, PREDICTION, "risk_grade", "churn_reason", "subscriber_id"}


@dataclass
class DriftRun:
    """A finished, published check: the result, where its files are, and its MLflow run."""

    result: DriftResult
    out: Path
    paths: dict[str, Path]
    mlflow_run_id: str | None
    webhook_status: int | None

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def one_line(self) -> str:
        return self.result.one_line

    def summary(self) -> dict[str, Any]:
        return self.result.summary()


def infer_roles(reference: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric, categorical) without a model: the built-in schema's roles, else by dtype.

    Why: `--model none` must still work on the built-in data before any model is registered, and on a
    foreign table; identifiers (all-distinct text) and outcome/prediction columns are left out.
    """
    builtin = DatasetConfig.builtin()
    if all(c in reference.columns for c in builtin.features):
        return list(builtin.numeric), list(builtin.categorical)
    numeric, categorical = [], []
    for col in reference.columns:
        if col in NOT_FEATURES:
            continue
        series = reference[col]
        if ptypes.is_bool_dtype(series):
            categorical.append(col)
        elif ptypes.is_numeric_dtype(series):
            numeric.append(col)
        elif series.nunique(dropna=True) < max(2, len(series)):  # all-distinct text is an identifier
            categorical.append(col)
    return numeric, categorical


def is_builtin_schema(numeric: list[str], categorical: list[str]) -> bool:
    """True when the inputs are the built-in subscriber schema's features (a model trained on that schema)."""
    return set(numeric) | set(categorical) == set(DatasetConfig.builtin().features)


def validate_builtin(df: pd.DataFrame, *, source: str, target: str = TARGET) -> pd.DataFrame:
    """The subscriber-schema validation `retain decide` applies (same one-line errors), outcomes left as they are.

    Why the outcome column is set aside: a labelled month may say yes/no where the schema declares 0/1, and
    the check reads outcomes with the shared yes/no parser (`engine.data.flags`).
    """
    outcomes = df[target] if target in df.columns else None
    valid = validate_subscribers(df.drop(columns=[target]) if outcomes is not None else df, source=source)
    return valid if outcomes is None else valid.assign(**{target: outcomes.to_numpy()})


#: Fewer rows than this cannot tell drift from chance (every test would be noise); refused, not reported.
MIN_ROWS = 30


def run_drift_files(settings: Settings, *, current: str | Path, out: str | Path, reference: str | Path | None = None,
                    model: str | None = "champion", webhook: str | None = None, log: bool = True) -> DriftRun:
    """Check `current` against a reference and publish report.html, report.json and summary.json into `out`.

    `model`: alias ("champion"), version ("3"), URI, or "none" (no scoring: feature drift only, plus
    score drift when both tables already carry `churn_probability`). Without `reference` the sample
    logged with the model's training run is used. Raises a RetainError (exit code 2) on bad input, an
    unknown model, an unreachable MLflow store or webhook; nothing is published then.
    """
    cfg = settings.drift
    out = Path(out)
    if webhook:
        from engine.monitoring.webhook import check_url

        check_url(webhook)
    cur_df = read_table(current, what="current table")
    loaded = None
    model_ref = (model or "champion").strip()
    if model_ref.lower() != NO_MODEL:
        from engine.model.registry import load_model

        loaded = load_model(settings, model_ref)
    if reference is not None:
        ref_df = read_table(reference, what="reference table")
        ref_source = mask_secrets(str(reference))
        ref_tag = Path(str(reference)).name
    elif loaded is not None:
        from engine.model.registry import reference_sample

        ref_df = reference_sample(settings, loaded)
        ref_source = f"reference sample logged with {loaded.uri} (training run {loaded.run_id})"
        ref_tag = f"hold-out of {loaded.name} v{loaded.version}"
    else:
        raise ConfigError("--model none needs --reference FILE", hint="or name a model whose reference sample to use")

    if loaded is not None:
        numeric, categorical = list(loaded.numeric), list(loaded.categorical)
        target = (getattr(loaded.model, "spec", None) or {}).get("target") or TARGET
    else:
        numeric, categorical = infer_roles(ref_df)
        target = TARGET
    if is_builtin_schema(numeric, categorical):
        cur_df = validate_builtin(cur_df, source=str(current), target=target)
        if reference is not None:
            ref_df = validate_builtin(ref_df, source=str(reference), target=target)
    check_tables(ref_df, cur_df, numeric=numeric, categorical=categorical)
    for name, frame in (("current", cur_df), ("reference", ref_df)):
        if len(frame) < MIN_ROWS:
            raise DataError(f"{name} table has {len(frame):,} row(s); a drift check needs at least {MIN_ROWS} to tell "
                            f"drift from chance", hint="check a whole day or month of subscribers")

    ref_fingerprint = fingerprint(ref_df)
    from engine.monitoring import importance as imp

    if loaded is not None:
        importance, importance_note = imp.of_model(loaded), None
        if importance is None:
            importance_note = f"model {loaded.uri} exposes no feature importance"
    else:
        importance, importance_note = imp.of_champion(settings)
    # Sample before scoring: a 1 M-row month is scored only for the rows the check will use.
    cur_s, cur_sampling = sample_rows(cur_df, cfg.sample_rows, cfg.seed)
    ref_s, ref_sampling = sample_rows(ref_df, cfg.sample_rows, cfg.seed)
    del cur_df, ref_df
    prediction: str | None = PREDICTION
    if loaded is not None:
        cur_s = cur_s.assign(**{PREDICTION: loaded.predict_proba(cur_s)})
        if PREDICTION not in ref_s.columns:
            ref_s = ref_s.assign(**{PREDICTION: loaded.predict_proba(ref_s)})
    elif not (PREDICTION in cur_s.columns and PREDICTION in ref_s.columns):
        prediction = None

    # Decay is judged against the training hold-out (issue: "quality against the training hold-out"), also
    # when --reference names a file: that file may be the training table itself, whose AUC is in-sample.
    baseline, baseline_source, baseline_note = None, None, None
    if loaded is not None and target in cur_s.columns:
        if reference is None:
            baseline_source = f"training hold-out ({len(ref_s):,} rows logged with {loaded.uri})"
        else:
            baseline, baseline_source, baseline_note = _holdout_quality(settings, loaded, target)

    context: dict[str, Any] = {
        "model": None if loaded is None else {"name": loaded.name, "version": loaded.version, "uri": loaded.uri,
                                              "run_id": loaded.run_id},
        "reference_source": ref_source, "current_source": mask_secrets(str(current)),
        "report_dir": str(out.resolve()),
        "reference": {"fingerprint": ref_fingerprint, "tag": mask_secrets(ref_tag), "rows": int(ref_sampling.rows)},
    }
    result = run_drift_check(ref_s, cur_s, numeric=numeric, categorical=categorical, prediction=prediction,
                             target=target, settings=cfg, risk_grades=settings.risk_grades,
                             presampled={"current": cur_sampling, "reference": ref_sampling},
                             quality_baseline=baseline, quality_baseline_source=baseline_source, context=context,
                             importance=importance, importance_note=importance_note)
    if baseline_note:
        result.notes.append(baseline_note)
    if loaded is None:
        result.notes.append("no model: feature drift only" + ("" if prediction else
                                                               " (no churn_probability on both sides)"))
    if result.important is not None:
        result.notes.append(f"feature alert rule: {result.rules()[0]['detail']}")
    return publish(result, settings, out, webhook=webhook, log=log)


def fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash of a table, e.g. 'a1b2c3d4e5f6': same rows and columns, same fingerprint.

    Why content and not the path: `drift history` must keep checks against different reference data sets
    apart (two data sets, or one path rewritten over time) and keep one data set together (copied, renamed,
    re-exported as CSV, rows in another order). Numbers and flags hash as floats, everything else as text,
    so a CSV copy of a Parquet file agrees; row hashes are sorted, so row order does not matter.
    """
    import hashlib

    import numpy as np

    cols = sorted(map(str, frame.columns))
    normal = {}
    for col in cols:
        series = frame[col]
        if ptypes.is_bool_dtype(series) or ptypes.is_numeric_dtype(series):
            normal[col] = pd.to_numeric(series, errors="coerce").astype(float)
        else:
            normal[col] = series.astype(object).where(series.notna(), None).astype(str)
    rows = pd.util.hash_pandas_object(pd.DataFrame(normal), index=False).to_numpy()
    digest = hashlib.sha256("\x1f".join(cols).encode())
    digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()[:12]


def _holdout_quality(settings: Settings, loaded: Any, target: str) -> tuple[dict | None, str | None, str | None]:
    """Quality of the model on its own training hold-out (logged with it), or why it is unavailable."""
    from engine.errors import ModelError
    from engine.model.registry import reference_sample

    fallback = "decay is judged against the reference file's outcomes instead"
    try:
        holdout = reference_sample(settings, loaded)
    except ModelError:
        return None, None, f"the model has no logged training hold-out: {fallback}"
    if target not in holdout.columns or PREDICTION not in holdout.columns:
        return None, None, f"the logged training hold-out lacks '{target}' or '{PREDICTION}': {fallback}"
    y = binary_outcomes(holdout[target], target, "training hold-out")
    labelled = y.notna().to_numpy()
    metrics = quality_metrics(y[labelled].to_numpy(), holdout[PREDICTION].to_numpy()[labelled])
    if metrics is None:
        return None, None, f"the logged training hold-out has one class only: {fallback}"
    return metrics, f"training hold-out ({int(labelled.sum()):,} rows logged with {loaded.uri})", None


class _Probe(Exception):
    pass


def _check_out(out: Path) -> None:
    """Refuse an unusable `--out` before anything is logged or announced, with `staged_outputs`' own errors.

    Why a probe and not a copy of its checks: entering `staged_outputs` validates the folder, creates its
    parent and clears residue of a killed run; leaving it with an exception publishes nothing.
    """
    try:
        with staged_outputs(out):
            raise _Probe
    except _Probe:
        pass


def publish(result: DriftResult, settings: Settings, out: str | Path, *, webhook: str | None = None,
            log: bool = True) -> DriftRun:
    """Write the files, record the MLflow run, POST the webhook, then publish; all or nothing.

    Why the files are written in a private temporary folder and copied into `staged_outputs` only after the
    webhook answered: the webhook is the one step whose time depends on someone else. A receiver that
    drips bytes is cut off at `drift.webhook_deadline_seconds`, and even a process killed while waiting
    leaves nothing beside `--out` (no `.NAME.staging-*` folder); the staged publish itself takes milliseconds.
    """
    import shutil
    import tempfile

    from engine.monitoring import tracking
    from engine.monitoring.webhook import post_json

    out = Path(out)
    run_id: str | None = None
    status_code: int | None = None
    cfg = settings.drift
    _check_out(out)
    with tempfile.TemporaryDirectory(prefix="retain-drift-") as tmp:
        built = Path(tmp)
        try:
            if log:
                run_id = tracking.start_run(settings, result)
                result.context["mlflow_run_id"] = run_id
            write_report(result, built)
            if log and run_id:
                tracking.finish_run(settings, run_id, result, built)
            if webhook:
                status_code = post_json(webhook, result.summary(), timeout=cfg.webhook_timeout,
                                        deadline=cfg.webhook_deadline_seconds)
            with staged_outputs(out) as stage:
                for name in (REPORT_HTML, REPORT_JSON, SUMMARY_JSON):
                    shutil.copyfile(built / name, stage / name)
        except BaseException:
            if run_id:
                tracking.discard_run(settings, run_id)
            raise
    paths = {"html": out / REPORT_HTML, "json": out / REPORT_JSON, "summary": out / SUMMARY_JSON}
    return DriftRun(result=result, out=out, paths=paths, mlflow_run_id=run_id, webhook_status=status_code)
