"""Model governance an ML engineer can trust: compare, gated promotion, forced promotion, rollback,
resumable and reproducible studies, and bring-your-own tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from engine.cli.main import app


def last_json(output: str):
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory, month_files, runner, new_store):
    """v1: a good model (champion); v2: a weak one trained on 300 rows; v3: different inputs."""
    root = tmp_path_factory.mktemp("gov")
    store = new_store(root / "store")
    base = pd.read_parquet(month_files["base"])
    small = root / "small.parquet"
    base.head(300).to_parquet(small)
    other = root / "other.csv"
    base.drop(columns=["balance", "topup_count"]).to_csv(other, index=False)
    for data, extra in ((month_files["base"], []), (small, []), (other, ["--target", "churn",
                                                                          "--id-column", "subscriber_id"])):
        res = runner.invoke(app, ["train", "--data", str(data), "--json", *extra, *store.args()])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["models", "promote", "1", *store.args()])
    assert res.exit_code == 0, res.output
    return store


def test_compare_scores_both_on_the_same_holdout(registry, runner):
    res = runner.invoke(app, ["models", "compare", "2", "1", "--json", "--rounds", "100", *registry.args()])
    assert res.exit_code == 0, res.output
    cmp = last_json(res.stdout)
    assert cmp["rows"] > 100 and cmp["data"] == "hold-out of version 1"
    assert cmp["diff"] == pytest.approx(cmp["auc_a"] - cmp["auc_b"])
    assert cmp["ci_low"] <= cmp["diff"] <= cmp["ci_high"]
    assert cmp["auc_b"] > cmp["auc_a"], "300 rows make a weaker model"


def test_promotion_gate_refuses_worse_and_different_inputs_and_records_force(registry, runner):
    res = runner.invoke(app, ["models", "promote", "2", *registry.args()])
    assert res.exit_code == 2 and "refused" in res.output and "tolerance" in res.output
    res = runner.invoke(app, ["models", "promote", "3", *registry.args()])
    assert res.exit_code == 2 and "different inputs" in res.output and "balance" in res.output
    res = runner.invoke(app, ["models", "promote", "2", "--force", *registry.args()])
    assert res.exit_code == 2 and "--reason" in res.output
    res = runner.invoke(app, ["models", "promote", "2", "--force", "--reason", "load test", *registry.args()])
    assert res.exit_code == 0, res.output
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "2"
    tag = json.loads(client.get_model_version("churn", "2").tags["promoted_to.champion"])
    assert tag == {"reason": "load test", "forced": True}
    res = runner.invoke(app, ["models", "rollback", *registry.args()])
    assert res.exit_code == 0 and "version 2 -> version 1" in res.output
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    # the challenger alias is free to point at any version
    res = runner.invoke(app, ["models", "promote", "2", "--alias", "challenger", *registry.args()])
    assert res.exit_code == 0


def test_every_version_is_tagged_and_listed(registry, runner):
    res = runner.invoke(app, ["models", "list", "--json", *registry.args()])
    rows = {r["version"]: r for r in last_json(res.stdout)}
    assert set(rows) == {"1", "2", "3"}
    assert rows["1"]["data"] != rows["2"]["data"], "different data, different fingerprint"
    assert all(r["code"] and r["created"] for r in rows.values())


def test_same_seed_same_metrics_and_resume(store, month_files, runner):
    args = ["train", "--data", str(month_files["base"]), "--no-register", "--json", "--seed", "7", *store.args()]
    first, second = (last_json(runner.invoke(app, args).stdout) for _ in range(2))
    assert first["roc_auc"] == second["roc_auc"] and first["best_params"] == second["best_params"]
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    summary = last_json(resumed.stdout)
    assert summary["study_name"] == second["study_name"] and summary["trials"] == 4


def test_bring_your_own_table_infers_roles_and_drops_leaks(tmp_path, store, month_files, runner):
    df = pd.read_parquet(month_files["base"]).drop(columns=["churn_reason"]).rename(columns={"churn": "Churned"})
    df["Churned"] = df["Churned"].map({1: "Yes", 0: "No"})
    df.insert(0, "rownames", range(1, len(df) + 1))
    path = tmp_path / "byo.csv"
    df.to_csv(path, index=False)
    res = runner.invoke(app, ["train", "--data", str(path), "--target", "Churned", "--trials", "1", "--no-register",
                              "--json", *store.args()])
    assert res.exit_code == 0, res.output
    assert "rownames" in res.output and "row number" in res.output
    assert "subscriber_id" in res.output and "dropped" in res.output
    assert last_json(res.stdout)["roc_auc"] > 0.7


def test_dataset_config_errors_are_one_line(tmp_path, store, month_files, runner):
    cfg = tmp_path / "roles.yaml"
    cfg.write_text("target: churn\ncategorical: [plan]\nnumeric: [plan]\n")
    res = runner.invoke(app, ["train", "--data", str(month_files["base"]), "--dataset-config", str(cfg),
                              *store.args()])
    assert res.exit_code == 2 and "both categorical and numeric" in res.output
    cfg.write_text("target: [\n")
    res = runner.invoke(app, ["train", "--data", str(month_files["base"]), "--dataset-config", str(cfg),
                              *store.args()])
    assert res.exit_code == 2 and "malformed YAML" in res.output
