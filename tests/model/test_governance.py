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
    """v1: a good model (champion); v2: a weak one trained on 300 rows; v3: different inputs;
    v4: the same table as v1 with another seed."""
    root = tmp_path_factory.mktemp("gov")
    store = new_store(root / "store")
    base = pd.read_parquet(month_files["base"])
    small = root / "small.parquet"
    base.head(300).to_parquet(small)
    other = root / "other.csv"
    base.drop(columns=["balance", "topup_count"]).to_csv(other, index=False)
    for data, extra in ((month_files["base"], []), (small, []),
                        (other, ["--target", "churn", "--id-column", "subscriber_id"]),
                        (month_files["base"], ["--seed", "5"])):
        res = runner.invoke(app, ["train", "--data", str(data), "--json", *extra, *store.args()])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["models", "promote", "1", *store.args()])
    assert res.exit_code == 0, res.output
    return store


def test_compare_needs_independent_data_when_versions_saw_different_tables(registry, month_files, runner):
    res = runner.invoke(app, ["models", "compare", "2", "1", "--json", "--rounds", "100", *registry.args()])
    assert res.exit_code == 2
    assert "different data" in res.output and "--data" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["models", "compare", "2", "1", "--rounds", "100",
                              "--data", str(month_files["base"]), *registry.args()])
    assert res.exit_code == 2 and "version 1 was trained on" in res.output and "not independent" in res.output
    res = runner.invoke(app, ["models", "compare", "2", "1", "--json", "--rounds", "100",
                              "--data", str(month_files["same"]), *registry.args()])
    assert res.exit_code == 0, res.output
    cmp = last_json(res.stdout)
    assert cmp["rows"] == 3000 and cmp["data"] == str(month_files["same"])
    assert cmp["diff"] == pytest.approx(cmp["auc_a"] - cmp["auc_b"])
    assert cmp["ci_low"] <= cmp["diff"] <= cmp["ci_high"]
    assert cmp["auc_b"] > cmp["auc_a"], "300 rows make a weaker model"


def test_promotion_gate_refuses_worse_and_different_inputs_and_records_force(registry, month_files, runner):
    res = runner.invoke(app, ["models", "promote", "2", *registry.args()])
    assert res.exit_code == 2 and "different data" in res.output and "--data" in res.output
    res = runner.invoke(app, ["models", "promote", "2", "--data", str(month_files["same"]), *registry.args()])
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
    assert tag == {"reason": "load test", "forced": True, "gate": "refused", "kind": "promote"}
    res = runner.invoke(app, ["models", "rollback", *registry.args()])
    assert res.exit_code == 0 and "version 2 -> version 1" in res.output
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    # the challenger alias is free to point at any version
    res = runner.invoke(app, ["models", "promote", "2", "--alias", "challenger", *registry.args()])
    assert res.exit_code == 0


def test_every_version_is_tagged_and_listed(registry, runner):
    res = runner.invoke(app, ["models", "list", "--json", *registry.args()])
    rows = {r["version"]: r for r in last_json(res.stdout)}
    assert set(rows) == {"1", "2", "3", "4"}
    assert rows["1"]["data"] == rows["4"]["data"], "same table, same fingerprint"
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


# ---------------------------------------------------------------------------------------------
# A fair gate: one hold-out per table, whatever the seed
# ---------------------------------------------------------------------------------------------
def test_versions_of_one_table_share_the_holdout_whatever_the_seed(registry):
    from mlflow import MlflowClient

    from engine.model.governance import _version_tags
    from engine.model.registry import HOLDOUT_KEY, holdout_rows, load_model

    settings = registry.settings()
    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    v1, v4 = (client.get_model_version("churn", v) for v in ("1", "4"))
    assert json.loads(v1.tags["training_config"])["seed"] != json.loads(v4.tags["training_config"])["seed"]
    assert v1.tags["holdout_rule"] == v4.tags["holdout_rule"]
    assert json.loads(v1.tags["holdout_rule"])["key"] == "subscriber_id"
    assert _version_tags(settings, load_model(settings, "1"))["data_fingerprint"] == v4.tags["data_fingerprint"]
    rows_1, rows_4 = (holdout_rows(settings, load_model(settings, v)) for v in ("1", "4"))
    assert list(rows_1[HOLDOUT_KEY]) == list(rows_4[HOLDOUT_KEY]), "the same rows, in the same order"
    assert list(rows_1["subscriber_id"]) == list(rows_4["subscriber_id"])
    from engine.model.registry import reference_sample

    assert HOLDOUT_KEY not in reference_sample(settings, load_model(settings, "1")).columns, "drift never sees it"


