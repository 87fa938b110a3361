"""Arbitration never exceeds budget or capacity; contact rules are never violated; control is stable."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from engine.config import Arbitration, Channel, ContactRules, ControlGroup
from engine.decision.arbitration import CHOSEN, OVER_BUDGET, OVER_CAPACITY, allocate, expected_net_value
from engine.decision.contact import blocked_reasons, control_mask, read_history


def candidates(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), 2)
    return pd.DataFrame({
        "row": rows,
        "churn_probability": np.repeat(rng.uniform(0.2, 0.9, n), 2),
        "reason": np.repeat(rng.choice(["price", "network"], n), 2),
        "offer_id": np.tile(["discount", "care_call"], n),
        "channel": np.tile(["sms", "outbound_call"], n),
        "offer_cost": np.tile([5.0, 2.0], n),
        "value_kept": np.tile([30.0, 25.0], n),
        "priority": np.tile([10, 20], n),
    })


CHANNELS = {"sms": Channel(cost=0.05, daily_capacity=None), "outbound_call": Channel(cost=4.0, daily_capacity=50)}


@pytest.mark.parametrize("budget", [None, 100.0, 1000.0])
def test_budget_and_capacity_are_never_exceeded(budget):
    cands = expected_net_value(candidates(500), Arbitration(), CHANNELS)
    result = allocate(cands, budget=budget, capacity={k: v.daily_capacity for k, v in CHANNELS.items()})
    chosen = result[result["arbitration"] == CHOSEN]
    assert chosen["row"].is_unique, "one offer per subscriber"
    assert (chosen["channel"] == "outbound_call").sum() <= 50
    if budget is not None:
        assert chosen["total_cost"].sum() <= budget + 1e-9
        assert (result["arbitration"] == OVER_BUDGET).any()
    assert set(result["row"]) == set(range(500))


def test_full_channel_falls_back_to_next_best_offer():
    generous = Arbitration(acceptance={"care_call": {"default": 0.9}, "discount": {"default": 0.5}})
    cands = expected_net_value(candidates(200), generous, CHANNELS)
    assert (cands["net_value"] > 0).all()
    result = allocate(cands, budget=None, capacity={"outbound_call": 10, "sms": None})
    chosen = result[result["arbitration"] == CHOSEN]
    assert (chosen["channel"] == "outbound_call").sum() == 10
    assert len(chosen) == 200, "subscribers who lose the call slot still get their SMS offer"


def test_zero_capacity_blocks_a_channel():
    cands = expected_net_value(candidates(20), Arbitration(acceptance={"care_call": {"default": 0.9}}), CHANNELS)
    only_calls = cands[cands["channel"] == "outbound_call"]
    result = allocate(only_calls, budget=None, capacity={"outbound_call": 0})
    assert (result["arbitration"] == OVER_CAPACITY).all()


def test_acceptance_rates_prefer_specific_over_default():
    cfg = Arbitration(acceptance_default=0.1, acceptance={"discount": {"price": 0.5, "default": 0.2}})
    cands = expected_net_value(candidates(50), cfg, CHANNELS)
    disc = cands[cands["offer_id"] == "discount"]
    assert set(disc.loc[disc["reason"] == "price", "p_accept"]) == {0.5}
    assert set(disc.loc[disc["reason"] == "network", "p_accept"]) == {0.2}
    assert set(cands.loc[cands["offer_id"] == "care_call", "p_accept"]) == {0.1}


def test_bad_arbitration_settings_are_refused():
    with pytest.raises(ValueError):
        Arbitration(acceptance={"discount": {"price": 1.5}})
    with pytest.raises(ValueError):
        Arbitration(budget=-1)
    with pytest.raises(ValueError):
        Channel(cost=-1)
    with pytest.raises(ValueError):
        Channel(cost=1, daily_capacity=-1)


def test_control_group_is_stable_and_sized():
    ids = pd.Series([f"S{i:07d}" for i in range(20000)])
    a = control_mask(ids, ControlGroup(share=0.1, salt="x"))
    shuffled = ids.sample(frac=1, random_state=1)
    assert not (shuffled.index == ids.index).all()
    b = control_mask(shuffled, ControlGroup(share=0.1, salt="x"))  # decided in another order...
    assert (pd.Series(b, index=shuffled.index).reindex(ids.index).to_numpy() == a).all()  # ...same subscribers
    assert 0.09 < a.mean() < 0.11
    assert (control_mask(ids.head(100), ControlGroup(share=0.1, salt="x")) == a[:100]).all()
    assert not (a == control_mask(ids, ControlGroup(share=0.1, salt="y"))).all()


def test_contact_rules(tmp_path):
    today = dt.date(2026, 11, 23)
    hist = pd.DataFrame({
        "subscriber_id": ["A", "A", "B", "C", "Z"],
        "contacted_on": ["2026-11-20", "2026-11-10", "2026-11-01", "2026-09-01", "2026-11-22"],
        "channel": ["sms", "outbound_call", "sms", "sms", "sms"],
        "offer_id": ["x", "y", "z", "z", "z"],
        "outcome": ["pending", "no_answer", "declined", "declined", "accepted"],
    })
    path = tmp_path / "history.csv"
    hist.to_csv(path, index=False)
    history = read_history(path)
    ids = pd.Series(["A", "B", "C", "D"])
    why = blocked_reasons(ids, pd.Series([False, False, False, True]), history, today, ContactRules())
    assert why.iloc[0].startswith("contact limit")
    assert why.iloc[1].startswith("cool-down")
    assert why.iloc[2] == "", "a decline 83 days ago is past the 30-day cool-down"
    assert why.iloc[3] == "opted out"


def test_daily_contact_limit_counts_every_channel_and_comes_first():
    today = dt.date(2026, 11, 23)
    history = pd.DataFrame({
        "subscriber_id": ["A", "B", "B", "C", "D", "E"],
        "contacted_on": [today, today, dt.date(2026, 11, 20), dt.date(2026, 11, 22), today, today],
        "channel": ["app_popup", "sms", "sms", "sms", "sms", "front_desk"],
        "offer_id": ["x"] * 6,
        "outcome": ["pending", "pending", "declined", "pending", "pending", "pending"],
    })
    ids = pd.Series(["A", "B", "C", "D", "E", "F"])
    opt_out = pd.Series([False, False, False, False, True, False])
    daily = blocked_reasons(ids, opt_out, history, today, ContactRules(max_contacts_per_day=1))
    assert list(daily) == ["already contacted today", "already contacted today", "", "already contacted today",
                           "opted out", ""]
    twice = blocked_reasons(ids, opt_out, history, today, ContactRules(max_contacts_per_day=2))
    assert twice.iloc[0] == "" and twice.iloc[1].startswith("contact limit (2 in 30 days)")
    # without the rule (the default) the same history blocks as it always did
    assert list(blocked_reasons(ids, opt_out, history, today, ContactRules())) == [
        "", "contact limit (2 in 30 days)", "", "", "opted out", ""]
    # dates as text (a history file) read the same as date objects
    as_text = history.assign(contacted_on=history["contacted_on"].astype(str))
    assert list(blocked_reasons(ids, opt_out, as_text, today, ContactRules(max_contacts_per_day=1))) == list(daily)


def test_bad_contact_history_is_one_clear_error(tmp_path):
    from engine.errors import DataError

    path = tmp_path / "h.csv"
    pd.DataFrame({"subscriber_id": ["A"], "contacted_on": ["yesterday"], "channel": ["sms"], "offer_id": ["x"],
                  "outcome": ["pending"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="contacted_on"):
        read_history(path)
    pd.DataFrame({"subscriber_id": ["A"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing column"):
        read_history(path)
    assert len(read_history(tmp_path / "none.csv")) == 0


def random_candidates(n: int, seed: int) -> pd.DataFrame:
    """1-4 candidates per subscriber over three channels, some not worth sending."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 5, n)
    rows = np.repeat(np.arange(n), k)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(k) - k, k)
    cost = rng.choice([0.5, 2.0, 5.0, 20.0], len(rows))
    return pd.DataFrame({
        "row": rows, "subscriber_id": [f"S{r:05d}" for r in rows], "rank": rank,
        "channel": rng.choice(["sms", "outbound_call", "app_popup"], len(rows)),
        "priority": rng.integers(1, 100, len(rows)), "total_cost": cost,
        "net_value": rng.normal(5.0, 10.0, len(rows)),
    })


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("prefer", ["best_value", "first"])
def test_allocation_guarantees_hold_on_random_candidates(seed, prefer):
    cands = random_candidates(3000, seed)
    rng = np.random.default_rng(seed)
    budget = float(rng.uniform(500, 5000))
    capacity = {"sms": int(rng.integers(0, 800)), "outbound_call": int(rng.integers(0, 300)), "app_popup": None}
    result = allocate(cands, budget=budget, capacity=capacity, prefer=prefer)
    chosen = result[result["arbitration"] == CHOSEN]
    assert chosen["row"].is_unique and set(result["row"]) == set(cands["row"])
    assert chosen["total_cost"].sum() <= budget + 1e-9
    for ch, cap in capacity.items():
        if cap is not None:
            assert (chosen["channel"] == ch).sum() <= cap
    status = result.set_index("row")["arbitration"]
    if prefer == "best_value":
        assert (chosen["net_value"] > 0).all()
        worth = set(cands.loc[cands["net_value"] > 0, "row"])
        assert set(status[~status.index.isin(list(worth))]) <= {"not_worth_it"}
    else:  # first: every candidate takes part, whatever its value; nobody is not_worth_it
        worth = set(cands["row"])
    assert set(status[status.index.isin(list(worth))]) <= {CHOSEN, OVER_BUDGET, OVER_CAPACITY}
    assert (status == OVER_BUDGET).any() or (status == OVER_CAPACITY).any(), "constraints bind in this draw"


