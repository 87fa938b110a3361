"""`retain uplift train`: learn tau(x, offer) from logged decisions and outcomes, evaluate it on held-out logged
rows, log everything to MLflow and register it as a version of the model `uplift` (alias `champion`).

Hold-out: a stable hash of (run, subscriber) puts `holdout_share` of the logged rows aside; the model is fitted
on the rest and scored on them with the Qini coefficient, AUUC and uplift@10%/30% (engine.uplift.metrics),
overall (each row's own offer) and per offer with at least `MIN_EVAL` rows in each arm. Outcome = stayed
(1 - churned within the window), treated vs control by original assignment, like the report.

Packaging: like the churn model (training.packaging), the pyfunc's code travels with it as a module named by
its content, `retain_uplift_<hash>`: engine/uplift/portable plus a copy of the churn model's feature
pipeline, so the artefact loads where `engine` is not installed and versions never share cached code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

import engine.model.portable as churn_portable
import engine.uplift.portable as uplift_portable
from engine.config import Settings
from engine.data.labelled import DatasetConfig
from engine.errors import DataError, ModelError
from engine.model.portable.features import FeaturePipeline
from engine.uplift.data import logged_frame, training_arrays
from engine.uplift.effect import PRIOR_STRENGTH, fit_uplift, priors_from_offers
from engine.uplift.explore import stable_uniforms
from engine.uplift.portable.model import CHANNEL, OFFER, UpliftModel
from engine.uplift.registry import UPLIFT_EXPERIMENT, UPLIFT_MODEL_NAME
from engine.uplift.report import evaluate_uplift
from training.packaging import copy_and_import, pins

MODULE_PREFIX = "retain_uplift_"
REQUIREMENTS = ("mlflow-skinny", "cloudpickle", "catboost", "pandas", "numpy")


@dataclass
class UpliftTrainResult:
    run_id: str | None
    model_version: str | None
    alias: str | None
    rows: int
    train_rows: int
    holdout_rows: int
    metrics: dict[str, float]
    per_offer: list[dict[str, Any]]
    offers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _pipeline(settings: Settings) -> FeaturePipeline:
    """The churn champion's raw columns when there is one, else the built-in subscriber schema's."""
    try:
        from engine.model.registry import load_model

        p = load_model(settings, "champion").model.pipeline
        return FeaturePipeline(list(p.categorical), list(p.numeric), p.derive)
    except Exception:  # noqa: BLE001 - no champion (or no store): the built-in schema
        cfg = DatasetConfig.builtin()
        return FeaturePipeline(list(cfg.categorical), list(cfg.numeric), derive=True)


def _priors(settings: Settings, policy_dir: str | Path | None) -> dict[str, float]:
    from engine.policy import load_policy_set

    try:
        return priors_from_offers(load_policy_set(policy_dir or settings.policy_dir).offers)
    except Exception:  # noqa: BLE001 - a policy folder that does not load: no priors (0 for every offer)
        return {}


def train_uplift(settings: Settings, *, runs: list[str] | None = None, window: int = 90,
                 policy_dir: str | Path | None = None, holdout_share: float = 0.3, seed: int = 0,
                 prior_strength: float = PRIOR_STRENGTH, register: bool = True, alias: str | None = "champion",
                 log: bool = True, url: str | None = None, inputs: dict[str, pd.DataFrame] | None = None,
                 threads: int = 2) -> UpliftTrainResult:
    """Fit, evaluate, log and (by default) register and alias a new version of the uplift model."""
    if not 0 < holdout_share < 1:
        raise DataError(f"hold-out share must be between 0 and 1, got {holdout_share}")
    frame = logged_frame(settings, runs, window=window, url=url, inputs=inputs)
    if not frame["treated"].any():
        raise DataError("no logged decision was sent (status 'offer'): nothing to learn an effect from")
    keys = (frame["decision_run"].astype(str) + "/" + frame["subscriber_id"].astype(str)).to_numpy(dtype=object)
    hold = stable_uniforms(keys, "uplift-holdout", streams=1)[0] < holdout_share
    train, test = frame[~hold].reset_index(drop=True), frame[hold].reset_index(drop=True)
    priors = _priors(settings, policy_dir)
    model = fit_uplift(train, pipeline=_pipeline(settings), priors=priors, prior_strength=prior_strength,
                       seed=seed, threads=threads, extra_spec={"window": window}, **training_arrays(train))
    metrics, per_offer = evaluate_uplift(model, test)
    result = UpliftTrainResult(run_id=None, model_version=None, alias=None, rows=len(frame), train_rows=len(train),
                               holdout_rows=len(test), metrics=metrics, per_offer=per_offer, offers=model.offers)
    if log:
        _log(settings, model, train, result, {"window": window, "seed": seed, "holdout_share": holdout_share,
                                             "prior_strength": prior_strength, "runs": ",".join(runs or ["all"])},
             register=register, alias=alias)
    return result


# ---------------------------------------------------------------------------------------------
# packaging and MLflow
# ---------------------------------------------------------------------------------------------
def _sources() -> list[tuple[str, Path]]:
    folder = Path(uplift_portable.__file__).resolve().parent
    files = [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*.py"))
             if "__pycache__" not in p.parts]
    return [*files, ("features.py", Path(churn_portable.__file__).resolve().parent / "features.py")]


def module_name() -> str:
    digest = hashlib.sha256()
    for rel, path in _sources():
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{MODULE_PREFIX}{digest.hexdigest()[:10]}"


def stage(dest: Path) -> tuple[Path, ModuleType]:
    """Copy the uplift model's code (and the churn pipeline) to dest/<module name> and import it from there."""
    return copy_and_import(dest, module_name(), list(_sources()))


