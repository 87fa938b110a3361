"""SHAP tables travel with the model: explaining a few rows is a lookup with CatBoost's exact values."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.simulator import generate


@pytest.fixture(scope="module")
def champion(trained):
    from engine.model.registry import load_model

    return load_model(trained.settings(), "champion").model


@pytest.fixture(scope="module")
def features(champion):
    return champion.features(generate(400, seed=31).drop(columns=["churn", "churn_reason"]))


def test_a_trained_model_carries_its_leaf_tables(champion, features):
    assert champion._leaf_shap is not None, "training logs leaf_shap.npz and loading restores it"
    _values, known = champion._leaf_shap.lookup(champion._pool(features))
    assert known.mean() >= 0.99, "training rows, and rows mixing their columns, reach the leaves new rows reach"


def test_a_few_rows_get_catboosts_exact_values_and_the_batch_values(champion, features):
    exact = champion._catboost_shap(features, approximate=False)
    one_by_one = np.vstack([champion.shap_values(features.iloc[[i]]) for i in range(len(features))])
    np.testing.assert_allclose(one_by_one, exact, rtol=0, atol=1e-12)
    in_groups = np.vstack([champion.shap_values(features.iloc[i:i + 7]) for i in range(0, len(features), 7)])
    assert np.array_equal(in_groups, one_by_one), "a row's values do not depend on who shares the call"


def test_a_leaf_no_training_row_reached_is_attributed_when_a_row_first_reaches_it(champion, features):
    from engine.model.portable.leafshap import LeafShap

    cats = champion.pipeline.categorical_features_
    three = LeafShap(champion.booster, cats)
    three(features.iloc[:3])  # tables holding only the leaves three rows reach, as a loaded model holds them
    partial = LeafShap.from_arrays(champion.booster, cats, three.to_arrays())
    _values, known = partial.lookup(champion._pool(features.iloc[:5]))
    assert not known.all(), "the test needs rows outside the partial tables"
    saved = champion._leaf_shap
    try:
        champion._leaf_shap = partial
        got = np.vstack([champion.shap_values(features.iloc[i:i + 5]) for i in range(0, len(features), 5)])
    finally:
        champion._leaf_shap = saved
    np.testing.assert_allclose(got, champion._catboost_shap(features, approximate=False), rtol=0, atol=1e-12)
    _values, known = partial.lookup(champion._pool(features))
    assert known.all(), "the new leaves are in the tables now"
    assert 0 < len(partial._trees) <= partial.n_trees  # a copy per tree that had a new leaf, made when needed


def test_tables_round_trip_through_arrays(champion, features):
    from engine.model.portable.leafshap import LeafShap

    again = LeafShap.from_arrays(champion.booster, champion.pipeline.categorical_features_,
                                 champion._leaf_shap.to_arrays())
    pool = champion._pool(features)
    for got, want in zip(again.lookup(pool), champion._leaf_shap.lookup(pool), strict=True):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="trees"):
        arrays = champion._leaf_shap.to_arrays()
        LeafShap.from_arrays(champion.booster, [], {k: v[:-1] for k, v in arrays.items()})


def test_rows_mixing_the_training_columns_attribute_leaves_the_training_rows_missed(champion, features):
    from catboost import Pool

    from engine.model.portable.leafshap import LeafShap

    cats = champion.pipeline.categorical_features_
    training, new = features.iloc[:40], features.iloc[40:]
    alone, mixed = LeafShap(champion.booster, cats), LeafShap(champion.booster, cats)
    alone.learn(training, mixed_rows=0)
    mixed.learn(training, mixed_rows=20_000)
    pool = Pool(new, cat_features=cats)
    _v, known_alone = alone.lookup(pool)
    values, known_mixed = mixed.lookup(pool)
    assert known_mixed.sum() > known_alone.sum(), "mixed rows reach leaves forty training rows did not"
    assert known_mixed[known_alone].all(), "and lose none of theirs"
    exact = champion._catboost_shap(new, approximate=False)
    np.testing.assert_allclose(values[known_mixed], exact[known_mixed], rtol=0, atol=1e-12)
