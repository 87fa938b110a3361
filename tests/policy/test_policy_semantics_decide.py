"""Policies mean what they say (issue 12), done: `retain decide` and `retain policy simulate` run one decision
function, so on the same month, date and settings their counts per offer, channel and status are equal, with
the sample set and with a changed set (a new rule, a suppression, a channel exclusion, declared attributes,
rule dates, budget and capacity that bind); and each new policy feature works end to end through
`retain decide`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from engine.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "policies"
DATE = "2026-06-01"

ATTRIBUTES = """\
attributes:
  - name: bill_dispute
    type: boolean
    description: The subscriber disputes a bill (finance hold)
  - name: nps
    type: numeric
    description: Last net-promoter answer, 0-10
    min: 0
    max: 10
"""

CHANGED_RULES = """\
rules:
  - id: bill-dispute-hold
    description: Subscribers disputing a bill get nothing until it is settled
    priority: 200
    stage: intervention
    when: {bill_dispute: true}
    then: {no_offer: true, note: "bill dispute open"}

  - id: price-no-sms
    description: Price pressure at high risk - the discount, never by SMS
    priority: 61
    stage: intervention
    when: {risk_grade: high, reason: price}
    then:
      offer: discount_15
      channel: preferred
      exclude_channels: [sms]
      message: "NPS {nps}: 15% off for 6 months."

  - id: june-usage-campaign
    description: June campaign for declining usage
    priority: 65
    stage: intervention
    valid_from: 2026-05-15
    valid_to: 2026-06-30
    when: {risk_grade: [high, medium], reason: usage_decline}
    then: {offer: usage_bundle, channel: preferred}

  - id: next-year-blast
    description: A campaign that starts next year
    priority: 300
    stage: preventive
    valid_from: 2027-01-01
    then: {offer: care_message, channel: app_popup}
"""


@pytest.fixture(scope="module")
def month(month_files, tmp_path_factory) -> Path:
    """The small simulated month with two columns of the operator's own (yes/no words, numbers)."""
    frame = pd.read_parquet(month_files["same"])
    rng = np.random.default_rng(7)
    frame["bill_dispute"] = np.where(rng.random(len(frame)) < 0.06, "yes", "no")
    frame["nps"] = rng.integers(0, 11, len(frame))
    path = tmp_path_factory.mktemp("month") / "month.parquet"
    frame.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def changed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("changed") / "policies"
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns("tests"))
    (folder / "attributes.yaml").write_text(ATTRIBUTES)
    (folder / "rules" / "campaigns.yaml").write_text(CHANGED_RULES)
    return folder


@pytest.fixture(scope="module")
def tight(trained, tmp_path_factory) -> Path:
    """The trained store's settings with a budget and an outbound capacity that bind on the small month."""
    cfg = yaml.safe_load(trained.config.read_text()) or {}
    cfg["arbitration"] = {"budget": 6000.0}
    cfg["channels"] = {"outbound_call": {"cost": 4.0, "daily_capacity": 40}}
    path = tmp_path_factory.mktemp("cfg") / "tight.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def decide(runner, trained, month: Path, out: Path, policies: Path, *, config: Path | None = None,
           date: str = DATE) -> dict:
    res = runner.invoke(app, ["decide", "--input", str(month), "--out", str(out), "--policies", str(policies),
                              "--date", date, "--no-log", "--no-record", "--no-learned", "--config",
                              str(config or trained.config), "--tracking-uri", trained.uri])
    assert res.exit_code == 0, res.output
    return json.loads((out / "summary.json").read_text())


def simulate(runner, trained, decisions: Path, policies: Path, *, config: Path | None = None) -> dict:
    res = runner.invoke(app, ["policy", "simulate", "--input", str(decisions), "--policies", str(policies),
                              "--date", DATE, "--json", "--no-learned", "--config", str(config or trained.config),
                              "--tracking-uri", trained.uri])
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def assert_same_counts(summary: dict, sim: dict) -> None:
    assert sim["offers"] == summary["offers"]
    assert sim["channels"] == summary["offers_per_channel"]
    assert sim["status"] == summary["status"]
    assert sim["cost"] == summary["budget_used"]
    assert sim["expected_saves"] == summary["expected_saves"]


