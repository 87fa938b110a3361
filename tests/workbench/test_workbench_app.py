"""The workbench through FastAPI's TestClient: decision tables, live validation on the fields, the working
copy, save (diff, refusal, comments kept), sign-off, test cases, simulate, explain, token, one-line errors."""

from __future__ import annotations

import difflib
import re
import shutil
from html import unescape
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from engine.policy import load_policy_set
from engine.workbench.app import COOKIE, create_app
from engine.workbench.workspace import SIGNOFF_FILE

VIP = "rules/vip.yaml"


def vip_form(**changes: str) -> dict[str, str]:
    """The edit form of rule vip-high-risk as the page submits it, with `changes`."""
    form = {"file": VIP, "index": "0", "id": "vip-high-risk",
            "description": "High-value subscribers at high risk go to the dedicated VIP retention team",
            "priority": "100", "stage": "intervention",
            "when-attr-0": "value_tier", "when-value-0": "high", "when-attr-1": "risk_grade", "when-value-1": "high",
            "when-attr-2": "", "when-value-2": "", "then_kind": "offer", "offer": "vip_loyalty_package",
            "channel": "vip_manager", "exclude_channels": "",
            "message": "VIP at risk ({reason}, churn probability {churn_probability:.0%}), {tenure_months} months "
                       "with us - call within 3 business days.",
            "note": "", "valid_from": "", "valid_to": ""}
    form.update(changes)
    return form


def field_error(html: str, name: str) -> list[str]:
    m = re.search(rf'id="err-{re.escape(name)}"[^>]*>(.*?)</div>', html, re.S)
    assert m, f"no error container for {name}"
    return [unescape(p) for p in re.findall(r"<p>(.*?)</p>", m.group(1), re.S)]


def validate_lines(folder: Path, monkeypatch) -> list[str]:
    """What `retain policy validate --policies policies` prints for `folder` (run from its parent)."""
    from engine.errors import PolicyError

    monkeypatch.chdir(folder.parent)
    try:
        load_policy_set(folder.name)
    except PolicyError as exc:
        return list(exc.problems)
    return []


@pytest.fixture()
def client(policies, decisions, tmp_path):
    app = create_app(policies, input_path=decisions, token="")
    with TestClient(app) as c:
        yield c
    app.state.wb.ws.close()
    # nothing a page showed may name a server path
    assert str(tmp_path) not in getattr(c, "_seen", "")


def get(c: TestClient, url: str, **kw):
    r = c.get(url, **kw)
    c._seen = getattr(c, "_seen", "") + r.text
    assert "Traceback" not in r.text
    return r


def post(c: TestClient, url: str, **kw):
    r = c.post(url, **kw)
    c._seen = getattr(c, "_seen", "") + r.text
    assert "Traceback" not in r.text
    return r


# ---------------------------------------------------------------------------------------------
def test_overview_shows_decision_tables_offers_and_arbitration(client):
    r = get(client, "/")
    assert r.status_code == 200
    html = r.text
    assert ">valid<" in html and "policy hash" in html
    for rule in ("vip-high-risk", "network-credit", "preventive-care", "winback-high-value"):
        assert f">{rule}</a>" in html
    assert 'data-file="rules/intervention.yaml"' in html
    assert '<th class="cond">complaints_3m</th>' in html and "≥ 2" in html  # conditions as columns
    assert 'value="first" checked' in html
    assert ">discount_15</a>" in html and "Offer catalogue" in html
    assert "coverage on decisions.parquet (2,000 subscribers)" in html


def test_live_validation_puts_the_validate_message_on_the_field(client, policies, monkeypatch, tmp_path):
    form = vip_form(**{"when-attr-0": "value_teir", "offer": "vip_loyalty_pakage"})
    r = post(client, "/edit/rules/check", data=form)
    assert r.status_code == 200
    attr_errors = field_error(r.text, "when-attr-0")
    offer_errors = field_error(r.text, "offer")
    assert len(attr_errors) == 1 and len(offer_errors) == 1
    assert field_error(r.text, "priority") == []
    # the same lines as `retain policy validate` on the same files
    copy = tmp_path / "check" / "policies"
    shutil.copytree(policies, copy)
    text = (copy / VIP).read_text().replace("value_tier: high", "value_teir: high").replace(
        "offer: vip_loyalty_package", "offer: vip_loyalty_pakage")
    (copy / VIP).write_text(text)
    expected = validate_lines(copy, monkeypatch)
    assert attr_errors[0] in expected and offer_errors[0] in expected
    assert attr_errors[0].startswith("policies/rules/vip.yaml:10: rule 'vip-high-risk': when: unknown attribute "
                                     "'value_teir'")
    # nothing was written
    assert "value_teir" not in (policies / VIP).read_text()


