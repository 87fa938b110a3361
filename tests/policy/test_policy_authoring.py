"""Authoring mistakes a marketer makes in a policy file: one line each, exit 2, no traceback, no follow-on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli.policy import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", folder)
    return folder


def _validate(folder: Path) -> tuple[int, list[str]]:
    res = CliRunner().invoke(app, ["validate", "--policies", str(folder)])
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, [line for line in res.output.splitlines() if line.strip()]


def _set_offer_date(folder: Path, value: str) -> None:
    offers = folder / "offers.yaml"
    text = offers.read_text()
    assert "    valid_from: 2024-01-01\n" in text
    dated = f"    valid_from: 2024-01-01\n    valid_to: {value}\n"
    offers.write_text(text.replace("    valid_from: 2024-01-01\n", dated, 1))


@pytest.mark.parametrize("value, words", [
    ("2027-13-15", "month value is outside expected range"),
    ("2027-02-30", "day value is outside expected range"),
    ("15/01/2027", "invalid character in year"),
])
def test_a_bad_date_is_one_line_with_file_line_offer_and_field_and_no_follow_on(policies, value, words):
    _set_offer_date(policies, value)
    code, lines = _validate(policies)
    assert code == 2
    problems = [ln for ln in lines if "offers.yaml" in ln or "rules/" in ln]
    assert len(problems) == 1, lines
    assert "offers.yaml:57: offer 'bonus_data': field 'valid_to'" in problems[0] and words in problems[0]
    assert not any("unknown offer" in ln for ln in lines)


@pytest.mark.parametrize("text, words", [
    ("rules:\n  - id: a\n    description: x\n      priority: 3\n",
     "rules/bad.yaml:4: malformed YAML at line 4, column"),
    ("rules:\n  - id: a\n\tdescription: x\n", "a tab? indent with spaces"),
    ("rules:\n  - id: a\n    when: {risk_grade: [high\n", "is not closed"),
])
def test_yaml_syntax_errors_say_line_column_and_what_to_check(policies, text, words):
    (policies / "rules" / "bad.yaml").write_text(text)
    code, lines = _validate(policies)
    assert code == 2 and any(words in ln for ln in lines), lines
    assert not any("<block" in ln or "expected <" in ln for ln in lines), lines


def test_hostile_shapes_are_refused_before_parsing(policies):
    deep = policies / "rules" / "deep.yaml"
    deep.write_text("rules: " + "[" * 10_000 + "]" * 10_000)
    code, lines = _validate(policies)
    assert code == 2 and any("nested more than 50 levels deep" in ln for ln in lines)
    deep.write_text("rules:\n" + "".join("  " * i + "- \n" for i in range(200)))
    code, lines = _validate(policies)
    assert code == 2 and any("deep.yaml:51: nested more than" in ln for ln in lines)
    deep.write_text("#" * 2_000_000)
    code, lines = _validate(policies)
    assert code == 2 and any("more than the 1 MB a policy file may have" in ln for ln in lines)
    laughs = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(15))
    deep.write_text(laughs)
    code, lines = _validate(policies)
    assert code == 2 and any("more than 100 aliases" in ln for ln in lines)


def test_message_format_widths_are_bounded(policies):
    vip = policies / "rules" / "vip.yaml"
    text = vip.read_text()
    assert 'message: "' in text
    vip.write_text(text.replace('message: "', 'message: "{tenure_months:>999999999} ', 1))
    code, lines = _validate(policies)
    assert code == 2
    assert any("vip.yaml:15: rule 'vip-high-risk': message field '{tenure_months:>999999999}': width or precision "
               "above 100" in ln for ln in lines), lines