def test_decide_and_simulate_count_alike_with_the_sample_and_a_changed_set(trained, runner, month, changed, tight,
                                                                           tmp_path):
    # the sample set
    sample_summary = decide(runner, trained, month, tmp_path / "sample", SAMPLE)
    sample_decisions = tmp_path / "sample" / "decisions.parquet"
    assert_same_counts(sample_summary, simulate(runner, trained, sample_decisions, SAMPLE))
    assert "not_worth_it" not in sample_summary["status"]  # arbitration first: the winner is sent
    # what the guide says: the highest-priority matching rule wins; only contact rules (here: opt-outs, whose
    # winner was on an outbound channel) make decide fall back to a later candidate
    t = pd.read_parquet(sample_decisions)
    chosen = t[t["status"].isin(["offer", "control"]) & ~t["explored"]]  # explored: a random eligible action
    fell_back = chosen[chosen["rule_id"] != chosen["policy_rule"]]
    assert len(chosen) and fell_back["opt_out"].all()

    # the changed set, with a budget and a capacity that bind
    changed_summary = decide(runner, trained, month, tmp_path / "changed", changed, config=tight)
    assert {"suppressed", "over_budget"} <= set(changed_summary["status"]) or \
        {"suppressed", "over_capacity"} <= set(changed_summary["status"])
    # simulate on its own decisions, and - the marketer's way - on last night's decisions of the sample set
    assert_same_counts(changed_summary, simulate(runner, trained, tmp_path / "changed" / "decisions.parquet",
                                                 changed, config=tight))
    assert_same_counts(changed_summary, simulate(runner, trained, sample_decisions, changed, config=tight))


def test_new_policy_features_work_end_to_end_through_decide(trained, runner, month, changed, tmp_path):
    decide(runner, trained, month, tmp_path / "out", changed)
    t = pd.read_parquet(tmp_path / "out" / "decisions.parquet")
    source = pd.read_parquet(month)
    orders = pd.concat([pd.read_csv(p) for p in (tmp_path / "out" / "work_orders").glob("*.csv")])

    # suppression (on a declared attribute given as yes/no words): status, rule, note; no order, no control
    disputed = (source["bill_dispute"] == "yes").to_numpy()
    assert disputed.any()
    assert (t.loc[disputed, "status"] == "suppressed").all()
    assert (t.loc[disputed, "rule_id"] == "bill-dispute-hold").all()
    assert (t.loc[disputed, "note"] == "bill dispute open").all()
    assert t.loc[disputed, "offer_id"].isna().all() and not t.loc[disputed, "control"].any()
    assert not set(t.loc[disputed, "subscriber_id"]) & set(orders["subscriber_id"])
    assert (t.loc[~disputed, "status"] != "suppressed").all()

    # channel exclusion: the new rule never sends by SMS, even to those who prefer it
    price = t[(t["rule_id"] == "price-no-sms") & (t["status"] == "offer")]
    assert len(price) and "sms" not in set(price["channel"])
    assert (source.set_index("subscriber_id").loc[price["subscriber_id"], "preferred_channel"] == "sms").any()
    # a declared numeric attribute in a message prints like a built-in
    nps = source.set_index("subscriber_id").loc[price["subscriber_id"], "nps"].to_numpy()
    assert [m.split(":")[0] for m in price["message"]] == [f"NPS {n}" for n in nps]

    # rule dates: the June campaign fires in June; next year's campaign does not fire now...
    assert (t["rule_id"] == "june-usage-campaign").any()
    assert not t["matched_rules"].str.contains("next-year-blast").any()
    # ... and does fire next year (it outranks everything but the suppression)
    later = decide(runner, trained, month, tmp_path / "later", changed, date="2027-01-15")
    t2 = pd.read_parquet(tmp_path / "later" / "decisions.parquet")
    assert "june-usage-campaign" not in set(t2["rule_id"].dropna())
    sent = t2[(t2["status"] == "offer") & ~t2["explored"]]  # explored subscribers got a random eligible action
    assert (sent["rule_id"] == "next-year-blast").all() and set(sent["offer_id"]) == {"care_message"}
    assert later["offers"]["care_message"] >= len(sent)

    # an input without a declared attribute is refused in one line
    bare = tmp_path / "bare.parquet"
    source.drop(columns=["bill_dispute"]).to_parquet(bare)
    res = runner.invoke(app, ["decide", "--input", str(bare), "--out", str(tmp_path / "bare"), "--policies",
                              str(changed), "--date", DATE, "--no-log", "--no-record", "--no-learned",
                              *trained.args()])
    assert res.exit_code == 2
    assert "error: input lacks declared attribute 'bill_dispute' (declared at " in res.output
    assert "Traceback" not in res.output
    # a bad value in a declared column is one line naming the column
    bad = tmp_path / "bad.parquet"
    source.assign(nps=source["nps"].where(source.index != 3, 12)).to_parquet(bad)
    res = runner.invoke(app, ["decide", "--input", str(bad), "--out", str(tmp_path / "bad"), "--policies",
                              str(changed), "--date", DATE, "--no-log", "--no-record", "--no-learned",
                              *trained.args()])
    assert res.exit_code == 2 and "column 'nps'" in res.output and "above its maximum 10" in res.output
