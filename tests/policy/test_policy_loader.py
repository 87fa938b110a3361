"""Loading policy sets: the sample set, composition, content hash, JSON Schema, and every bad input with
file, line and rule in the message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.errors import PolicyError
from engine.policy import load_policy_set
from engine.policy.model import SCHEMA_PATH, json_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "policies"

OFFERS = """\
offers:
  - id: vip_package
    description: VIP package
    cost: 100
    value_kept: 150
    channels: [vip_manager]
  - id: care
    description: Care message
    cost: 0.1
    value_kept: 1
    channels: [sms, app_popup]
"""

RULE = """\
rules:
  - id: vip-high-risk
    description: VIP at high risk
    priority: 50
    stage: intervention
    when:
      risk_grade: high
    then:
      offer: vip_package
"""


def write_set(tmp_path: Path, rules: str, offers: str = OFFERS) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "offers.yaml").write_text(offers)
    (folder / "rules.yaml").write_text(rules)
    return folder


def problems_of(folder: Path) -> tuple[str, list[str]]:
    with pytest.raises(PolicyError) as info:
        load_policy_set(folder)
    return str(info.value), info.value.problems


def test_sample_policy_set_loads_in_evaluation_order():
    ps = load_policy_set(SAMPLE)
    assert len(ps.rules) >= 15 and len(ps.offers) >= 15
    priorities = [r.priority for r in ps.rules]
    assert priorities == sorted(priorities, reverse=True)
    assert [r.position for r in ps.rules] == list(range(len(ps.rules)))
    assert {"risk_grade", "value_tier", "reason", "days_inactive"} <= ps.attributes
    assert all(r.offer in ps.offers for r in ps.rules)
    assert {r.stage for r in ps.rules} == {"preventive", "intervention", "win-back"}
    assert len(ps.content_hash) == 64
    assert not any("tests" in f for f in ps.files), "test cases are not policy files"
    vip = ps.rule("vip-high-risk")
    lines = (SAMPLE / "rules" / "vip.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip() == "- id: vip-high-risk")
    path, _, number = vip.source.rpartition(":")  # the rule's file and its own line
    assert Path(path).resolve() == (SAMPLE / "rules" / "vip.yaml").resolve() and int(number) == line
    assert vip.action.channel == "vip_manager"


def test_one_file_loads_and_several_files_compose(tmp_path):
    folder = write_set(tmp_path, RULE)
    (folder / "more").mkdir()
    (folder / "more" / "care.yaml").write_text(
        "rules:\n  - id: care\n    description: everyone\n    priority: 1\n    stage: preventive\n"
        "    then: {offer: care}\n")
    ps = load_policy_set(folder)
    assert [r.id for r in ps.rules] == ["vip-high-risk", "care"]
    single = tmp_path / "single.yaml"
    single.write_text(OFFERS + RULE.replace("rules:\n", "\nrules:\n"))
    assert [r.id for r in load_policy_set(single).rules] == ["vip-high-risk"]


def test_ties_are_broken_by_file_order_then_position(tmp_path):
    folder = write_set(tmp_path, RULE + """\
  - id: same-b
    description: same priority, later in the file
    priority: 50
    stage: intervention
    then: {offer: care}