def test_without_constraints_everyone_gets_their_best_candidate():
    cands = random_candidates(2000, 9)
    worth = cands[cands["net_value"] > 0]
    by_value = worth.sort_values(["row", "net_value", "priority"], ascending=[True, False, False])
    by_value = by_value.groupby("row").head(1)
    by_rank = cands.sort_values(["row", "rank"]).groupby("row").head(1)  # first: the winner whatever its value
    for prefer, expected in (("best_value", by_value), ("first", by_rank)):
        result = allocate(cands, budget=None, capacity={}, prefer=prefer)
        chosen = result[result["arbitration"] == CHOSEN].set_index("row")
        assert chosen.index.tolist() == sorted(expected["row"])
        assert (chosen["rank"] == expected.set_index("row")["rank"].reindex(chosen.index)).all(), prefer


def test_first_mode_sends_the_winner_whatever_its_value_and_falls_back_only_when_blocked():
    # S1's winner (rank 0) has a negative value: still sent under `first`, not_worth_it under best_value.
    # S2's winner is on a full channel: its fallback (rank 1) is sent.
    cands = pd.DataFrame({"row": [0, 0, 1, 1], "subscriber_id": ["S1", "S1", "S2", "S2"], "rank": [0, 1, 0, 1],
                          "channel": ["sms", "app_popup", "outbound_call", "sms"], "priority": [9, 5, 9, 5],
                          "total_cost": [1.0, 1.0, 5.0, 1.0], "net_value": [-2.0, 3.0, 10.0, -1.0]})
    first = allocate(cands, budget=None, capacity={"outbound_call": 0}, prefer="first").set_index("row")
    assert first.loc[0, "arbitration"] == CHOSEN and first.loc[0, "rank"] == 0
    assert first.loc[1, "arbitration"] == CHOSEN and first.loc[1, "rank"] == 1
    best = allocate(cands, budget=None, capacity={"outbound_call": 0}, prefer="best_value").set_index("row")
    assert best.loc[0, "rank"] == 1 and best.loc[1, "arbitration"] == OVER_CAPACITY