def test_value_and_priority_errors_land_on_their_fields(client):
    r = post(client, "/edit/rules/check", data=vip_form(**{"when-value-1": "hihg", "priority": "high",
                                                            "channel": "vip_manger"}))
    assert any("unknown value 'hihg' for risk_grade" in m for m in field_error(r.text, "when-value-1"))
    assert any("field 'priority'" in m for m in field_error(r.text, "priority"))
    assert any("vip_manger" in m for m in field_error(r.text, "channel"))
    r = post(client, "/edit/rules/check", data=vip_form(valid_to="2026-13-01", then_kind="suppression"))
    assert any("field 'valid_to'" in m for m in field_error(r.text, "valid_to"))
    r = post(client, "/edit/rules/check", data=vip_form(**{"when-value-0": "[high, medium"}))
    assert any("not valid YAML" in m for m in field_error(r.text, "when-value-0"))


def test_apply_edits_the_working_copy_only_and_save_keeps_comments(client, policies):
    original = (policies / VIP).read_text()
    r = post(client, "/edit/rules/apply", data=vip_form(**{"when-value-1": "[high, medium]"}))
    assert r.status_code == 200 and "applied to the working copy; the set is valid" in r.text
    assert (policies / VIP).read_text() == original  # not saved yet
    page = get(client, "/save").text
    assert "+      risk_grade: [high, medium]" in unescape(page) and "-      risk_grade: high" in page
    assert re.search(r'id="save-tests"[^>]*>test cases: \d+ passed, \d+ failed', page)
    r = post(client, "/save")
    assert r.status_code == 200 and "saved policies/rules/vip.yaml" in unescape(r.text)
    saved = (policies / VIP).read_text()
    changed = [line for line in difflib.unified_diff(original.splitlines(), saved.splitlines(), lineterm="")
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-      risk_grade: high", "+      risk_grade: [high, medium]"]
    assert saved.startswith("# yaml-language-server: $schema=")
    assert load_policy_set(policies).rule("vip-high-risk")
    assert "Nothing to save" in get(client, "/save").text


def test_save_is_refused_while_the_set_has_errors(client, policies):
    original = (policies / VIP).read_text()
    r = post(client, "/edit/rules/apply", data=vip_form(offer="vip_loyalty_pakage"))
    assert "1 error to fix before saving" in r.text
    assert any("unknown offer 'vip_loyalty_pakage'" in m for m in field_error(r.text, "offer"))
    r = post(client, "/save")
    assert r.status_code == 409
    errors = re.findall(r'<p class="error" role="alert" id="page-error">(.*?)</p>', r.text)
    assert len(errors) == 1 and errors[0].startswith("not saved: the working copy has 1 error")
    assert "\n" not in errors[0]
    assert (policies / VIP).read_text() == original
    assert "disabled" in get(client, "/save").text
    # the overview flags the rule
    assert "unknown offer &#39;vip_loyalty_pakage&#39;" in get(client, "/").text


def test_save_refuses_a_file_changed_on_disk(client, policies):
    post(client, "/edit/rules/apply", data=vip_form(priority="101"))
    (policies / VIP).write_text((policies / VIP).read_text() + "# edited by someone else\n")
    r = post(client, "/save")
    assert r.status_code == 409 and "changed on disk since the workbench opened it" in r.text
    assert "# edited by someone else" in (policies / VIP).read_text()


def test_yaml_pane_and_file_pane(client, policies):
    r = post(client, "/edit/rules/yaml-check", data={"file": VIP, "index": "0", "yaml": "id: [unclosed"})
    assert "not valid YAML" in r.text
    pane = (policies / VIP).read_text().split("rules:\n", 1)[1]
    item = "\n".join(line[4:] for line in pane.splitlines()).replace("priority: 100", "priority: 110")
    r = post(client, "/edit/rules/yaml-check", data={"file": VIP, "index": "0", "yaml": item})
    assert "no errors" in r.text
    r = post(client, "/edit/rules/apply", data={"file": VIP, "index": "0", "yaml": item, "source": "yaml"})
    assert "the set is valid" in r.text
    assert "priority: 110" in get(client, f"/file?path={VIP}").text
    r = post(client, "/file/apply", data={"file": VIP, "yaml": "rules: [\n"})
    assert r.status_code == 400 and "is not valid YAML" in r.text
    r = post(client, "/file/check", data={"file": "offers.yaml", "yaml": "offers: []\n"})
    assert "unknown offer" in r.text  # every rule now names a missing offer


def test_new_rule_and_delete(client, policies):
    form = vip_form(index="new", id="vip-medium", priority="99", **{"when-value-1": "medium"})
    r = post(client, "/edit/rules/apply", data=form)
    assert "the set is valid" in r.text
    assert ">vip-medium</a>" in get(client, "/").text
    r = post(client, "/edit/rules/delete", data={"file": VIP, "index": "1"})
    assert "deleted" in r.text and ">vip-medium</a>" not in r.text


def test_arbitration_mode(client):
    r = post(client, "/arbitration", data={"mode": "best_value"})
    assert 'value="best_value" checked' in r.text
    r = post(client, "/arbitration", data={"mode": "bestvalue"})
    assert "arbitration" in r.text and 'class="badge bad"' in r.text


def test_signoff_appends_who_approved_which_hash(client, policies):
    current = load_policy_set(policies).content_hash
    r = post(client, "/signoff", data={"name": "Ana Lima", "note": "Q3 price campaign", "policy_hash": current})
    assert r.status_code == 200 and f"approved policy {current[:12]}" in r.text
    path = policies / SIGNOFF_FILE
    first = path.read_text()
    post(client, "/signoff", data={"name": "Ben Ode", "note": "", "policy_hash": current})
    second = path.read_text()
    assert second.startswith(first)  # append-only
    entries = yaml.safe_load(second)
    assert [(e["name"], e["policy_hash"]) for e in entries] == [("Ana Lima", current), ("Ben Ode", current)]
    assert entries[0]["note"] == "Q3 price campaign" and entries[0]["approved_at"].endswith("Z")
    assert load_policy_set(policies).content_hash == current  # the loader ignores the sign-off file
    assert post(client, "/signoff", data={"name": " ", "policy_hash": current}).status_code == 409
    r = post(client, "/signoff", data={"name": "Cy", "policy_hash": "0" * 64})
    assert r.status_code == 409 and "changed since this page was shown" in r.text
    assert len(yaml.safe_load(path.read_text())) == 2


def test_tests_page_and_add_a_case_from_a_subscriber(client, decisions):
    import pandas as pd

    r = get(client, "/tests")
    assert re.search(r"(\d+) passed, 0 failed", r.text)
    passed = int(re.search(r"(\d+) passed", r.text).group(1))
    sid = str(pd.read_parquet(decisions)["subscriber_id"].iloc[5])
    r = post(client, "/tests/preview", data={"subscriber": sid})
    assert f"subscriber {sid} gets" in r.text and "Add the case" in r.text
    name = re.search(r'id="case-name" name="name" value="([^"]*)"', r.text).group(1)
    offer = re.search(r'name="expect_offer" value="([^"]*)"', r.text).group(1)
    channel = re.search(r'name="expect_channel" value="([^"]*)"', r.text).group(1)
    r = post(client, "/tests/add", data={"subscriber": sid, "name": unescape(name), "expect_kind": "offer",
                                          "expect_offer": offer, "expect_channel": channel})
    assert f"{passed + 1} passed, 0 failed" in r.text
    assert "tests/workbench_cases.yaml" in get(client, "/save").text
    r = post(client, "/tests/preview", data={"subscriber": "NOPE"}, headers={"HX-Request": "true"})
    assert r.status_code == 200 and "subscriber &#39;NOPE&#39; not found" in r.text


def test_simulate_against_the_saved_set(client):
    r = post(client, "/simulate/run")
    assert 'id="changed-offer">0<' in r.text and "<svg" in r.text
    post(client, "/edit/rules/apply", data=vip_form(**{"when-value-1": "[high, medium]"}))
    r = post(client, "/simulate/run")
    changed = int(re.search(r'id="changed-offer">([\d,]+)<', r.text).group(1).replace(",", ""))
    assert changed > 0
    assert "vip_loyalty_package" in r.text and "Per rule" in r.text and "Per channel" in r.text
    assert 'id="decide-figures"' in r.text
    post(client, "/edit/rules/apply", data=vip_form(offer="nope"))
    r = post(client, "/simulate/run")
    assert "cannot simulate: the working copy has 1 error(s)" in r.text


def test_explain_one_subscriber(client, decisions):
    import pandas as pd

    sid = str(pd.read_parquet(decisions)["subscriber_id"].iloc[0])
    r = get(client, f"/explain?subscriber={sid}")
    assert r.status_code == 200 and f"Subscriber {sid}" in r.text and "winner" in r.text
    r = get(client, "/explain?subscriber=S-missing")
    assert "not found" in r.text


def test_errors_are_one_line_without_paths(client, tmp_path):
    for url in ("/file?path=../../etc/passwd", "/edit/rules?file=rules/vip.yaml&index=7", "/edit/nothing?file=x",
                "/no-such-page", "/edit/rules?file=rules/vip.yaml&index=x"):
        r = get(client, url)
        assert r.status_code in (400, 404, 422), url
        errors = re.findall(r'<p class="error" role="alert" id="page-error">(.*?)</p>', r.text, re.S)
        assert len(errors) == 1 and "\n" not in errors[0], url
        assert str(tmp_path) not in r.text and "/tmp/" not in r.text


def test_cross_site_posts_are_refused(client, policies):
    r = client.post("/save", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.text == "error: cross-site request refused"


def test_token_login(policies, decisions):
    app = create_app(policies, input_path=decisions, token="s3cret-token")
    with TestClient(app) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert c.get("/static/htmx.min.js").status_code == 200
        r = c.post("/edit/rules/check", data=vip_form(), headers={"HX-Request": "true"}, follow_redirects=False)
        assert r.status_code == 401 and r.headers["HX-Redirect"] == "/login"
        r = c.post("/login", data={"token": "wrong", "next": "/tests"}, follow_redirects=False)
        assert r.status_code == 401 and "wrong token" in r.text and COOKIE not in r.headers.get("set-cookie", "")
        r = c.post("/login", data={"token": "s3cret-token", "next": "//evil.example/"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "s3cret-token" not in r.headers["set-cookie"]
        assert c.get("/").status_code == 200
        c.post("/logout")
        assert c.get("/", follow_redirects=False).status_code == 303
    app.state.wb.ws.close()


def test_token_from_environment(policies, monkeypatch):
    monkeypatch.setenv("RETAIN_WORKBENCH_TOKEN", "from-env")
    app = create_app(policies)
    with TestClient(app) as c:
        assert c.get("/", follow_redirects=False).status_code == 303
    app.state.wb.ws.close()


def test_cli_refuses_an_open_host_without_token(monkeypatch, policies):
    from typer.testing import CliRunner

    from engine.cli.main import app

    monkeypatch.delenv("RETAIN_WORKBENCH_TOKEN", raising=False)
    res = CliRunner().invoke(app, ["workbench", "--policies", str(policies), "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert "without a token" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["workbench", "--policies", str(policies / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_offer_form_errors_and_apply(client, policies):
    form = {"file": "offers.yaml", "index": "2", "id": "discount_15",
            "description": "15% off the monthly fee for 6 months", "cost": "45", "value_kept": "55",
            "acceptance": "{price: 0.4, competitor: 0.25, default: 0.12}",
            "channels": "outbound_call, smss, app_popup", "elig-attr-0": "is_prepaid", "elig-value-0": "false",
            "elig-attr-1": "tenur_months", "elig-value-1": "{min: 6}", "valid_from": "", "valid_to": ""}
    r = post(client, "/edit/offers/check", data=form)
    assert any("smss" in m for m in field_error(r.text, "channels"))
    assert any("unknown attribute 'tenur_months'" in m for m in field_error(r.text, "elig-attr-1"))
    form.update({"channels": "outbound_call, sms, app_popup", "elig-attr-1": "tenure_months", "cost": "40"})
    r = post(client, "/edit/offers/check", data=form)
    assert 'class="badge ok"' in r.text
    r = post(client, "/edit/offers/apply", data=form)
    assert "the set is valid" in r.text
    text = client.app.state.wb.ws.read("offers.yaml")
    original = (policies / "offers.yaml").read_text()
    changed = [line for line in difflib.unified_diff(original.splitlines(), text.splitlines(), lineterm="")
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-    cost: 45", "+    cost: 40"]


def test_messages_never_name_the_working_copy(policies):
    from engine.workbench.workspace import Workspace

    ws = Workspace(policies)
    try:
        (ws.work / VIP).write_text((ws.work / VIP).read_text().replace("risk_grade: high", "risk_grade: hihg"))
        check = ws.check(warnings=False)
        assert [p.file for p in check.problems] == [VIP]
        assert check.problems[0].text.startswith("policies/rules/vip.yaml:11: rule 'vip-high-risk'")
        assert str(ws.work) not in ws.scrub(f"cannot read {ws.work}/offers.yaml")
        cand = ws.check_candidate({VIP: (policies / VIP).read_text()}, warnings=False)
        assert cand.ok and ws.changed_files() == [VIP]
    finally:
        ws.close()
