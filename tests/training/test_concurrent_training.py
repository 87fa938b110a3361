"""Two `retain train` at once on one new SQLite store: both finish, or one stops with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def test_two_trainings_at_once_on_one_sqlite_store(store, month_files, tmp_path):
    """A new store: both processes create MLflow's and Optuna's tables at once, then both write runs."""
    small = tmp_path / "small.parquet"
    pd.read_parquet(month_files["base"]).head(800).to_parquet(small)
    cmd = [sys.executable, "-c", "from engine.cli.main import app; app(prog_name='retain')", "train", "--data",
           str(small), "--trials", "1", "--json", *store.args()]
    env = {**os.environ, "RETAIN_TRAIN_LOCK_WAIT": "300"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([*cmd, "--seed", str(seed)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    versions = []
    for code, out, err in results:
        assert "Traceback" not in err, err[-3000:]
        if code == 0:
            versions.append(json.loads(out.strip().splitlines()[-1])["model_version"])
        else:
            assert code == 2, err[-3000:]
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "another" in errors[0], err[-3000:]
    assert versions, "at least one training finishes"
    assert sorted(versions) == [str(v) for v in range(1, len(versions) + 1)], "versions registered without gaps"
