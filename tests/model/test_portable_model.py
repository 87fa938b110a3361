"""The registered model is portable: it carries its own code, loads without `engine`, and never shares code.

Issue 11 item 4: `models:/churn@champion` loads and predicts on raw rows in a fresh virtual environment
holding only the packages its own requirements name, from a folder outside the repository; champion
and challenger with different code loaded in one process each run their own; Spark scores it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.simulator import generate
from training import packaging

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".venv" / "bin" / "uv"


@pytest.fixture(scope="module")
def champion(trained):
    from engine.model.registry import load_model

    return load_model(trained.settings(), "champion")


@pytest.fixture(scope="module")
def champion_dir(trained, tmp_path_factory) -> Path:
    """The champion's artefacts, downloaded to a folder outside the repository."""
    import mlflow

    mlflow.set_tracking_uri(trained.uri)
    folder = tmp_path_factory.mktemp("champion")
    path = Path(mlflow.artifacts.download_artifacts("models:/churn@champion", dst_path=str(folder)))
    assert ROOT not in path.resolve().parents
    return path


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Raw subscriber rows as a system of record holds them (ids and all), no labels."""
    raw = generate(300, seed=21).drop(columns=["churn", "churn_reason"])
    raw.loc[5, "plan"] = None  # a missing category must score too
    return raw


def test_logged_model_carries_its_own_code_and_pinned_requirements(trained, champion, champion_dir):
    import yaml
    from mlflow import MlflowClient

    mlmodel = yaml.safe_load((champion_dir / "MLmodel").read_text())
    code = mlmodel["flavors"]["python_function"]["code"]
    modules = [p.name for p in (champion_dir / code).iterdir()]
    assert modules == [packaging.module_name()], "one package, named by the hash of the portable code"
    assert champion.module == f"{packaging.module_name()}.model"
    assert not champion.module.startswith("engine")
    reqs = (champion_dir / "requirements.txt").read_text().split()
    assert sorted(reqs) == sorted(packaging.requirements())
    assert all("==" in r for r in reqs) and not any(r.split("==")[0] in {"scikit-learn", "retain"} for r in reqs)
    client = MlflowClient(tracking_uri=trained.uri, registry_uri=trained.uri)
    mv = client.get_model_version_by_alias("churn", "champion")
    assert mv.tags["model_code"] == packaging.module_name()
    # reason labels are frozen into the model at training and read from it
    assert champion.reason_labels and set(champion.reason_labels) == set(champion.model.spec["reasons"])


def test_code_hash_follows_the_source(tmp_path):
    copy = tmp_path / "portable"
    shutil.copytree(packaging.PORTABLE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert packaging.code_hash(copy) == packaging.code_hash()
    (copy / "model.py").write_text((copy / "model.py").read_text() + "\n# a comment is a change\n")
    assert packaging.code_hash(copy) != packaging.code_hash()
    assert len(packaging.code_hash()) == 10


def test_portable_model_predicts_in_a_fresh_venv_outside_the_repository(champion, champion_dir, rows, tmp_path):
    """Only the model's requirements.txt installed; no PYTHONPATH; cwd outside the repo; `engine` absent."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    res = subprocess.run([str(UV), "pip", "install", "--quiet", "--python", str(python),
                          "-r", str(champion_dir / "requirements.txt")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    data = tmp_path / "rows.pkl"
    plain = rows.astype({c: object for c in rows.columns if isinstance(rows[c].dtype, pd.StringDtype)})
    plain.to_pickle(data)  # plain numpy dtypes: the fresh venv has no pyarrow
    out = tmp_path / "out.json"
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, json, sys
        import mlflow.pyfunc, pandas as pd
        assert importlib.util.find_spec("engine") is None, "engine must not be importable here"
        assert importlib.util.find_spec("sklearn") is None, "the model must not need scikit-learn"
        model = mlflow.pyfunc.load_model({str(champion_dir)!r})
        rows = pd.read_pickle({str(data)!r})
        plain = model.predict(rows)
        full = model.predict(rows, params={{"score": True, "explain": True}})
        inner = model.unwrap_python_model()
        json.dump({{"module": type(inner).__module__, "p": plain["churn_probability"].tolist(),
                   "full": full.astype(object).where(full.notna(), None).to_dict(orient="list"),
                   "path": sys.path}}, open({str(out)!r}, "w"))
    """))
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    res = subprocess.run([str(python), str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["module"] == f"{packaging.module_name()}.model"
    assert not any(str(ROOT) in p for p in got["path"])

    expected = champion.predict_proba(rows)
    np.testing.assert_allclose(got["p"], expected, rtol=1e-9, atol=1e-12)
    full = pd.DataFrame(got["full"])
    scored, reasons = champion.score(rows), champion.explain(rows)
    np.testing.assert_allclose(full["churn_probability"], expected, rtol=1e-9, atol=1e-12)
    assert full["value_tier"].tolist() == scored["value_tier"].tolist()
    for col in champion.model.derived_columns:
        np.testing.assert_allclose(full[col].astype(float), scored[col], rtol=1e-9)
    assert full["reason"].tolist() == reasons["reason"].tolist()
    assert full["reason_signal"].tolist() == reasons["reason_signal"].tolist()


def _variant(tmp_path: Path) -> Path:
    """The portable code with one harmless, visible change: probabilities are halved."""
    copy = tmp_path / "variant"
    shutil.copytree(packaging.PORTABLE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    model = copy / "model.py"
    old = "return 1.0 / (1.0 + np.exp(-raw))"
    assert old in model.read_text()
    model.write_text(model.read_text().replace(old, "return 0.5 / (1.0 + np.exp(-raw))"))
    return copy


def test_champion_and_challenger_with_different_code_each_run_their_own(trained, champion, champion_dir, rows,
                                                                         tmp_path):
    """The `code_paths` cache trap: with one module name, the second model would run the first one's code."""
    import mlflow.pyfunc

    from engine.model.registry import is_churn_model

    code_dir, code = packaging.stage(tmp_path / "code", _variant(tmp_path))
    assert code.__name__ != packaging.module_name()
    artefacts = champion_dir / "artifacts"
    challenger_dir = tmp_path / "challenger"
    mlflow.pyfunc.save_model(
        str(challenger_dir), python_model=code.ChurnModel(), code_paths=[str(code_dir)],
        artifacts={"catboost": str(artefacts / "model.cbm"), "spec": str(artefacts / "spec.json")},
        pip_requirements=packaging.requirements())

    mlflow.set_tracking_uri(trained.uri)
    first = mlflow.pyfunc.load_model("models:/churn@champion")
    second = mlflow.pyfunc.load_model(str(challenger_dir))
    again = mlflow.pyfunc.load_model(str(champion_dir))
    a, b, c = (m.unwrap_python_model() for m in (first, second, again))
    assert type(a).__module__ == f"{packaging.module_name()}.model"
    assert type(b).__module__ == f"{code.__name__}.model"
    assert type(a) is type(c), "equal code is shared"
    assert all(is_churn_model(m) for m in (a, b, c))
    p_a = first.predict(rows)["churn_probability"].to_numpy()
    p_b = second.predict(rows)["churn_probability"].to_numpy()
    np.testing.assert_allclose(p_a, champion.predict_proba(rows))
    np.testing.assert_allclose(p_b, p_a / 2)
    np.testing.assert_allclose(again.predict(rows)["churn_probability"].to_numpy(), p_a)