""")
    (folder / "a_first.yaml").write_text("rules:\n  - id: same-a\n    description: d\n    priority: 50\n"
                                         "    stage: preventive\n    then: {offer: care}\n")
    ps = load_policy_set(folder)
    assert [r.id for r in ps.rules] == ["same-a", "vip-high-risk", "same-b"]


def test_content_hash_is_stable_and_tracks_content(tmp_path):
    folder = write_set(tmp_path, RULE)
    h1 = load_policy_set(folder).content_hash
    assert load_policy_set(folder).content_hash == h1
    # comments, blank lines and flow vs block style do not change the content
    (folder / "rules.yaml").write_text("# a comment\n\n" + RULE.replace("    when:\n      risk_grade: high\n",
                                                                        "    when: {risk_grade: high}\n"))
    assert load_policy_set(folder).content_hash == h1
    # any change to a rule or an offer does
    (folder / "rules.yaml").write_text(RULE.replace("priority: 50", "priority: 51"))
    h2 = load_policy_set(folder).content_hash
    assert h2 != h1
    (folder / "rules.yaml").write_text(RULE)
    (folder / "offers.yaml").write_text(OFFERS.replace("cost: 100", "cost: 90"))
    assert load_policy_set(folder).content_hash not in (h1, h2)
    # moving the same content to another folder keeps the hash
    other = tmp_path / "copy"
    shutil.copytree(folder, other)
    assert load_policy_set(other).content_hash == load_policy_set(folder).content_hash


def test_sample_hash_is_the_same_in_a_fresh_process():
    import subprocess
    import sys

    code = "from engine.policy import load_policy_set; print(load_policy_set('policies').content_hash)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == load_policy_set(SAMPLE).content_hash


BAD = {
    # name: (rules.yaml text, [fragments the first problem must contain])
    "malformed YAML": ("rules:\n  - id: a\n    when: {risk_grade: [high\n",
                       ["rules.yaml:4:", "malformed YAML", "started at line 3"]),
    "unknown field": (RULE.replace("    when:", "    wen:"),
                      ["rules.yaml:6:", "rule 'vip-high-risk'", "unknown field 'wen'", "did you mean 'when'"]),
    "unknown offer": (RULE.replace("offer: vip_package", "offer: vip_pakage"),
                      ["rules.yaml:9:", "rule 'vip-high-risk'", "unknown offer 'vip_pakage'",
                       "did you mean 'vip_package'", "known offers: care, vip_package"]),
    "wrong type of field": (RULE.replace("priority: 50", "priority: high"),
                            ["rules.yaml:4:", "rule 'vip-high-risk'", "field 'priority'", "integer"]),
    "wrong type of value": (RULE.replace("risk_grade: high", "tenure_months: twelve"),
                            ["rules.yaml:7:", "rule 'vip-high-risk'", "tenure_months is numeric", "'twelve'"]),
    "unknown categorical value": (RULE.replace("risk_grade: high", "risk_grade: hihg"),
                                  ["rules.yaml:7:", "rule 'vip-high-risk'", "unknown value 'hihg'",
                                   "valid values: high, medium, low"]),
    "impossible range": (RULE.replace("risk_grade: high", "tenure_months: {min: 24, max: 12}"),
                         ["rules.yaml:7:", "rule 'vip-high-risk'", "impossible range"]),
    "duplicate rule id": (RULE + RULE.replace("rules:\n", "").replace("priority: 50", "priority: 10"),
                          ["rules.yaml:10:", "rule 'vip-high-risk'", "duplicate rule id",
                           "first defined at", "rules.yaml:2"]),
    "unknown attribute": (RULE.replace("risk_grade: high", "risk_grad: high"),
                          ["rules.yaml:7:", "rule 'vip-high-risk'", "unknown attribute 'risk_grad'",
                           "did you mean 'risk_grade'"]),
    "unknown operator": (RULE.replace("risk_grade: high", "tenure_months: {gtt: 3}"),
                         ["rules.yaml:7:", "unknown operator 'gtt'", "did you mean 'gt'"]),
    "ordering a category": (RULE.replace("risk_grade: high", "risk_grade: {gt: low}"),
                            ["rules.yaml:7:", "'gt' compares numbers"]),
    "channel not allowed": (RULE.replace("offer: vip_package", "offer: vip_package\n      channel: sms"),
                            ["rules.yaml:10:", "rule 'vip-high-risk'", "channel 'sms' is not allowed",
                             "vip_manager"]),
    "unknown channel": (RULE.replace("offer: vip_package", "offer: vip_package\n      channel: fax"),
                        ["rules.yaml:10:", "field 'then.channel'", "'fax'"]),
    "unknown stage": (RULE.replace("stage: intervention", "stage: retention"),
                      ["rules.yaml:5:", "field 'stage'", "win-back"]),
    "template field": (RULE.replace("offer: vip_package", "offer: vip_package\n      message: 'Hi {first_name}'"),
                       ["rules.yaml:10:", "unknown field '{first_name}'"]),
    "template code": (RULE.replace("offer: vip_package",
                                   "offer: vip_package\n      message: 'Hi {tenure_months.__class__}'"),
                      ["rules.yaml:10:", "only plain field names"]),
    "duplicate key": (RULE.replace("priority: 50", "priority: 50\n    priority: 60"),
                      ["rules.yaml:5:", "duplicate key 'priority'"]),
    "missing field": (RULE.replace("    stage: intervention\n", ""),
                      ["rules.yaml:2:", "rule 'vip-high-risk'", "missing required field 'stage'"]),
    "empty any": (RULE.replace("risk_grade: high", "any: []"), ["rules.yaml:7:", "'any' needs a non-empty list"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_names_file_line_and_rule(tmp_path, name):
    text, fragments = BAD[name]
    message, problems = problems_of(write_set(tmp_path, text))
    first = problems[0]
    for fragment in fragments:
        assert fragment in first, (fragment, first)
    assert first in message and "\n" not in message
    assert "policies/rules.yaml" in first or "policies\\rules.yaml" in first


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    text = RULE.replace("risk_grade: high", "risk_grade: hihg\n      tenure: 3").replace(
        "offer: vip_package", "offer: nope")
    message, problems = problems_of(write_set(tmp_path, text))
    assert len(problems) == 3, problems
    assert "(+2 more problem(s))" in message and "retain policy validate" in message


def test_duplicate_offer_across_files(tmp_path):
    folder = write_set(tmp_path, RULE)
    (folder / "z_offers.yaml").write_text(OFFERS.split("  - id: care")[0])
    _, problems = problems_of(folder)
    assert "z_offers.yaml:2: offer 'vip_package': duplicate offer id" in problems[0]


def test_offer_eligibility_and_dates_are_checked(tmp_path):
    offers = OFFERS + """\
  - id: bad
    description: Bad offer
    cost: -1
    value_kept: 1
    channels: [sms]
    eligibility:
      value_tier: gold
  - id: bad_dates
    description: Dates the wrong way round
    cost: 1
    value_kept: 1
    channels: [sms]
    valid_from: 2026-02-01
    valid_to: 2026-01-01
