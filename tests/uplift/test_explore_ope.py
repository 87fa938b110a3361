"""Exploration propensities; IPS / SNIPS / DR on a simulated bandit with a known truth; refusal."""

from __future__ import annotations

import numpy as np
import pytest

from engine.uplift.explore import NO_CONTACT, action_probabilities, explore, stable_uniforms, with_control
from engine.uplift.ope import OverlapError, estimate


def _cands(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 4, n)  # eligible candidates per subscriber (0..3)
    row = np.repeat(np.arange(n), k)
    starts = np.cumsum(k) - k
    greedy = np.where((k > 0) & (rng.random(n) < 0.7), starts, NO_CONTACT)  # first candidate, or nothing
    keys = np.array([f"S{i:07d}" for i in range(n)], dtype=object)
    return row, greedy, keys, k


def test_exploration_propensities_are_right():
    n, eps = 40_000, 0.2
    row, greedy, keys, k = _cands(n)
    e = explore(row, n, greedy, keys, epsilon=eps, seed=7)
    m = k + 1
    assert np.array_equal(e.n_actions, m)
    assert e.explored.mean() == pytest.approx(eps, abs=0.01)
    kept = ~e.explored
    assert np.array_equal(e.action[kept], greedy[kept])
    assert np.allclose(e.propensity[kept], 1 - eps + eps / m[kept])
    assert np.allclose(e.propensity[e.action != greedy], eps / m[e.action != greedy])
    # explored actions are uniform among the m eligible ones (no contact included), and in range
    ex = e.explored & (m == 4)
    chosen = np.where(e.action[ex] == NO_CONTACT, 0, e.action[ex] - (np.cumsum(k) - k)[ex] + 1)
    assert set(np.unique(chosen)) == {0, 1, 2, 3}
    assert np.allclose(np.bincount(chosen) / ex.sum(), 0.25, atol=0.03)
    assert np.all(row[e.action[e.action >= 0]] == np.flatnonzero(e.action >= 0))
    # the full logging policy sums to one per subscriber and gives each chosen action its propensity
    p_cand, p_none = action_probabilities(row, n, greedy, eps)
    assert np.allclose(np.bincount(row, weights=p_cand, minlength=n) + p_none, 1.0)
    took = e.action >= 0
    assert np.allclose(p_cand[e.action[took]], e.propensity[took])
    assert np.allclose(p_none[~took], e.propensity[~took])


def test_exploration_is_stable_and_seeded():
    n = 5000
    row, greedy, keys, _ = _cands(n)
    a = explore(row, n, greedy, keys, epsilon=0.3, seed="run-1")
    assert np.array_equal(a.action, explore(row, n, greedy, keys, epsilon=0.3, seed="run-1").action)
    assert not np.array_equal(a.explored, explore(row, n, greedy, keys, epsilon=0.3, seed="run-2").explored)
    u = stable_uniforms(keys, "run-1")
    perm = np.random.default_rng(3).permutation(n)
    assert np.array_equal(stable_uniforms(keys[perm], "run-1"), u[:, perm])  # any batch or order
    assert np.array_equal(stable_uniforms(keys[:10], "run-1"), u[:, :10])


def test_control_group_propensity():
    n = 1000
    row, greedy, keys, _ = _cands(n)
    e = explore(row, n, greedy, keys, epsilon=0.1, seed=1)
    control = np.random.default_rng(0).random(n) < 0.1
    action, prop = with_control(e, control, 0.1)
    held = control & (e.action != NO_CONTACT)
    assert np.all(action[held] == NO_CONTACT)
    assert np.allclose(prop[held], e.p_no_contact[held] + 0.1 * (1 - e.p_no_contact[held]))
    sent = action != NO_CONTACT
    assert np.allclose(prop[sent], 0.9 * e.propensity[sent])


ACTIONS = np.array(["none", "a|sms", "b|sms"], dtype=object)