def test_compare_a_b_is_minus_compare_b_a_on_the_shared_holdout(registry, runner):
    out = {}
    for a, b in (("4", "1"), ("1", "4"), ("4", "champion")):
        res = runner.invoke(app, ["models", "compare", a, b, "--json", "--rounds", "100", *registry.args()])
        assert res.exit_code == 0, res.output
        out[a, b] = last_json(res.stdout)
    ab, ba = out["4", "1"], out["1", "4"]
    assert ab["data"] == ba["data"] == "shared hold-out of versions 1 and 4"
    assert ab["rows"] == ba["rows"] > 400
    assert ab["diff"] == pytest.approx(-ba["diff"], abs=1e-12)
    assert (ab["auc_a"], ab["auc_b"]) == (ba["auc_b"], ba["auc_a"])
    assert ab["ci_low"] == pytest.approx(-ba["ci_high"], abs=1e-12)
    assert ab["ci_high"] == pytest.approx(-ba["ci_low"], abs=1e-12)
    assert out["4", "champion"]["diff"] == pytest.approx(ab["diff"], abs=1e-12), "an alias is its version"


def test_rollback_walks_back_and_skips_a_version_forced_over_the_gate(registry, month_files, runner):
    """alias 'stage': 1 -> 4 -> 2 (all passed the gate); alias 'prod': 1 -> 4 -> 2 (forced) -> 3 (forced)."""
    same = str(month_files["same"])

    def run(*args):
        res = runner.invoke(app, ["models", *args, *registry.args()])
        return res

    for version, extra in (("1", []), ("4", ["--tolerance", "1"]), ("2", ["--data", same, "--tolerance", "1"])):
        res = run("promote", version, "--alias", "stage", *extra)
        assert res.exit_code == 0, res.output
    res = run("rollback", "--alias", "stage")
    assert res.exit_code == 0 and "version 2 -> version 4" in res.output, res.output
    res = run("rollback", "--alias", "stage")
    assert res.exit_code == 0 and "version 4 -> version 1" in res.output, res.output
    res = run("rollback", "--alias", "stage")
    assert res.exit_code == 2 and "nothing to roll back" in res.output, "never forward again"

    for version, extra in (("1", []), ("4", ["--tolerance", "1"]), ("2", ["--force", "--reason", "pricing test"]),
                           ("3", ["--force", "--reason", "new inputs"])):
        res = run("promote", version, "--alias", "prod", *extra)
        assert res.exit_code == 0, res.output
    res = run("rollback", "--alias", "prod")
    assert res.exit_code == 0, res.output
    assert "version 3 -> version 4" in res.output and "skipped version 2" in res.output
    res = run("rollback", "--alias", "prod")
    assert res.exit_code == 0 and "version 4 -> version 1" in res.output, res.output

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    assert str(client.get_model_version_by_alias("churn", "prod").version) == "1"
    history = json.loads(client.get_registered_model("churn").tags["alias_history.prod"])
    assert [(h["version"], h["kind"], h["gate"]) for h in history] == [
        ("1", "promote", "none"), ("4", "promote", "passed"), ("2", "promote", "refused"),
        ("3", "promote", "refused"), ("4", "rollback", "none"), ("1", "rollback", "none")]
    assert history[4]["skipped"] == ["2"]


def test_rollback_refuses_when_only_forced_versions_are_left(registry, runner):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    history = [{"version": "1", "previous": None, "kind": "promote", "gate": "none", "forced": False},
               {"version": "2", "previous": "1", "kind": "promote", "gate": "refused", "forced": True},
               {"version": "4", "previous": "2", "kind": "promote", "gate": "passed", "forced": False},
               {"version": "1", "previous": "4", "kind": "rollback", "gate": "none", "forced": False,
                "skipped": ["2"]}]
    # 'canary' went 2 (forced over a refusal) -> 4; earlier moves of 'canary' rolled back already
    client.set_registered_model_tag("churn", "alias_history.canary", json.dumps(
        [{"version": "2", "previous": None, "kind": "promote", "gate": "refused", "forced": True},
         {"version": "4", "previous": "2", "kind": "promote", "gate": "passed", "forced": False}]))
    client.set_registered_model_alias("churn", "canary", "4")
    res = runner.invoke(app, ["models", "rollback", "--alias", "canary", *registry.args()])
    assert res.exit_code == 2, res.output
    assert "refused by the promotion gate" in res.output and "--force --reason" in res.output
    assert "promote 2 --alias canary" in res.output and "Traceback" not in res.output
    assert str(client.get_model_version_by_alias("churn", "canary").version) == "4", "nothing moved"
    from engine.model.governance import alias_stack

    assert [s["version"] for s in alias_stack(history, "1")] == ["1"]