"""
    _, problems = problems_of(write_set(tmp_path, RULE, offers))
    text = "\n".join(problems)
    assert "offers.yaml:18: offer 'bad': eligibility: unknown value 'gold' for value_tier" in text
    assert "offers.yaml:14: offer 'bad': field 'cost'" in text
    assert "offers.yaml:19: offer 'bad_dates': valid_from 2026-02-01 is after valid_to 2026-01-01" in text


def test_empty_policy_sets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message, _ = problems_of(empty)
    assert "no policy files" in message and "empty" in message
    folder = write_set(tmp_path, "# nothing here yet\n")
    message, _ = problems_of(folder)
    assert "has no rules" in message and "policies/" in message
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy_set(tmp_path / "nope")


def test_not_a_mapping_and_not_a_list(tmp_path):
    _, problems = problems_of(write_set(tmp_path, "- just\n- a list\n"))
    assert "rules.yaml:1: a policy file must be a mapping" in problems[0]
    _, problems = problems_of(write_set(tmp_path, "rules: {id: x}\n"))
    assert "rules.yaml:1: `rules` must be a list" in problems[0]


def test_test_cases_are_not_loaded_as_policies(tmp_path):
    folder = write_set(tmp_path, RULE)
    (folder / "tests").mkdir()
    (folder / "tests" / "cases.yaml").write_text("tests: []\n")
    (folder / "test_more.yaml").write_text("tests: []\n")
    assert len(load_policy_set(folder).files) == 2


def test_published_json_schema_is_current():
    assert SCHEMA_PATH.read_text() == schema_text(), "regenerate: retain policy schema --out " + str(SCHEMA_PATH)
    schema = json.loads(SCHEMA_PATH.read_text())
    cond = schema["$defs"]["Condition"]
    assert cond["additionalProperties"] is False
    assert {"all", "any", "not", "risk_grade", "tenure_months"} <= set(cond["properties"])
    grade = cond["properties"]["risk_grade"]["anyOf"][0]
    assert grade["enum"] == ["high", "medium", "low"]
    rule = schema["$defs"]["RuleSpec"]
    assert rule["additionalProperties"] is False and rule["properties"]["when"]["anyOf"][0] == {
        "$ref": "#/$defs/Condition"}
    assert json_schema()["title"]


@pytest.mark.parametrize("mode", ["first", "best_value", "incremental_value"])
def test_every_arbitration_mode_loads(tmp_path, mode):
    folder = write_set(tmp_path, RULE)
    (folder / "policy.yaml").write_text(f"arbitration: {mode}\n")
    assert load_policy_set(folder).arbitration == mode


def test_an_unknown_arbitration_mode_is_one_line_naming_the_file(tmp_path, runner):
    from engine.cli.main import app

    folder = write_set(tmp_path, RULE)
    (folder / "policy.yaml").write_text("description: x\narbitration: incremental\n")
    with pytest.raises(PolicyError) as err:
        load_policy_set(folder)
    message = str(err.value)
    assert "\n" not in message and "policy.yaml:2" in message and "unknown mode 'incremental'" in message
    assert "did you mean 'incremental_value'" in message
    res = runner.invoke(app, ["policy", "validate", "--policies", str(folder)])
    assert res.exit_code == 2 and "policy.yaml:2" in res.output and "Traceback" not in res.output


def test_exploration_share_loads_defaults_and_refuses_bad_values(tmp_path):
    folder = write_set(tmp_path, RULE)
    default = load_policy_set(folder)
    assert default.exploration_share == 0.05 and default.exploration_seed is None
    (folder / "policy.yaml").write_text("exploration: {share: 0, seed: may}\n")
    off = load_policy_set(folder)
    assert (off.exploration_share, off.exploration_seed) == (0.0, "may")
    assert off.content_hash != default.content_hash
    (folder / "policy.yaml").write_text("exploration: {share: 0.9}\n")
    with pytest.raises(PolicyError) as err:
        load_policy_set(folder)
    assert "policy.yaml:1: exploration: share" in str(err.value) and "\n" not in str(err.value)


def test_the_sample_offers_state_their_prior_effect():
    ps = load_policy_set(SAMPLE)
    assert set(ps.effect_priors) == set(ps.offers) and ps.effect_priors["care_message"] == 0.0
    assert ps.exploration_share == 0.05
