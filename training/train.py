"""`retain train`: tune, fit, evaluate, log and register a churn model in one tracked MLflow run.

Why one function: a training run is only trustworthy if everything that produced it is recorded in the
same place: the data (as a run input and a fingerprint), the study and each trial, the chosen
parameters, hold-out metrics and plots, the packaged model with its signature, and a reference sample
for later drift checks. The CLI only renders what this returns.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from catboost import Pool
from sklearn.linear_model import LogisticRegression

import engine
from engine.config import Settings
from engine.data.labelled import TrainingTable, load_training_table
from engine.errors import DataError, ModelError
from engine.model.churn import PREDICT_PARAMS, PROBABILITY, ChurnModel
from engine.model.features import FeaturePipeline
from engine.model.registry import (
    HOLDOUT_KEY,
    REFERENCE_ARTIFACT,
    TRAINING_EXPERIMENT,
    connect,
    ensure_experiment,
)
from engine.model.value_tiers import RFM_INPUTS, ValueSegmenter
from training import holdout, packaging
from training.evaluation import expected_calibration_error, figures, holdout_metrics, shap_summary
from training.store import training_lock
from training.tuning import (
    CVResult,
    TuningSpec,
    catboost,
    cross_validate,
    open_storage,
    run_study,
    study_name_for,
)

ProgressFn = Callable[[int, int, float | None], None]


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    model_version: str | None
    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    cv_roc_auc: float
    metrics: dict[str, float]
    best_params: dict[str, Any]
    study_name: str
    trials: int
    calibrated: bool
    data_fingerprint: str
    rows: int
    holdout_rule: str = ""
    holdout_rows: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def code_version() -> str:
    """Package version plus the git commit (and '-dirty') when run from a checkout."""
    root = Path(engine.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{engine.__version__}+{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return engine.__version__


def _check_trainable(table: TrainingTable, folds: int) -> None:
    counts = table.target.value_counts()
    smallest = int(counts.min())
    if len(table.frame) < 2 * folds or smallest < folds + 1:
        raise DataError(f"{table.source}: {len(table.frame)} rows with {smallest} in the smaller class is too few "
                        f"for {folds}-fold cross-validation plus a hold-out",
                        hint="use more data or fewer folds (training.folds in the config)")
    if not table.config.features:
        raise DataError(f"{table.source}: no feature columns left after dropping ids and the target")


def _platt(oof_raw: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
    """Fit Platt scaling on out-of-fold scores; keep it only if it lowers out-of-fold calibration error."""
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(oof_raw.reshape(-1, 1), y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    before = expected_calibration_error(y, 1 / (1 + np.exp(-oof_raw)))
    after = expected_calibration_error(y, 1 / (1 + np.exp(-(a * oof_raw + b))))
    return {"a": a, "b": b, "oof_ece_before": before, "oof_ece_after": after} if after < before else None


class _TrialLogger:
    """Optuna callback: each finished trial becomes a nested MLflow run and ticks the progress bar."""

    def __init__(self, client, experiment_id: str, parent_run_id: str, total: int,
                 progress: ProgressFn | None) -> None:
        self.client, self.experiment_id, self.parent = client, experiment_id, parent_run_id
        self.total, self.progress, self.done = total, progress, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}",
                                     tags={"mlflow.parentRunId": self.parent, "optuna.state": trial.state.name,
                                           "optuna.study": study.study_name})
        now = int(time.time() * 1000)
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        metrics = [Metric(f"cv_auc_fold{step}", v, now, step) for step, v in trial.intermediate_values.items()]
        if trial.value is not None:
            metrics.append(Metric("cv_roc_auc", trial.value, now, 0))
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        self.client.set_terminated(run.info.run_id, "FINISHED" if trial.state.name == "COMPLETE" else "KILLED")
        self.done += 1
        if self.progress:
            best = None
            with contextlib.suppress(ValueError):
                best = study.best_value
            self.progress(self.done, self.total, best)


def _log_optuna_plots(mlflow, study: optuna.Study) -> None:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = [("optuna/optimization_history.png", ovm.plot_optimization_history)]
    if len(completed) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in completed}) >= 2:
        plots.append(("optuna/param_importances.png", ovm.plot_param_importances))
    for name, fn in plots:
        try:
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            mlflow.log_figure(fig, name)
            plt.close(fig)
        except (ValueError, RuntimeError, ImportError):  # too few distinct trials for importances
            continue


def train(data: str, *, settings: Settings, target: str | None = None, id_column: str | None = None,
          dataset_config: str | None = None, trials: int | None = None, timeout: float | None = None,
          resume: bool = False, seed: int | None = None, register: bool = True,
          progress: ProgressFn | None = None, study_storage: str | None = None,
          lock_wait: float | None = None) -> TrainResult:
    """Tune, fit, evaluate, log and (by default) register a new version of the churn model.

    On a SQLite store only one training writes at a time (`training.store`): this one waits up to `lock_wait`
    seconds (default `RETAIN_TRAIN_LOCK_WAIT` or 600) for another, then stops with one line.
    """
    cfg = settings.training
    trials = trials or cfg.trials
    seed = cfg.seed if seed is None else seed
    table = load_training_table(data, target=target, id_column=id_column, dataset_config=dataset_config)
    _check_trainable(table, cfg.folds)

    # The hold-out is a function of the data (a hash of each subscriber id), not of the seed: every version
    # trained on this table holds out the same rows, so the promotion gate can compare them fairly.
    hsplit = holdout.split(table, cfg.holdout_share, cfg.folds)
    idx_train, idx_hold = hsplit.train, hsplit.holdout
    raw_train, raw_hold = table.frame.iloc[idx_train], table.frame.iloc[idx_hold]
    y_train, y_hold = table.target.iloc[idx_train], table.target.iloc[idx_hold]

    pipeline = FeaturePipeline(table.config.categorical, table.config.numeric,
                               derive=table.config.builtin_schema).fit(raw_train)
    X_train = pipeline.transform(raw_train)
    cat = pipeline.categorical_features_
    spec = TuningSpec(folds=cfg.folds, seed=seed, max_iterations=cfg.max_iterations,
                      early_stopping_rounds=cfg.early_stopping_rounds)

    storage = study_storage or _default_study_storage(settings)
    with training_lock(settings, storage, wait=lock_wait):
        return _tracked(settings, table, hsplit, raw_train, raw_hold, y_train, y_hold, pipeline, X_train, cat,
                        spec, storage=storage, trials=trials, timeout=timeout, resume=resume, seed=seed,
                        register=register, progress=progress)


def _tracked(settings: Settings, table: TrainingTable, hsplit: holdout.HoldoutSplit, raw_train: pd.DataFrame,
             raw_hold: pd.DataFrame, y_train: pd.Series, y_hold: pd.Series, pipeline: FeaturePipeline,
             X_train: pd.DataFrame, cat: list[str], spec: TuningSpec, *, storage: str, trials: int,
             timeout: float | None, resume: bool, seed: int, register: bool,
             progress: ProgressFn | None) -> TrainResult:
    """The study, the refit and everything MLflow records, while this process is the store's only trainer."""
    import mlflow

    cfg = settings.training
    client = connect(settings)
    experiment_id = ensure_experiment(settings, TRAINING_EXPERIMENT)
    base = f"{settings.model_name}-{table.fingerprint[:12]}"
    study_storage = open_storage(storage)
    study_name = study_name_for(base, study_storage, resume, time.strftime("%Y%m%dT%H%M%S"))

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{table.config.name}") as run:
        run_id = run.info.run_id
        mlflow.set_tags({"retain.kind": "training", "retain.code_version": code_version(),
                         "retain.data_fingerprint": table.fingerprint, "optuna.study": study_name,
                         "retain.dataset": table.source, "retain.holdout_rule": hsplit.rule_json})
        dataset = mlflow.data.from_pandas(table.frame.assign(**{table.config.target: table.target}),
                                          source=table.source, targets=table.config.target,
                                          name=table.config.name)
        mlflow.log_input(dataset, context="training")
        logger = _TrialLogger(client, experiment_id, run_id, trials, progress)
        study = run_study(X_train, y_train, cat, spec, trials=trials, timeout=timeout, storage=study_storage,
                          study_name=study_name, resume=resume, callbacks=[logger])
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise ModelError("no Optuna trial completed", hint="raise --timeout or --trials")
        best = study.best_trial
        best_params = dict(best.params)
        # The same CV with the best parameters gives out-of-fold scores for calibration and the refit length.
        cv: CVResult = cross_validate(_params(best_params), X_train, y_train, cat, spec)
        iterations = int(min(cfg.max_iterations, max(10, np.mean(cv.best_iterations) * 1.1)))
        booster = catboost(_params(best_params), spec, iterations=iterations)
        booster.fit(Pool(X_train, y_train, cat_features=cat))
        calibration = _platt(cv.oof_raw, y_train.to_numpy())

        value_segmenter = None
        if all(c in raw_train.columns for c in RFM_INPUTS):
            value_segmenter = ValueSegmenter(seed=seed).fit(raw_train).to_dict()
        spec_json = {"reasons": settings.reasons, "value_segmenter": value_segmenter,
                     "reason_labels": settings.reason_labels,
                     "target": table.config.target, "id_column": table.config.id_column,
                     "dataset": table.config.model_dump(), "calibration": calibration,
                     "data_fingerprint": table.fingerprint, "code_version": code_version()}
        model = ChurnModel.from_parts(booster, pipeline, spec_json)
        model.learn_leaf_shap(X_train)  # the leaves training rows (and rows mixing their columns) reach
        p_hold = model.predict_proba(raw_hold)
        metrics = holdout_metrics(y_hold.to_numpy(), p_hold, settings.risk_grades.high)
        if calibration:
            uncal = ChurnModel.from_parts(booster, pipeline, {**spec_json, "calibration": None})
            metrics["ece_uncalibrated"] = expected_calibration_error(y_hold.to_numpy(), uncal.predict_proba(raw_hold))
        importance = pd.Series(booster.get_feature_importance(), index=pipeline.feature_names_)

        mlflow.log_params({**{f"best.{k}": v for k, v in best_params.items()}, "iterations": iterations,
                           "folds": cfg.folds, "holdout_share": cfg.holdout_share, "seed": seed,
                           "holdout_rule": hsplit.rule_json, "holdout_rows": len(raw_hold),
                           "trials": len(study.trials), "rows": len(table.frame), "calibrated": bool(calibration)})
        mlflow.log_metrics({**{f"holdout_{k}": v for k, v in metrics.items()}, "cv_roc_auc": study.best_value})
        for name, fig in figures(y_hold.to_numpy(), p_hold, importance).items():
            mlflow.log_figure(fig, name)
        sample = raw_hold.sample(min(len(raw_hold), 2000), random_state=seed)
        sample_features = pipeline.transform(sample)
        mlflow.log_figure(shap_summary(model.shap_values(sample_features), sample_features), "plots/shap_summary.png")
        plt.close("all")
        _log_optuna_plots(mlflow, study)
        mlflow.log_dict({"number": best.number, "value": best.value, "params": best_params,
                         "fold_aucs": best.user_attrs.get("fold_aucs"), "study": study_name},
                        "optuna/best_trial.json")
        mlflow.log_text(importance.sort_values(ascending=False).to_csv(header=["importance"]),
                        "feature_importance.csv")
        if table.warnings:
            mlflow.log_text("\n".join(table.warnings), "data_warnings.txt")

        # The logged hold-out sample: the rows with the smallest hold-out keys, the same rows for every version
        # of this table whatever its seed, each with its key so two versions' samples can be intersected.
        hold_keys = hsplit.keys.iloc[hsplit.holdout]
        reference = raw_hold.assign(**{table.config.target: y_hold.to_numpy(), PROBABILITY: p_hold,
                                       HOLDOUT_KEY: hold_keys.to_numpy()})
        reference = reference.loc[holdout.subsample(reference[HOLDOUT_KEY], cfg.reference_sample_rows)]
        emp_tags = _emp_tags(settings, raw_hold, y_hold.to_numpy(), p_hold)
        if emp_tags:
            mlflow.log_metrics({"holdout_emp": float(emp_tags["emp"]),
                                "holdout_emp_contact_share": float(emp_tags["emp_contact_share"])})
        version = _log_model(mlflow, client, settings, model, raw_train, reference, register,
                             {**{k: v for k, v in emp_tags.items() if k != "emp"},
                              "data_fingerprint": table.fingerprint, "code_version": code_version(),
                              "holdout_rule": hsplit.rule_json, "holdout_rows": str(len(raw_hold)),
                              "training_config": json.dumps({**settings.training.model_dump(), "trials": trials,
                                                             "seed": seed, "data": table.source}),
                              "dataset": table.config.name})

    return TrainResult(
        run_id=run_id, model_name=settings.model_name, model_version=version,
        roc_auc=metrics["roc_auc"], pr_auc=metrics["pr_auc"], log_loss=metrics["log_loss"],
        brier=metrics["brier"], cv_roc_auc=float(study.best_value), metrics=metrics, best_params=best_params,
        study_name=study_name, trials=len(study.trials), calibrated=bool(calibration),
        data_fingerprint=table.fingerprint, rows=len(table.frame), holdout_rule=hsplit.rule_json,
        holdout_rows=len(raw_hold), warnings=table.warnings)


