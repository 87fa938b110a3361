"""Governance edges: the hash hold-out rule, alias names, alias history replay, damaged and busy stores."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from engine.cli.main import app
from engine.errors import DataError, ModelError


def _one_error_line(output: str) -> None:
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1, output


# ---------------------------------------------------------------------------------------------
# the hold-out is a function of the data
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(month_files):
    from engine.data.labelled import load_training_table

    return load_training_table(str(month_files["base"]))


def test_holdout_depends_on_the_data_only(table):
    from training.holdout import split

    first, again = split(table, 0.2, 2), split(table, 0.2, 2)
    assert list(first.holdout) == list(again.holdout)
    assert 0.17 < len(first.holdout) / len(table.frame) < 0.23
    assert set(first.holdout).isdisjoint(first.train) and len(first.holdout) + len(first.train) == len(table.frame)
    assert first.rule == {"rule": "sha256", "key": "subscriber_id", "share": 0.2, "version": 1}
    # a row's side depends on its id alone: shuffling the table moves no subscriber across the split
    from dataclasses import replace

    order = np.random.default_rng(3).permutation(len(table.frame))
    shuffled = replace(table, frame=table.frame.iloc[order].reset_index(drop=True),
                       target=table.target.iloc[order].reset_index(drop=True))
    held = set(table.frame["subscriber_id"].iloc[first.holdout])
    assert set(shuffled.frame["subscriber_id"].iloc[split(shuffled, 0.2, 2).holdout]) == held
    # a smaller share holds out a subset of a larger one
    assert set(split(table, 0.1, 2).holdout) <= set(first.holdout)


def test_holdout_without_an_id_hashes_row_content(table):
    from dataclasses import replace

    from training.holdout import row_keys, split

    no_id = replace(table, frame=table.frame.drop(columns=["subscriber_id"]),
                    config=table.config.model_copy(update={"id_column": None}))
    result = split(no_id, 0.2, 2)
    assert result.rule["key"] == "row content"
    assert list(result.holdout) == list(split(no_id, 0.2, 2).holdout)
    keys = row_keys(no_id)
    assert keys.is_unique and keys.str.len().eq(64).all()


def test_holdout_too_small_is_one_line(table):
    from dataclasses import replace

    from training.holdout import split

    tiny = replace(table, frame=table.frame.head(12), target=table.target.head(12))
    with pytest.raises(DataError, match="hold-out"):
        split(tiny, 0.2, 2)


# ---------------------------------------------------------------------------------------------
# alias names and alias history
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", ["../x", "a b", "", "9lives", "x" * 65, "champion;rm", "latest", "v3"])
def test_bad_alias_names_are_one_line(trained, runner, alias):
    res = runner.invoke(app, ["models", "promote", "1", "--alias", alias, *trained.args()])
    assert res.exit_code == 2, res.output
    _one_error_line(res.output)
    assert "alias" in res.output and ("letter" in res.output or "reserved" in res.output)
    res = runner.invoke(app, ["models", "rollback", "--alias", alias, *trained.args()])
    assert res.exit_code == 2, res.output
    _one_error_line(res.output)


def test_good_alias_names_pass():
    from engine.model.governance import validate_alias

    for alias in ("champion", "challenger", "shadow_2", "eu-west", "A"):
        assert validate_alias(alias) == alias
    with pytest.raises(ModelError, match="letter"):
        validate_alias("../x")


def test_alias_stack_replays_promotions_and_rollbacks():
    from engine.model.governance import alias_stack

    def move(v, kind="promote", gate="passed"):
        return {"version": v, "kind": kind, "gate": gate}

    history = [move("1", gate="none"), move("2"), move("3")]
    assert [s["version"] for s in alias_stack(history, "3")] == ["1", "2", "3"]
    history.append(move("2", "rollback", "none"))
    assert [s["version"] for s in alias_stack(history, "2")] == ["1", "2"], "a rollback is undone, not pushed"
    history += [move("4", gate="refused"), move("5")]
    stack = alias_stack(history, "5")
    assert [(s["version"], s["refused"]) for s in stack] == [("1", False), ("2", False), ("4", True), ("5", False)]
    # moved outside retain: the current holder is on top
    assert alias_stack(history, "9")[-1]["version"] == "9"
    # histories from before moves were labelled: a forced move counts as refused
    legacy = [{"version": "1", "previous": None, "forced": False}, {"version": "2", "previous": "1", "forced": True}]
    assert [s["refused"] for s in alias_stack(legacy, "2")] == [False, True]


# ---------------------------------------------------------------------------------------------
# damaged and busy stores
# ---------------------------------------------------------------------------------------------
def test_truncated_tracking_store_is_one_line(trained, tmp_path, runner):
    src = trained.root / "mlruns" / "mlflow.db"
    damaged = tmp_path / "mlflow.db"
    damaged.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    res = runner.invoke(app, ["models", "list", "--tracking-uri", f"sqlite:///{damaged}"])
    assert res.exit_code == 2, res.output
    _one_error_line(res.output)
    assert "damaged" in res.output and str(damaged) in res.output


def test_damaged_optuna_database_is_one_line(trained, store, month_files, runner):
    optuna_db = trained.root / "mlruns" / "optuna.db"
    target = store.root / "mlruns" / "optuna.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(optuna_db.read_bytes()[:4096])
    res = runner.invoke(app, ["train", "--data", str(month_files["base"]), "--trials", "1", *store.args()])
    assert res.exit_code == 2, res.output
    _one_error_line(res.output)
    assert "Optuna study database" in res.output and "optuna.db" in res.output


def test_training_waits_for_the_store_lock_then_says_who_holds_it(store, month_files, runner):
    from engine.model.registry import file_lock

    db = store.root / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.with_name("mlflow.db.train.lock"), wait=0, busy="test"):
        res = runner.invoke(app, ["train", "--data", str(month_files["base"]), "--trials", "1", *store.args()],
                            env={"RETAIN_TRAIN_LOCK_WAIT": "0.5"})
    assert res.exit_code == 2, res.output
    _one_error_line(res.output)
    assert "another `retain train` is writing to the SQLite store" in res.output and "pid" in res.output
    assert "waited 0.5 s" in res.output


def test_unusable_store_copy_keeps_working_after_restore(trained, tmp_path, runner):
    """A damaged file named once is checked again when replaced by a good one (no stale cache)."""
    good = trained.root / "mlruns" / "mlflow.db"
    path = tmp_path / "store.db"
    path.write_bytes(good.read_bytes()[:8192])
    uri = f"sqlite:///{path}"
    assert runner.invoke(app, ["models", "list", "--tracking-uri", uri]).exit_code == 2
    path.unlink()
    shutil.copyfile(good, path)
    res = runner.invoke(app, ["models", "list", "--json", "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    assert pd.DataFrame(__import__("json").loads(res.stdout.strip().splitlines()[-1]))["version"].tolist()
