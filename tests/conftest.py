"""Shared fixtures: a real MLflow store (SQLite) with a small real model, trained once per session."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
FAST_TRAINING = {"training": {"trials": 2, "folds": 2, "max_iterations": 120, "early_stopping_rounds": 15,
                              "reference_sample_rows": 2000}}


@dataclass
class Store:
    """A tracking store folder with a config that keeps training tiny."""

    root: Path
    config: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}"

    def args(self) -> list[str]:
        return ["--config", str(self.config), "--tracking-uri", self.uri]

    def settings(self):
        from engine.config import load_settings

        return load_settings(self.config, tracking_uri=self.uri)


def make_store(root: Path) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "retain.yaml"
    cfg.write_text(yaml.safe_dump(FAST_TRAINING))
    return Store(root, cfg)


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def month_files(tmp_path_factory) -> dict[str, Path]:
    """Small simulated months: base (train), same distribution, and a drifted month."""
    from engine.data.io import write_table
    from engine.data.simulator import generate

    folder = tmp_path_factory.mktemp("months")
    files = {"base": folder / "base.parquet", "same": folder / "same.parquet", "drifted": folder / "drifted.parquet"}
    write_table(generate(4000, seed=1), files["base"])
    write_table(generate(3000, seed=2), files["same"])
    write_table(generate(3000, seed=3, scenario="competitor_campaign"), files["drifted"])
    return files


@pytest.fixture(scope="session")
def trained(tmp_path_factory, month_files, runner) -> Store:
    """A store whose model version 1 is trained on the base month and promoted to champion."""
    from engine.cli.main import app

    store = make_store(tmp_path_factory.mktemp("store"))
    res = runner.invoke(app, ["train", "--data", str(month_files["base"]), "--json", *store.args()])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["model_version"] == "1"
    res = runner.invoke(app, ["models", "promote", "1", "--alias", "champion", *store.args()])
    assert res.exit_code == 0, res.output
    return store


@pytest.fixture(scope="session")
def new_store():
    """Factory for a fresh store folder (module-scoped fixtures cannot use `store`)."""
    return make_store


@pytest.fixture()
def store(tmp_path) -> Store:
    return make_store(tmp_path / "store")


#: Process-wide state a test can leave behind for the next test in the same process (an xdist worker runs
#: many): MLflow's set_tracking_uri / set_registry_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
#: which the CLIs read as their --tracking-uri default; xdist workers start with COLUMNS=80 / LINES=24, which
#: rich takes as the terminal width, unlike a plain `pytest` run whose output is not a terminal.
ISOLATED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "COLUMNS", "LINES")


def _reset_process_globals() -> None:
    for name in ISOLATED_ENV:
        os.environ.pop(name, None)
    if "mlflow" in sys.modules:  # never import MLflow for a test that does not use it
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None


@pytest.fixture(autouse=True)
def isolated_process_globals():
    """Every test starts with MLflow's global tracking/registry URI unset and no inherited terminal size.

    Why: with one test per process these never matter; under `pytest -n 2` a test that reads
    `models:/churn/1` through MLflow's globals resolved it in the registry of whichever test ran before it in
    that worker, and report tables rendered at 80 columns. Tests that need the variables set them
    themselves (monkeypatch.setenv, mlflow.set_tracking_uri); they are cleared again afterwards.
    """
    _reset_process_globals()
    yield
    _reset_process_globals()
