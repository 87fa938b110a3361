"""The Optuna study over CatBoost hyper-parameters, scored by stratified cross-validation.

Why this shape: TPE with a fixed seed, one job and fixed CatBoost seeds makes a study reproducible;
early stopping inside each fold keeps trials cheap; reporting the running CV AUC after each fold lets
the median pruner stop poor trials early. The study lives in a database next to the MLflow store, so
`--resume` continues it instead of starting over.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from catboost import CatBoostClassifier, Pool
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass(frozen=True)
class TuningSpec:
    folds: int
    seed: int
    max_iterations: int
    early_stopping_rounds: int
    thread_count: int = -1


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """The search space that matters for CatBoost on churn tables."""
    params: dict[str, Any] = {
        "depth": trial.suggest_int("depth", 3, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 30.0, log=True),
        "random_strength": trial.suggest_float("random_strength", 1e-3, 10.0, log=True),
        "bagging_temperature": trial.suggest_float("bagging_temperature", 0.0, 1.0),
        "border_count": trial.suggest_categorical("border_count", [32, 64, 128, 254]),
        "one_hot_max_size": trial.suggest_categorical("one_hot_max_size", [2, 4, 10]),
    }
    weights = trial.suggest_categorical("auto_class_weights", ["None", "Balanced", "SqrtBalanced"])
    if weights != "None":
        params["auto_class_weights"] = weights
    return params


def catboost(params: dict[str, Any], spec: TuningSpec, iterations: int | None = None) -> CatBoostClassifier:
    clean = {k: v for k, v in params.items() if not (k == "auto_class_weights" and v == "None")}
    return CatBoostClassifier(
        **clean, iterations=iterations or spec.max_iterations, loss_function="Logloss", eval_metric="AUC",
        random_seed=spec.seed, thread_count=spec.thread_count, verbose=False, allow_writing_files=False)


@dataclass
class CVResult:
    auc: float
    fold_aucs: list[float]
    best_iterations: list[int]
    oof_raw: np.ndarray  # out-of-fold raw scores, for calibration


def cross_validate(params: dict[str, Any], X: pd.DataFrame, y: pd.Series, cat_features: list[str],
                   spec: TuningSpec, trial: optuna.Trial | None = None) -> CVResult:
    """Stratified K-fold AUC with early stopping on each fold's validation part."""
    folds = StratifiedKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
    aucs, iters = [], []
    oof = np.zeros(len(y))
    for k, (tr, va) in enumerate(folds.split(X, y)):
        model = catboost(params, spec)
        model.fit(Pool(X.iloc[tr], y.iloc[tr], cat_features=cat_features),
                  eval_set=Pool(X.iloc[va], y.iloc[va], cat_features=cat_features),
                  early_stopping_rounds=spec.early_stopping_rounds, use_best_model=True)
        raw = model.predict(Pool(X.iloc[va], cat_features=cat_features), prediction_type="RawFormulaVal")
        oof[va] = raw
        aucs.append(float(roc_auc_score(y.iloc[va], raw)))
        iters.append(int(model.get_best_iteration() or spec.max_iterations) + 1)
        if trial is not None:
            trial.report(float(np.mean(aucs)), step=k)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return CVResult(float(np.mean(aucs)), aucs, iters, oof)


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """Optuna's RDB storage for `url`, its tables created now, or one line naming the database it cannot use.

    SQLite gets a 60 s busy timeout (Optuna's default is SQLite's 5 s): a training holds the store's lock
    (`training.store`), so waiting is for a reader, never for a second study.
    """
    if url is None:
        return None
    from engine.errors import ModelError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # SQLAlchemy and Optuna raise several types for an unusable database
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot open the Optuna study database '{url}': {first}",
                         hint="move it away to start a new one (earlier studies cannot then be resumed)") from None


TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def run_study(X: pd.DataFrame, y: pd.Series, cat_features: list[str], spec: TuningSpec, *, trials: int,
              timeout: float | None, storage: str | optuna.storages.BaseStorage | None, study_name: str, resume: bool,
              callbacks: list[TrialCallback] = ()) -> optuna.Study:
    """Create (or with `resume`, continue) the named study and optimise CV ROC AUC."""
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(5, trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=resume)
    study.set_user_attr("folds", spec.folds)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial)
        result = cross_validate(params, X, y, cat_features, spec, trial)
        trial.set_user_attr("best_iterations", result.best_iterations)
        trial.set_user_attr("fold_aucs", result.fold_aucs)
        return result.auc

    study.optimize(objective, n_trials=trials, timeout=timeout, n_jobs=1, callbacks=list(callbacks),
                   catch=())
    return study


def study_name_for(base: str, storage: str | optuna.storages.BaseStorage | None, resume: bool, now: str) -> str:
    """A new study per run (`base-<time>`), or with `resume` the newest earlier study of `base`."""
    if not resume:
        return f"{base}-{now}"
    from engine.errors import RetainError

    names = [] if storage is None else [
        s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(base + "-")]
    if not names:
        raise RetainError(f"no earlier study '{base}-*' to resume for this data",
                          hint="run without --resume first")
    return sorted(names)[-1]