def _requirements() -> list[str]:
    return pins(REQUIREMENTS)


def _log(settings: Settings, model: UpliftModel, train: pd.DataFrame, result: UpliftTrainResult,
         params: dict[str, Any], *, register: bool, alias: str | None) -> None:
    import mlflow
    from mlflow.models import infer_signature

    from engine.model.registry import connect, ensure_experiment

    client = connect(settings)
    experiment_id = ensure_experiment(settings, UPLIFT_EXPERIMENT)
    cols = [*model.input_columns, OFFER, CHANNEL]
    example = train[cols].head(5).reset_index(drop=True)
    with mlflow.start_run(experiment_id=experiment_id, run_name="train-uplift") as run:
        result.run_id = run.info.run_id
        mlflow.set_tags({"retain.kind": "uplift-training"})
        mlflow.log_params({**params, "rows": result.rows, "train_rows": result.train_rows,
                           "holdout_rows": result.holdout_rows})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in result.metrics.items() if np.isfinite(v)})
        mlflow.log_dict({"per_offer": result.per_offer, "offers": result.offers}, "uplift/evaluation.json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(train[cols], model.predict(None, example))
        with tempfile.TemporaryDirectory() as tmp:
            artifacts = model.save_artifacts(Path(tmp) / "parts")
            code_dir, code = stage(Path(tmp) / "code")
            with contextlib.redirect_stderr(io.StringIO()):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=code.UpliftModel(), artifacts=artifacts, signature=signature,
                    input_example=example, registered_model_name=UPLIFT_MODEL_NAME if register else None,
                    code_paths=[str(code_dir)], pip_requirements=_requirements())
        if info.signature is None:
            raise ModelError("the logged uplift model has no signature; refusing to register it")
    if register and info.registered_model_version:
        result.model_version = str(info.registered_model_version)
        client.set_model_version_tag(UPLIFT_MODEL_NAME, result.model_version, "model_code", code.__name__)
        client.set_model_version_tag(UPLIFT_MODEL_NAME, result.model_version, "evaluation",
                                     json.dumps({k: round(v, 5) for k, v in result.metrics.items()
                                                 if np.isfinite(v)}))
        if alias:
            client.set_registered_model_alias(UPLIFT_MODEL_NAME, alias, result.model_version)
            result.alias = alias