def _emp_tags(settings: Settings, raw_hold: pd.DataFrame, y_hold: np.ndarray, p_hold: np.ndarray) -> dict[str, str]:
    """EMP of the model on its hold-out (engine.uplift.emp, the operator's figures) and the churn probability
    above which contacting pays: the version tags `risk_grades.mode: emp` grades with. Empty when it cannot be
    measured (no ARPU column for the customer lifetime value, one class in the hold-out)."""
    from engine.uplift.emp import emp

    if "arpu_m0" not in raw_hold.columns or len(np.unique(y_hold)) < 2:
        return {}
    try:
        from engine.policy import load_policy_set

        costs = [o.cost for o in load_policy_set(settings.policy_dir).offers.values()]
    except Exception:  # noqa: BLE001 - no policy set here: the paper's incentive
        costs = []
    clv = float(pd.to_numeric(raw_hold["arpu_m0"], errors="coerce").mean()) * settings.arbitration.horizon_months
    contact = [c.cost for c in settings.channels.values()]
    if not clv > 0:
        return {}
    r = emp(y_hold, p_hold, clv=clv, incentive=float(np.median(costs)) if costs else 10.0,
            contact=float(np.median(contact)) if contact else 0.0)
    if not np.isfinite(r.threshold):
        return {}
    return {"emp": f"{r.emp:.6g}", "emp_threshold": f"{min(max(r.threshold, 1e-6), 1 - 1e-6):.6g}",
            "emp_contact_share": f"{r.contact_share:.6g}"}