def test_density_ties_go_to_the_lower_subscriber_id_whatever_the_row_order():
    cands = pd.DataFrame({"row": [0, 1, 2], "subscriber_id": ["S3", "S1", "S2"], "rank": [0, 0, 0],
                          "channel": ["outbound_call"] * 3, "priority": [1, 1, 1], "total_cost": [4.0] * 3,
                          "net_value": [10.0] * 3})
    result = allocate(cands, budget=None, capacity={"outbound_call": 1})
    assert result.loc[result["arbitration"] == CHOSEN, "subscriber_id"].tolist() == ["S1"]
    assert result.set_index("row").loc[[0, 2], "arbitration"].eq(OVER_CAPACITY).all()  # S3 and S2


def test_budget_refusal_falls_back_to_a_cheaper_candidate():
    # A is the densest and takes most of the budget; B's best no longer fits, its cheaper fallback does
    cands = pd.DataFrame({"row": [0, 1, 1], "subscriber_id": ["A", "B", "B"], "rank": [0, 0, 1],
                          "channel": ["sms", "outbound_call", "sms"], "priority": [1, 2, 1],
                          "total_cost": [60.0, 50.0, 30.0], "net_value": [600.0, 100.0, 20.0]})
    result = allocate(cands, budget=100.0, capacity={})
    chosen = result[result["arbitration"] == CHOSEN].set_index("subscriber_id")
    assert chosen.loc["A", "total_cost"] == 60.0 and chosen.loc["B", "total_cost"] == 30.0