def bandit(n: int, seed: int, eps: float = 0.3):
    """Logging: greedy 'a' for x > 0.5 else nothing, uniform exploration among 3 actions with share eps."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    greedy = np.where(x > 0.5, 1, 0)
    explored = rng.random(n) < eps
    act = np.where(explored, rng.integers(0, 3, n), greedy)
    prop = (1 - eps) * (act == greedy) + eps / 3
    p_stay = np.column_stack([0.7 + 0 * x, 0.7 + 0.2 * x, 0.75 + 0 * x])
    cost = np.array([0.0, 1.0, 2.0])
    stayed = (rng.random(n) < p_stay[np.arange(n), act]).astype(float)
    return x, act, prop, p_stay, cost, stayed


def _run(seed: int, dr_model: bool = True, rounds: int = 200):
    n = 6000
    x, act, prop, p_stay, cost, stayed = bandit(n, seed)
    target = np.where(x > 0.25, 1, 2)  # 'a' above 0.25, 'b' below: differs from logging on most rows
    truth_saves = float((p_stay[np.arange(n), target] - p_stay[:, 0]).sum())
    truth_cost = float(cost[target].sum())
    q = {"stayed": p_stay + np.random.default_rng(seed + 99).normal(0, 0.05, p_stay.shape) if dr_model else 0 * p_stay}
    idx = np.arange(n)
    res = estimate(ACTIONS[act], prop, ACTIONS[target], {"stayed": stayed, "cost": cost[act]},
                   q_logged={"stayed": q["stayed"][idx, act], "cost": cost[act]},
                   q_target={"stayed": q["stayed"][idx, target], "cost": cost[target]},
                   q_baseline={"stayed": q["stayed"][:, 0]}, rounds=rounds, seed=seed, min_ess=50)
    return res, truth_saves, truth_cost


def test_ips_snips_dr_are_unbiased_and_cover_the_truth():
    errors = {e: [] for e in ("ips", "snips", "dr")}
    covered = 0
    for seed in range(30):
        res, truth_saves, truth_cost = _run(seed, rounds=100)
        for e in errors:
            errors[e].append(res.estimates["saves"][e].value - truth_saves)
        dr = res.estimates["saves"]["dr"]
        covered += dr.ci_low <= truth_saves <= dr.ci_high
        if seed < 5:
            assert dr.ci_low <= truth_saves <= dr.ci_high
            c = res.estimates["cost"]["snips"]
            assert c.ci_low <= truth_cost <= c.ci_high
    assert covered >= 25  # a 95% interval: ~28.5 of 30 expected
    for e, errs in errors.items():  # mean error within 3 standard errors of 0 (truth ~ 640 saves)
        errs = np.array(errs)
        assert abs(errs.mean()) < 3 * errs.std(ddof=1) / np.sqrt(len(errs)) + 5, (e, errs.mean())
    res, truth_saves, _ = _run(0)
    assert res.ess > 50 and res.matched > 0
    # DR with a good reward model has a much narrower interval than IPS
    ips, dr = res.estimates["saves"]["ips"], res.estimates["saves"]["dr"]
    assert dr.ci_high - dr.ci_low < 0.6 * (ips.ci_high - ips.ci_low)


def test_refuses_when_overlap_is_poor():
    n = 2000
    x, act, prop, _, cost, stayed = bandit(n, 0, eps=0.0)  # no exploration: 'b' never logged
    with pytest.raises(OverlapError, match="never took"):
        estimate(ACTIONS[act], prop, np.full(n, "b|sms", dtype=object), {"stayed": stayed})
    x, act, prop, _, cost, stayed = bandit(n, 0, eps=0.01)  # a little: too few agreeing rows
    with pytest.raises(OverlapError, match="effective sample size"):
        estimate(ACTIONS[act], prop, np.full(n, "b|sms", dtype=object), {"stayed": stayed}, min_ess=100)
    with pytest.raises(OverlapError, match="could not have"):
        estimate(ACTIONS[act], prop, np.full(n, "a|sms", dtype=object), {"stayed": stayed},
                 support=x > 0.5, min_ess=1)


def test_explored_mask_is_the_draw_explore_uses():
    from engine.uplift.explore import explored_mask

    n = 3000
    row, greedy, keys, _ = _cands(n)
    e = explore(row, n, greedy, keys, epsilon=0.1, seed="r")
    assert np.array_equal(explored_mask(keys, 0.1, "r"), e.explored)