def _params(best: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in best.items() if not (k == "auto_class_weights" and v == "None")}


def _default_study_storage(settings: Settings) -> str:
    """Optuna's database sits next to a SQLite MLflow store, or under ./mlruns for a remote server."""
    if settings.tracking_uri.startswith("sqlite:///"):
        folder = Path(settings.tracking_uri.removeprefix("sqlite:///")).parent
    else:
        folder = Path("mlruns")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def _log_model(mlflow, client, settings: Settings, model: ChurnModel, raw_train: pd.DataFrame,
               reference: pd.DataFrame, register: bool, tags: dict[str, str]) -> str | None:
    """Log the pyfunc with its own code, pinned requirements, signature and input example; register it.

    The python model logged is an empty instance of the hashed copy of the portable package
    (`training.packaging`): its fitted state travels as artefacts (CatBoost file, spec.json) and is
    restored in `load_context`, and its code travels as `code_paths`, so the artefact loads where
    `engine` is not installed and champion and challenger never share cached code.
    """
    from mlflow.models import infer_signature

    example = raw_train[model.input_columns].head(5).reset_index(drop=True)
    with warnings.catch_warnings():  # MLflow's "integer columns cannot hold missing values" hint: ours never do
        warnings.simplefilter("ignore", UserWarning)
        # Input types and which columns may be missing come from the whole training table, not from the
        # five example rows; `params` declares predict's switches (score, explain) so serving accepts them.
        signature = infer_signature(raw_train[model.input_columns], model.predict(None, example),
                                    params=dict(PREDICT_PARAMS))
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = model.save_artifacts(Path(tmp) / "parts")
        ref_path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        reference.to_parquet(ref_path, index=False)
        mlflow.log_artifact(str(ref_path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
        code_dir, code = packaging.stage(Path(tmp) / "code")
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints registration chatter to stderr
            info = mlflow.pyfunc.log_model(
                name="model", python_model=code.ChurnModel(), artifacts=artifacts, signature=signature,
                input_example=example, registered_model_name=settings.model_name if register else None,
                code_paths=[str(code_dir)], pip_requirements=packaging.requirements())
    if info.signature is None:
        raise ModelError("the logged model has no signature; refusing to register it")
    mlflow.set_tag("retain.model_code", code.__name__)
    version = str(info.registered_model_version) if register and info.registered_model_version else None
    if version:
        for key, value in {**tags, "model_code": code.__name__}.items():
            client.set_model_version_tag(settings.model_name, version, key, value)
    return version
