"""The fitted state the model stores (feature pipeline, value tiers) restores exactly, without refitting."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.schema import DatasetConfig
from engine.data.simulator import generate
from engine.model.features import LEARNED, FeaturePipeline, InputError
from engine.model.portable.value_tiers import ValueTiers
from engine.model.value_tiers import ValueSegmenter

PORTABLE = Path(__file__).resolve().parents[2] / "engine" / "model" / "portable"


@pytest.fixture(scope="module")
def month() -> pd.DataFrame:
    return generate(3000, seed=11)


def _json_round_trip(data: dict) -> dict:
    return json.loads(json.dumps(data))  # what spec.json does to it


@pytest.mark.parametrize("derive", [True, False])
def test_feature_pipeline_round_trip_gives_identical_features(month, derive):
    cfg = DatasetConfig.builtin()
    pipe = FeaturePipeline(cfg.categorical, cfg.numeric, derive=derive).fit(month)
    restored = FeaturePipeline.from_dict(_json_round_trip(pipe.to_dict()))
    for name in LEARNED:
        assert getattr(restored, name) == getattr(pipe, name), name
    assert bool(restored.derived_) is derive
    # other rows than the ones it was fitted on, with a missing category and a non-numeric number
    other = generate(500, seed=12)
    other.loc[3, "plan"] = None
    other["tenure_months"] = other["tenure_months"].astype(object)
    other.loc[4, "tenure_months"] = "ten"
    pd.testing.assert_frame_equal(restored.transform(other), pipe.transform(other))
    assert restored.transform(other).loc[3, "plan"] == "__missing__"
    assert np.isnan(restored.transform(other).loc[4, "tenure_months"])


def test_feature_pipeline_restores_learned_state_as_stored_not_by_refitting(month):
    """from_dict must take the stored state: a pipeline fitted on fewer columns stays that pipeline."""
    pipe = FeaturePipeline(["plan"], ["arpu_m0", "arpu_m2", "days_inactive"]).fit(month)
    data = _json_round_trip(pipe.to_dict())
    assert data["derived_"] == ["arpu_change"]
    data["feature_names_"] = list(reversed(data["feature_names_"]))  # stored state wins over what fit would compute
    restored = FeaturePipeline.from_dict(data)
    assert list(restored.transform(month).columns) == data["feature_names_"]
    with pytest.raises(InputError) as err:
        restored.transform(month.drop(columns=["arpu_m2"]))
    assert err.value.columns == ["arpu_m2"] and "arpu_m2" in str(err.value)


def test_feature_pipeline_reads_the_state_older_models_stored(month):
    """Versions logged before the full state was stored carry parameters and derived_ only."""
    cfg = DatasetConfig.builtin()
    pipe = FeaturePipeline(cfg.categorical, cfg.numeric).fit(month)
    old = {"categorical": pipe.categorical, "numeric": pipe.numeric, "derive": True, "derived_": pipe.derived_}
    pd.testing.assert_frame_equal(FeaturePipeline.from_dict(old).transform(month), pipe.transform(month))


def test_value_segmenter_round_trip_gives_identical_tiers(month):
    seg = ValueSegmenter(seed=3).fit(month)
    data = _json_round_trip(seg.to_dict())
    other = generate(1000, seed=13)
    expected = seg.transform(other)
    assert set(expected) == {"low", "medium", "high"}
    # the model's own transform (no scikit-learn) and the engine's segmenter read the same dict
    for restored in (ValueTiers.from_dict(data), ValueSegmenter.from_dict(data)):
        assert (restored.transform(other) == expected).all()
        assert restored.to_dict() == data


def test_portable_code_imports_nothing_but_the_model_requirements():
    """The model's code must import where only its requirements are installed: no engine, no sklearn."""
    allowed = {"__future__", "json", "pathlib", "typing", "dataclasses", "collections", "mlflow", "numpy",
               "pandas", "catboost"}
    for path in sorted(PORTABLE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"


def test_the_model_speaks_the_engine_vocabulary():
    from engine import vocabulary
    from engine.model.portable import NO_REASON

    assert NO_REASON == vocabulary.NO_REASON
    tiers = ValueTiers.from_dict({"n_clusters": 4, "seed": 0, "mean_": [0, 0, 0], "scale_": [1, 1, 1],
                                  "centers_": np.eye(4, 3).tolist()}).tier_of_cluster()
    assert set(tiers) <= set(vocabulary.VALUE_TIERS)


def _reference_transform(pipe: FeaturePipeline, df: pd.DataFrame) -> pd.DataFrame:
    """The plain pandas formulation of the transform (what the array-built one must equal)."""
    from engine.model.features import DERIVED, MISSING_CATEGORY

    out = pd.DataFrame(index=df.index)
    for col in pipe.categorical_features_:
        out[col] = df[col].astype("string").fillna(MISSING_CATEGORY).astype(str)
    numeric = df[pipe.numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    for col in pipe.numeric:
        out[col] = numeric[col]
    for feat in DERIVED:
        if feat.name in pipe.derived_:
            out[feat.name] = feat.compute(numeric)
    return out[pipe.feature_names_]


def test_transform_types_awkward_inputs_like_plain_pandas(month):
    """None/NA categories, numbers and flags as categories, nullable and text numbers, one row or many."""
    cfg = DatasetConfig.builtin()
    pipe = FeaturePipeline([*cfg.categorical, "tenure_band"], [*cfg.numeric, "flag"]).fit(
        month.assign(tenure_band=1.5, flag=True))
    df = generate(400, seed=14).assign(tenure_band=np.where(np.arange(400) % 3, 2.0, np.nan),
                                       flag=np.arange(400) % 2 == 0)
    df["plan"] = df["plan"].astype("string")
    df.loc[[1, 7], "plan"] = pd.NA
    df.loc[2, "region"] = None
    df["region"] = df["region"].astype("category")
    df["complaints_3m"] = df["complaints_3m"].astype("Int64")
    df.loc[3, "complaints_3m"] = pd.NA
    df["balance"] = df["balance"].astype(object)
    df.loc[4, "balance"] = "n/a"
    df.loc[5, "balance"] = "12.5"
    df.index = df.index * 3 + 100  # the caller's index is kept
    for frame in (df, df.iloc[[7]], df.iloc[[0]]):
        got = pipe.transform(frame)
        pd.testing.assert_frame_equal(got, _reference_transform(pipe, frame))
    got = pipe.transform(df)
    assert got.loc[103, "plan"] == got.loc[106, "region"] == "__missing__"
    assert got.loc[109, "complaints_3m"] != got.loc[109, "complaints_3m"]  # NaN
    assert got.loc[115, "balance"] == 12.5 and np.isnan(got.loc[112, "balance"])
    assert got["flag"].tolist()[:2] == [1.0, 0.0] and got["tenure_band"].iloc[1] == "2.0"


def test_category_text_of_many_rows_is_the_value_by_value_text_with_one_string_per_value():
    """The factorised path (text columns of many rows) gives what `astype(str)` gave, missing as '__missing__';
    mixed types keep the value-by-value path (1 and 1.0 would hash alike)."""
    from engine.model.portable.features import MISSING_CATEGORY, category_text

    def by_value(values):
        text = values.astype(str).astype(object)
        text[pd.isna(values)] = MISSING_CATEGORY
        return text

    cases = [np.array(["a", None, "b", np.nan, "é", "a ", ""] * 20, dtype=object),
             np.array([None] * 100, dtype=object), np.array(["a", 1, 1.0, True] * 30, dtype=object),
             np.array(["x", None], dtype=object)]
    for values in cases:
        assert category_text(values).tolist() == by_value(values).tolist()
    shared = category_text(np.array(["prepaid", "business"] * 50, dtype=object))
    assert len({id(v) for v in shared}) == 2, "one object per distinct value"


def test_model_frames_are_the_constructors_frames():
    """The model's frames (features, scores, reasons) skip the constructor's per-column checks; the frame is
    the constructor's: dtypes, blocks, index, values; other arrays take the constructor itself."""
    from engine.model.portable.features import frame_from_arrays

    n = 6
    columns = {"plan": np.array(["prepaid", None, "x", "y", "z", "w"], dtype=object), "arpu": np.linspace(0, 1, n),
               "count": np.arange(n), "flag": np.arange(n) % 2 == 0, "tier": np.array(["a"] * n, dtype=object)}
    index = pd.RangeIndex(n) * 3 + 7
    for idx in (index, None):
        got = frame_from_arrays(columns, idx)
        want = pd.DataFrame(columns, index=idx)
        pd.testing.assert_frame_equal(got, want)
        assert got._mgr.nblocks == want._mgr.nblocks
    listed = {"a": [1, 2], "b": np.array([0.5, 1.5])}  # a list: the constructor
    pd.testing.assert_frame_equal(frame_from_arrays(listed), pd.DataFrame(listed))
    pd.testing.assert_frame_equal(frame_from_arrays({}), pd.DataFrame({}, index=pd.RangeIndex(0)))
