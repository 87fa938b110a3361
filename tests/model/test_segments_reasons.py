"""Segments and reasons a retention team relies on, checked against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.config import Lifecycle, RiskGrades
from engine.data.simulator import generate
from engine.model.segments import lifecycle_stage, need_group, risk_grade
from engine.model.value_tiers import ValueSegmenter


def test_value_tiers_are_ordered_by_value_and_stable():
    a, b = generate(20000, seed=1), generate(20000, seed=2)
    seg_a, seg_b = ValueSegmenter().fit(a), ValueSegmenter().fit(b)
    arpu = a[["arpu_m0", "arpu_m1", "arpu_m2"]].mean(axis=1)
    tiers = seg_a.transform(a)
    means = [arpu[tiers == t].mean() for t in ("low", "medium", "high")]
    assert means[0] < means[1] < means[2]
    assert 0.1 < (tiers == "high").mean() < 0.45
    # fitted on another month, the tiers still agree for almost everyone; reloaded, exactly
    assert (seg_b.transform(a) == tiers).mean() > 0.95
    assert (ValueSegmenter.from_dict(seg_a.to_dict()).transform(a) == tiers).all()


def test_risk_grade_by_threshold_and_by_capacity():
    p = np.array([0.9, 0.1, 0.6, 0.3, 0.26, 0.2])
    assert list(risk_grade(p, RiskGrades(high=0.5, medium=0.25))) == ["high", "low", "high", "medium", "medium",
                                                                      "low"]
    by_capacity = risk_grade(p, RiskGrades(capacity_high=1, capacity_medium=2))
    assert list(by_capacity) == ["high", "low", "medium", "medium", "low", "low"]


def test_lifecycle_and_need_groups():
    stage = lifecycle_stage(pd.Series([2, 30, 30, 12]), pd.Series([0.0, -0.5, 0.1, 0.0]),
                            pd.Series([0.0, 0.0, 0.0, 0.0]), Lifecycle())
    assert list(stage) == ["new", "decline", "mature", "growth"]
    groups = need_group(pd.Series(["business", "family_share", "prepaid_basic", "prepaid_basic", "postpaid_standard"]),
                        pd.Series(["35-49", "65+", "65+", "18-24", "35-49"]))
    assert list(groups) == ["business", "family", "elderly", "young", "general"]


def test_reason_matches_truth_for_high_risk_churners(trained, month_files):
    """Issue target: the top reason matches the generating reason for >= 80% of high-risk churners."""
    from engine.decision.decide import score
    from engine.model.registry import load_model

    settings = trained.settings()
    loaded = load_model(settings, "champion")
    month = pd.read_parquet(month_files["same"])
    scored = score(month.drop(columns=["churn", "churn_reason"]), loaded, settings)
    high_churners = (scored["risk_grade"] == "high").to_numpy() & (month["churn"] == 1).to_numpy()
    assert high_churners.sum() > 100
    match = (scored["reason"].to_numpy()[high_churners] == month["churn_reason"].to_numpy()[high_churners]).mean()
    assert match >= 0.8, match
    # low-risk subscribers are not explained (attributions cost time), actionable ones always are
    assert (scored.loc[scored["risk_grade"] == "low", "reason"] == "none").all()
    assert (scored.loc[scored["risk_grade"] == "high", "reason_signal"] != "").mean() > 0.95


def test_segment_labels_are_shared_strings():
    """Equal labels are one object, not a string per row (~55 bytes each, ~0.2 GiB at a million rows)."""
    from engine.config import ValueTiers
    from engine.model.segments import value_tier

    n = 1000
    rng = np.random.default_rng(0)
    columns = [value_tier(rng.uniform(0, 100, n), ValueTiers()),
               lifecycle_stage(rng.integers(0, 60, n), rng.normal(size=n), rng.normal(size=n), Lifecycle()),
               need_group(rng.choice(["business", "prepaid_basic"], n), rng.choice(["65+", "25-34"], n))]
    for labels in columns:
        assert labels.dtype == object and len({id(v) for v in labels}) == len(set(labels.tolist()))
