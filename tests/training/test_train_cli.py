"""`retain train` and `retain models` end to end against a real SQLite MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from engine.cli.main import app


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_train_logs_run_registers_version_and_reference(trained, runner):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained.uri, registry_uri=trained.uri)
    mv = client.get_model_version_by_alias("churn", "champion")
    assert str(mv.version) == "1"
    assert len(mv.tags["data_fingerprint"]) == 64
    assert mv.tags["code_version"]
    assert json.loads(mv.tags["training_config"])["trials"] == 2
    run = client.get_run(mv.run_id)
    for key in ("holdout_roc_auc", "holdout_pr_auc", "holdout_log_loss", "cv_roc_auc"):
        assert key in run.data.metrics
    assert 0.6 < run.data.metrics["holdout_roc_auc"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"plots", "optuna", "reference", "feature_importance.csv"} <= artifacts
    plots = {a.path for a in client.list_artifacts(mv.run_id, "plots")}
    assert {"plots/roc.png", "plots/pr.png"} <= plots
    assert run.inputs.dataset_inputs, "the training table is logged as a run input"
    # each Optuna trial is a nested run under the training run
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{mv.run_id}'")
    assert len(children) == 2
    mlflow.set_tracking_uri(trained.uri)
    info = mlflow.models.get_model_info(f"models:/churn/{mv.version}")
    assert info.signature is not None and info.signature.inputs is not None


def test_train_json_summary_is_last_line(store, month_files, runner):
    res = runner.invoke(app, ["train", "--data", str(month_files["base"]), "--trials", "1", "--no-register",
                              "--json", *store.args()])
    assert res.exit_code == 0, res.output
    summary = last_json(res.stdout)
    assert {"run_id", "model_version", "roc_auc", "pr_auc", "log_loss"} <= set(summary)
    assert summary["model_version"] is None


def test_models_list_and_promote(trained, runner):
    res = runner.invoke(app, ["models", "list", "--json", *trained.args()])
    assert res.exit_code == 0, res.output
    rows = last_json(res.stdout)
    assert rows[0]["version"] == "1" and "champion" in rows[0]["aliases"]
    assert rows[0]["roc_auc"] > 0.6
    res = runner.invoke(app, ["models", "promote", "1", "--alias", "challenger", *trained.args()])
    assert res.exit_code == 0 and "challenger" in res.output
    res = runner.invoke(app, ["models", "promote", "99", *trained.args()])
    assert res.exit_code == 2 and "no version 99" in res.output


def test_registered_model_scores_in_a_fresh_process(trained, month_files):
    """The packaged model needs nothing but its URI: load it where nothing of training was imported."""
    code = (
        "import mlflow, pandas as pd, sys\n"
        f"mlflow.set_tracking_uri({trained.uri!r})\n"
        "m = mlflow.pyfunc.load_model('models:/churn@champion')\n"
        f"df = pd.read_parquet({str(month_files['same'])!r}).head(50)\n"
        "p = m.predict(df.drop(columns=['churn', 'churn_reason']))\n"
        "assert p['churn_probability'].between(0, 1).all(), p\n"
        "print('ok', len(p))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ok 50" in res.stdout


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda df: df.assign(churn=0), "constant"),
        (lambda df: df.assign(churn=[i % 3 for i in range(len(df))]), "3 classes"),
        (lambda df: df.drop(columns=["churn"]).rename(columns={"plan": "tariff"}), "target"),
        (lambda df: df.head(4), "too few"),
    ],
)
def test_train_refuses_bad_targets(tmp_path, store, month_files, runner, mutate, expected):
    bad = tmp_path / "bad.csv"
    mutate(pd.read_parquet(month_files["base"])).to_csv(bad, index=False)
    res = runner.invoke(app, ["train", "--data", str(bad), "--target", "churn", *store.args()])
    assert res.exit_code == 2, res.output
    assert expected in res.output and "Traceback" not in res.output


def test_train_unknown_file_and_dataset(store, runner):
    res = runner.invoke(app, ["train", "--data", "nope.parquet", *store.args()])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["train", "--data", "nosuchdataset", *store.args()])
    assert res.exit_code == 2 and "unknown dataset" in res.output


def test_train_refuses_non_numeric_value_in_numeric_column(tmp_path, store, month_files, runner):
    df = pd.read_parquet(month_files["base"])
    df["tenure_months"] = df["tenure_months"].astype(object)
    df.loc[5, "tenure_months"] = "ten"
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    res = runner.invoke(app, ["train", "--data", str(bad), *store.args()])
    assert res.exit_code == 2
    assert "tenure_months" in res.output and "wrong type" in res.output
