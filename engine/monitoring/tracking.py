"""Drift checks as MLflow runs: one run per check in the `monitoring` experiment, tagged with the model version.

Why MLflow and not an Evidently workspace: MLflow already holds the model versions, so a check's report
sits one click from the version it judged (`retain.model_version` tag, and `drift_status` tags on the
version itself); there is one store to back up and one UI (`mlflow ui`) where the metrics of every
check chart over time. An Evidently workspace would be a second service with a second storage layout.
`retain drift history` reads these runs back for the table and the trend chart.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from engine.config import Settings
from engine.errors import ModelError
from engine.monitoring.drift import DriftResult

KIND_TAG = "retain.kind"
KIND = "drift"
VERSION_TAG = "retain.model_version"
REFERENCE_TAG = "retain.reference_fingerprint"     # content hash of the reference table: history groups by it
REFERENCE_LABEL_TAG = "retain.reference_tag"       # its name for people (file name, or "hold-out of churn v1")
ARTIFACT_DIR = "drift"


def _fail(action: str, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(f"cannot {action} in the MLflow store: {first}",
                      hint="check --tracking-uri, or pass --no-log to skip MLflow")


def metrics_of(result: DriftResult) -> dict[str, float]:
    """The numbers worth charting across checks (NaN-free)."""
    out: dict[str, float] = {
        "drifted_share": result.drifted_share, "drifted_count": float(len(result.drifted_features)),
        "feature_count": float(len(result.features)), "exit_code": float(result.exit_code),
        "rows_current": float(result.current_sampling.rows), "rows_used": float(result.current_sampling.rows_used),
        "rows_reference": float(result.reference_sampling.rows_used), "seconds": result.seconds,
    }
    if result.prediction:
        out["score_drift"] = result.prediction["score"]
        out["mean_probability"] = result.prediction["mean_current"]
    if result.risk_mix:
        out["risk_mix_psi"] = result.risk_mix["score"]
        for grade, share in result.risk_mix["current"].items():
            out[f"share_{grade}"] = share
    q = result.quality or {}
    for side, prefix in (("current", ""), ("reference", "reference_")):
        for key in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
            value = (q.get(side) or {}).get(key)
            if value is not None:
                out[f"{prefix}{key}"] = value
    if q.get("auc_drop") is not None:
        out["auc_drop"] = q["auc_drop"]
    return {k: float(v) for k, v in out.items() if v is not None and v == v}


def start_run(settings: Settings, result: DriftResult) -> str:
    """Create the monitoring run (so its id can go into summary.json) and log tags, params, metrics."""
    from mlflow.entities import Metric, Param, RunTag

    from engine.model.registry import connect, ensure_experiment

    model = result.context.get("model") or {}
    reference = result.context.get("reference") or {}
    version = str(model.get("version") or "none")
    try:
        client = connect(settings)
        experiment_id = ensure_experiment(settings, settings.drift.experiment)
        tags = {KIND_TAG: KIND, VERSION_TAG: version, "retain.model_name": str(model.get("name") or ""),
                "retain.model_uri": str(model.get("uri") or ""), "retain.status": result.status,
                "retain.alerts": ",".join(result.alerts), "retain.sampled": str(result.current_sampling.applied),
                "retain.reference_source": str(result.context.get("reference_source") or "")[:5000],
                "retain.current_source": str(result.context.get("current_source") or "")[:5000],
                REFERENCE_TAG: str(reference.get("fingerprint") or ""),
                REFERENCE_LABEL_TAG: str(reference.get("tag") or "")[:500],
                "retain.alert_rules": ",".join(r["rule"] for r in result.rules() if r["fired"]),
                "mlflow.note.content": result.one_line}
        run = client.create_run(experiment_id, run_name=f"drift-v{version}-{time.strftime('%Y%m%dT%H%M%S')}",
                                tags=tags)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = {k: str(v) for k, v in result.thresholds.items()}
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics_of(result).items()],
                         params=[Param(k, v[:6000]) for k, v in params.items()],
                         tags=[RunTag("retain.drifted_features", ",".join(result.drifted_features)[:5000])])
    except ModelError:
        raise
    except Exception as exc:  # MLflow raises many types for store problems
        raise _fail("log the monitoring run", exc) from None
    return run_id


def finish_run(settings: Settings, run_id: str, result: DriftResult, folder: Path) -> None:
    """Attach report.html / report.json / summary.json, close the run, tag the model version."""
    from engine.model.registry import connect

    try:
        client = connect(settings)
        client.log_artifacts(run_id, str(folder), artifact_path=ARTIFACT_DIR)
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:
        raise _fail("store the drift report", exc) from None
    model = result.context.get("model") or {}
    if model.get("version"):
        try:  # a convenience for `retain models list`; the run is the record
            for key, value in (("drift_status", result.status), ("drift_checked_at", result.checked_at),
                               ("drift_run_id", run_id)):
                client.set_model_version_tag(model["name"], str(model["version"]), key, value)
        except Exception:  # noqa: BLE001 - tagging a version must not fail a finished check
            pass


def discard_run(settings: Settings, run_id: str) -> None:
    """Delete a run whose check did not complete (e.g. the webhook failed), so history never shows it."""
    try:
        from engine.model.registry import connect

        connect(settings).delete_run(run_id)
    except Exception:  # noqa: BLE001 - best effort: the original error is what the user must see
        pass


HISTORY_COLUMNS = ["checked_at", "series", "model_version", "reference", "reference_fingerprint", "status", "alerts",
                   "drifted_share", "score_drift", "risk_mix_psi", "roc_auc", "reference_roc_auc", "auc_drop",
                   "rows_current", "sampled", "run_id"]


def series_label(version: str, reference: str, fingerprint: str) -> str:
    """One line of the history: a model version judged against one reference data set."""
    return f"v{version} vs {reference or 'reference'} [{fingerprint[:8] or 'unknown'}]"


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def history(settings: Settings, *, version: str | None = None, reference: str | None = None,
            limit: int = 1000) -> pd.DataFrame:
    """Past checks (oldest first) from the monitoring experiment, optionally of one model version.

    Each row names its series: the model version and the reference data set (fingerprint of its content),
    so checks of unrelated data sets are never joined into one trend. `reference` keeps the checks whose
    reference fingerprint starts with it.
    """
    from engine.model.registry import connect

    client = connect(settings)
    try:
        experiment = client.get_experiment_by_name(settings.drift.experiment)
        if experiment is None:
            return pd.DataFrame(columns=HISTORY_COLUMNS)
        query = f"tags.`{KIND_TAG}` = '{KIND}'"
        if version:
            query += f" and tags.`{VERSION_TAG}` = '{version}'"
        runs = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"],
                                  max_results=limit)
    except Exception as exc:
        raise _fail("read the monitoring runs", exc) from None
    rows: list[dict[str, Any]] = []
    for run in runs:
        m, t = run.data.metrics, run.data.tags
        version = t.get(VERSION_TAG, "")
        # Checks logged before references were fingerprinted: their reference's description stands in.
        fingerprint = t.get(REFERENCE_TAG) or ("source:" + _short_hash(t.get("retain.reference_source", "")))
        label = t.get(REFERENCE_LABEL_TAG) or t.get("retain.reference_source", "")[-60:]
        rows.append({
            "checked_at": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC").tz_convert(None)
                          .strftime("%Y-%m-%d %H:%M:%S"),
            "series": series_label(version, label, fingerprint.removeprefix("source:")),
            "model_version": version, "reference": label, "reference_fingerprint": fingerprint,
            "status": t.get("retain.status", ""),
            "alerts": t.get("retain.alerts", ""),
            **{k: m.get(k) for k in ("drifted_share", "score_drift", "risk_mix_psi", "roc_auc",
                                     "reference_roc_auc", "auc_drop")},
            "rows_current": int(m["rows_current"]) if "rows_current" in m else None,
            "sampled": t.get("retain.sampled", "") == "True", "run_id": run.info.run_id,
        })
    frame = pd.DataFrame(rows[::-1], columns=HISTORY_COLUMNS)
    if reference:
        frame = frame[frame["reference_fingerprint"].str.startswith(reference)].reset_index(drop=True)
    return frame