def test_registry_refuses_a_model_that_is_not_a_churn_model(trained, tmp_path):
    import mlflow.pyfunc

    from engine.errors import ModelError
    from engine.model.registry import load_model

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            return model_input

    mlflow.pyfunc.save_model(str(tmp_path / "echo"), python_model=Echo(), pip_requirements=["mlflow"])
    with pytest.raises(ModelError, match="not a retain churn model"):
        load_model(trained.settings(), str(tmp_path / "echo"))


def test_missing_input_column_is_a_data_error(champion, rows):
    from engine.errors import DataError

    with pytest.raises(DataError, match="satisfaction_score"):
        champion.score(rows.drop(columns=["satisfaction_score"]))


def test_versions_logged_before_the_portable_code_still_load(trained, champion, champion_dir, rows, tmp_path,
                                                             monkeypatch):
    """A version from before (pickled as engine.model.churn.ChurnModel, pipeline state as derived_ only)."""
    import cloudpickle

    from engine.model.churn import ChurnModel
    from engine.model.registry import load_model

    old = tmp_path / "old"
    shutil.copytree(champion_dir, old)
    shutil.rmtree(old / "code")
    mlmodel = (old / "MLmodel").read_text()
    (old / "MLmodel").write_text("\n".join(line for line in mlmodel.splitlines() if line.strip() != "code: code"))
    assert "code:" not in (old / "MLmodel").read_text()
    spec_path = old / "artifacts" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec["pipeline"] = {k: spec["pipeline"][k] for k in ("categorical", "numeric", "derive", "derived_")}
    spec_path.write_text(json.dumps(spec))
    instance = ChurnModel()
    del instance.__dict__["_tiers"]  # the attributes the old class had
    monkeypatch.setattr(ChurnModel, "__module__", "engine.model.churn")
    (old / "python_model.pkl").write_bytes(cloudpickle.dumps(instance))
    monkeypatch.undo()
    assert b"engine.model.churn" in (old / "python_model.pkl").read_bytes()

    loaded = load_model(trained.settings(), str(old))
    assert type(loaded.model) is ChurnModel
    pd.testing.assert_frame_equal(loaded.score(rows), champion.score(rows))
