"""Hostile inputs across every command: exit code, one error line naming the problem, no traceback,
no partial output, stores intact. Cases are data; each runs the real CLI in-process."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from engine.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Ctx:
    """A case's folder: a copy of the sample policies, a small valid month, room for outputs."""

    tmp: Path
    store: object  # tests.conftest.Store, trained once per session
    month: Path

    @property
    def policies(self) -> Path:
        return self.tmp / "policies"

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def frame(self) -> pd.DataFrame:
        return pd.read_parquet(self.month)

    def csv(self, name: str, df: pd.DataFrame) -> Path:
        path = self.tmp / name
        df.to_csv(path, index=False)
        return path

    def policy_file(self, rel: str, text: str) -> Path:
        path = self.policies / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def args(self) -> list[str]:
        return list(self.store.args())


@dataclass
class Case:
    name: str
    argv: Callable[[Ctx], list[str]]
    expect: str  # a fragment of the one error line
    code: int = 2
    no_output: bool = True  # Ctx.out must not exist afterwards
    tags: tuple[str, ...] = field(default_factory=tuple)


def policy_case(name: str, rel: str, text: str, expect: str, command: str = "validate") -> Case:
    def argv(c: Ctx) -> list[str]:
        c.policy_file(rel, text)
        return ["policy", command, "--policies", str(c.policies)]
    return Case(name, argv, expect)


RULE = """rules:
  - id: r1
    description: a rule
    priority: 10
    stage: intervention
    when: {risk_grade: high}
    then: {offer: bonus_data, channel: sms}
"""

POLICY_CASES = [
    policy_case("unknown attribute", "rules/x.yaml", RULE.replace("risk_grade: high", "risk_grad: high"),
                "unknown attribute 'risk_grad'"),
    policy_case("unknown offer", "rules/x.yaml", RULE.replace("bonus_data", "bonus_dat"), "unknown offer 'bonus_dat'"),
    policy_case("unknown channel", "rules/x.yaml", RULE.replace("channel: sms", "channel: fax"), "channel"),
    policy_case("bad stage", "rules/x.yaml", RULE.replace("intervention", "rescue"), "stage"),
    policy_case("negative priority", "rules/x.yaml", RULE.replace("priority: 10", "priority: -1"), "priority"),
    policy_case("text priority", "rules/x.yaml", RULE.replace("priority: 10", "priority: high"), "priority"),
    policy_case("missing description", "rules/x.yaml", RULE.replace("    description: a rule\n", ""),
                "missing required field 'description'"),
    policy_case("unknown rule field", "rules/x.yaml", RULE.replace("stage:", "stag: x\n    stage:"),
                "unknown field 'stag'"),
    policy_case("unknown top-level field", "rules/x.yaml", "rulez: []\n" + RULE, "unknown field 'rulez'"),
    policy_case("rules not a list", "rules/x.yaml", "rules: {a: 1}\n", "`rules` must be a list"),
    policy_case("file is a list", "rules/x.yaml", "- a\n- b\n", "a policy file must be a mapping"),
    policy_case("duplicate rule id", "rules/x.yaml", RULE + RULE.replace("rules:\n", ""), "duplicate rule id"),
    policy_case("duplicate key", "rules/x.yaml", RULE.replace("priority: 10", "priority: 10\n    priority: 11"),
                "duplicate key 'priority'"),
    policy_case("bad id characters", "rules/x.yaml", RULE.replace("id: r1", "id: 'r 1!'"), "not a valid id"),
    policy_case("categorical value typo", "rules/x.yaml", RULE.replace("risk_grade: high", "risk_grade: hihg"),
                "unknown value 'hihg' for risk_grade"),
    policy_case("number for categorical", "rules/x.yaml", RULE.replace("risk_grade: high", "risk_grade: 3"),
                "risk_grade is categorical"),
    policy_case("text for numeric", "rules/x.yaml", RULE.replace("risk_grade: high", "tenure_months: {gt: ten}"),
                "tenure_months is numeric"),
    policy_case("unknown operator", "rules/x.yaml", RULE.replace("risk_grade: high", "tenure_months: {over: 3}"),
                "over"),
    policy_case("empty any", "rules/x.yaml", RULE.replace("risk_grade: high", "any: []"), "'any' needs a non-empty"),
    policy_case("not with a list", "rules/x.yaml", RULE.replace("risk_grade: high", "not: [a]"), "'not' needs"),
    policy_case("unclosed bracket", "rules/x.yaml", RULE.replace("{risk_grade: high}", "{risk_grade: [high"),
                "malformed YAML"),
    policy_case("tab indentation", "rules/x.yaml", RULE.replace("    description", "\tdescription"),
                "indent with spaces"),
    policy_case("bad indentation", "rules/x.yaml", RULE.replace("    priority: 10", "      priority: 10"),
                "malformed YAML at line"),
    policy_case("unknown template field", "rules/x.yaml",
                RULE.replace("channel: sms}", "channel: sms, message: 'hi {nmae}'}"), "unknown field '{nmae}'"),
    policy_case("template conversion", "rules/x.yaml",
                RULE.replace("channel: sms}", "channel: sms, message: 'hi {plan!r}'}"), "conversions"),
    policy_case("template huge width", "rules/x.yaml",
                RULE.replace("channel: sms}", "channel: sms, message: 'hi {tenure_months:>999999999}'}"),
                "width or precision above 100"),
    policy_case("template attribute access", "rules/x.yaml",
                RULE.replace("channel: sms}", "channel: sms, message: 'hi {plan.x}'}"), "only plain field names"),
    policy_case("channel the offer does not allow", "rules/x.yaml",
                RULE.replace("channel: sms", "channel: vip_manager"), "is not allowed for offer"),
    policy_case("suppression with an offer", "rules/x.yaml",
                RULE.replace("{offer: bonus_data, channel: sms}", "{offer: bonus_data, no_offer: true}"),
                "a suppression (no_offer: true) sends nothing"),
    policy_case("neither offer nor suppression", "rules/x.yaml", RULE.replace("{offer: bonus_data, channel: sms}",
                                                                                "{channel: sms}"),
                "give an offer"),
    policy_case("rule dates reversed", "rules/x.yaml", RULE + "    valid_from: 2027-02-01\n    valid_to: 2027-01-01\n",
                "valid_from 2027-02-01 is after valid_to 2027-01-01"),
    policy_case("rule date impossible", "rules/x.yaml", RULE + "    valid_to: 2027-02-30\n", "field 'valid_to'"),
    policy_case("rule date in words", "rules/x.yaml", RULE + "    valid_to: next week\n", "field 'valid_to'"),
    policy_case("arbitration typo", "policy.yaml", "arbitration: best_valu\n", "unknown mode 'best_valu'"),
    policy_case("attribute shadows a built-in", "attributes.yaml",
        "attributes:\n  - {name: plan, type: categorical, description: x}\n", "already an attribute of the engine"),
    policy_case("attribute bad type", "attributes.yaml", "attributes:\n  - {name: vip, type: money, description: x}\n",
                "type"),
    policy_case("attribute values on boolean", "attributes.yaml",
                "attributes:\n  - {name: vip, type: boolean, description: x, values: [a]}\n",
                "values only apply to a categorical"),
    policy_case("acceptance above one", "offers2.yaml",
                "offers:\n  - {id: o2, description: x, cost: 1, value_kept: 1, channels: [sms], acceptance: 1.5}\n",
                "acceptance"),
    policy_case("acceptance unknown reason", "offers2.yaml",
                "offers:\n  - {id: o2, description: x, cost: 1, value_kept: 1, channels: [sms], "
                "acceptance: {pricey: 0.2}}\n", "unknown reason 'pricey'"),
    policy_case("offer negative cost", "offers2.yaml",
                "offers:\n  - {id: o2, description: x, cost: -1, value_kept: 1, channels: [sms]}\n", "cost"),
    policy_case("offer no channels", "offers2.yaml",
                "offers:\n  - {id: o2, description: x, cost: 1, value_kept: 1, channels: []}\n", "channels"),
    policy_case("deep nesting", "rules/x.yaml", "rules: " + "[" * 5000 + "]" * 5000, "nested more than 50 levels"),
    policy_case("alias bomb", "rules/x.yaml", "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(15)),
                "more than 100 aliases"),
    policy_case("generated rule flood", "rules/x.yaml", "rules:\n" + "".join(
        RULE.replace("rules:\n", "").replace("id: r1", f"id: r{i}") for i in range(1_100)), "more than the 1,000"),
    policy_case("huge file", "rules/x.yaml", "# " + "x" * 1_100_000 + "\n", "more than the 1 MB"),
    policy_case("test case unknown attribute", "tests/bad_cases.yaml",
                "tests:\n  - name: c\n    subscriber: {risk_grad: high}\n    expect: {offer: bonus_data}\n",
                "risk_grad", command="test"),
]


def _not_utf8(c: Ctx) -> list[str]:
    (c.policies / "rules" / "x.yaml").write_bytes(b"rules:\n  - id: \xff\xfe\n")
    return ["policy", "validate", "--policies", str(c.policies)]


def _empty_set(c: Ctx) -> list[str]:
    for f in (c.policies / "rules").glob("*.yaml"):
        f.unlink()
    return ["policy", "validate", "--policies", str(c.policies)]


def _missing_policies(c: Ctx) -> list[str]:
    return ["policy", "validate", "--policies", str(c.tmp / "nowhere")]


POLICY_CASES += [
    Case("policy file not utf-8", _not_utf8, "is not UTF-8 text"),
    Case("policy set with no rules", _empty_set, "has no rules"),
    Case("policy folder missing", _missing_policies, "does not exist"),
    Case("explain unknown subscriber", lambda c: ["policy", "explain", "--input", str(c.month), "--subscriber",
                                                  "NOPE", "--policies", str(c.policies)], "NOPE"),
    Case("explain missing input", lambda c: ["policy", "explain", "--input", str(c.tmp / "none.parquet"),
                                             "--subscriber", "S1", "--policies", str(c.policies)], "does not exist"),
    Case("match unknown offer", lambda c: ["policy", "match", "--offer", "nothing", "--input", str(c.month),
                                           "--policies", str(c.policies)], "nothing"),
]


def _config(c: Ctx, text: str) -> list[str]:
    cfg = c.write("bad.yaml", text)
    return ["models", "list", "--config", str(cfg), "--tracking-uri", c.store.uri]


CONFIG_CASES = [
    Case("config unknown setting", lambda c: _config(c, "risk_grade: {high: 0.5}\n"), "risk_grade"),
    Case("config thresholds reversed", lambda c: _config(c, "risk_grades: {high: 0.2, medium: 0.4}\n"),
         "must be below high"),
    Case("config negative budget", lambda c: _config(c, "arbitration: {budget: -5}\n"), "budget"),
    Case("config not a mapping", lambda c: _config(c, "- a\n"), "bad.yaml"),
    Case("config malformed yaml", lambda c: _config(c, "a: [\n"), "bad.yaml"),
    Case("config unknown channel", lambda c: _config(c, "channels: {fax: {cost: 1, daily_capacity: 1}}\n"), "fax"),
    Case("config missing file", lambda c: ["models", "list", "--config", str(c.tmp / "no.yaml")], "no.yaml"),
    Case("tracking uri unknown scheme", lambda c: ["models", "list", "--tracking-uri", "foo://bar"],
         "unknown scheme 'foo'"),
    Case("tracking uri garbage sqlite", lambda c: ["models", "list", "--tracking-uri",
                                                   f"sqlite:///{c.write('g.db', bytes(range(256)) * 40)}"],
         "is not an SQLite database"),
    Case("tracking uri a folder", lambda c: ["models", "list", "--tracking-uri", f"sqlite:///{c.tmp}"],
         "names a folder"),
    Case("tracking server down, password masked", lambda c: ["models", "list", "--tracking-uri",
                                                             "http://admin:hunter2@127.0.0.1:9/"], "not reachable"),
]


def _data_generate(c: Ctx, *extra: str) -> list[str]:
    return ["data", "generate", "--out", str(c.out / "m.parquet"), *extra]


DATA_CASES = [
    Case("generate zero rows", lambda c: _data_generate(c, "--rows", "0"), "--rows must be a positive"),
    Case("generate negative rows", lambda c: _data_generate(c, "--rows", "-5"), "--rows"),
    Case("generate unknown scenario", lambda c: _data_generate(c, "--rows", "10", "--drift", "zombies"), "zombies"),
    Case("generate unknown format", lambda c: ["data", "generate", "--rows", "10", "--out", str(c.out / "m"),
                                               "--format", "xlsx"], "xlsx"),
    Case("generate under a file", lambda c: ["data", "generate", "--rows", "10", "--out",
                                             str(c.write("afile", "x") / "m.parquet")], "afile"),
]


def _models(c: Ctx, *argv: str) -> list[str]:
    return ["models", *argv, *c.args()]


MODEL_CASES = [
    Case("promote unknown version", lambda c: _models(c, "promote", "99", "--alias", "challenger"), "99"),
    Case("promote alias with path", lambda c: _models(c, "promote", "1", "--alias", "../x"), "alias"),
    Case("promote alias with space", lambda c: _models(c, "promote", "1", "--alias", "my alias"), "alias"),
    Case("promote forced without reason", lambda c: _models(c, "promote", "1", "--alias", "champion", "--force"),
         "reason"),
    Case("compare unknown alias", lambda c: _models(c, "compare", "1", "nosuch"), "nosuch"),
    Case("rollback alias with path", lambda c: _models(c, "rollback", "--alias", "../x"), "alias"),
    Case("tracking store truncated", lambda c: ["models", "list", "--tracking-uri", "sqlite:///{}".format(
        c.write("t.db", Path(c.store.uri.removeprefix("sqlite:///")).read_bytes()[:8192]))], "t.db"),
    Case("rollback with no history", lambda c: _models(c, "rollback", "--alias", "challenger"), "challenger"),
]


def _decide(c: Ctx, table: Path, *extra: str) -> list[str]:
    return ["decide", "--input", str(table), "--out", str(c.out), "--policies", str(c.policies), "--no-log",
            "--no-record", *extra, *c.args()]


def _bool_words(c: Ctx) -> list[str]:
    df = c.frame()
    df["opt_out"] = np.where(df["opt_out"], "maybe", "no")
    return _decide(c, c.csv("in.csv", df))


def _broken_quotes(c: Ctx) -> list[str]:
    df = c.frame().head(50)
    text = df.to_csv(index=False)
    lines = text.splitlines()
    lines[10] = lines[10].replace(",", ',"', 1)
    return _decide(c, c.write("in.csv", "\n".join(lines) + "\n"))


def _extra_fields(c: Ctx) -> list[str]:
    lines = c.frame().head(50).to_csv(index=False).splitlines()
    lines[5] += ",extra,cells"
    return _decide(c, c.write("in.csv", "\n".join(lines) + "\n"))


def _missing_column(c: Ctx) -> list[str]:
    return _decide(c, c.csv("in.csv", c.frame().drop(columns=["tenure_months"])))


def _text_in_numeric(c: Ctx) -> list[str]:
    df = c.frame()
    df["tenure_months"] = df["tenure_months"].astype(object)
    df.loc[3, "tenure_months"] = "twelve"
    return _decide(c, c.csv("in.csv", df))


def _negative_arpu(c: Ctx) -> list[str]:
    df = c.frame()
    df.loc[0, "arpu_m0"] = -50.0
    return _decide(c, c.csv("in.csv", df))


def _duplicate_ids(c: Ctx) -> list[str]:
    df = c.frame()
    df.loc[1, "subscriber_id"] = df.loc[0, "subscriber_id"]
    return _decide(c, c.csv("in.csv", df))


def _unknown_plan(c: Ctx) -> list[str]:
    df = c.frame()
    df.loc[0, "plan"] = "unlimited_gold"
    return _decide(c, c.csv("in.csv", df))


def _empty_table(c: Ctx) -> list[str]:
    return _decide(c, c.csv("in.csv", c.frame().head(0)))


def _header_only(c: Ctx) -> list[str]:
    return _decide(c, c.write("in.csv", "subscriber_id\n"))


def _garbage_parquet(c: Ctx) -> list[str]:
    return _decide(c, c.write("in.parquet", b"PAR1" + bytes(range(200)) + b"PAR1"))


def _unknown_suffix(c: Ctx) -> list[str]:
    return _decide(c, c.write("in.xlsx", "x"))


def _history(c: Ctx, text: str) -> list[str]:
    return _decide(c, c.month, "--contact-history", str(c.write("history.csv", text)))


def _out_under_file(c: Ctx) -> list[str]:
    blocker = c.write("blocker", "x")
    return ["decide", "--input", str(c.month), "--out", str(blocker / "out"), "--policies", str(c.policies),
            "--no-log", "--no-record", *c.args()]


def _broken_policy_for_decide(c: Ctx) -> list[str]:
    c.policy_file("rules/x.yaml", RULE.replace("bonus_data", "bonus_dat"))
    return _decide(c, c.month)


DECIDE_CASES = [
    Case("decide missing input", lambda c: _decide(c, c.tmp / "none.parquet"), "does not exist"),
    Case("decide boolean garbage", _bool_words, "opt_out"),
    Case("decide csv broken quoting", _broken_quotes, "a quote opened on line 11 is never closed"),
    Case("decide csv extra fields", _extra_fields, "line 6 has 28 fields where the header has 26"),
    Case("decide missing column", _missing_column, "tenure_months"),
    Case("decide text in numeric column", _text_in_numeric, "tenure_months"),
    Case("decide negative arpu", _negative_arpu, "arpu_m0"),
    Case("decide duplicate subscriber ids", _duplicate_ids, "subscriber_id"),
    Case("decide unknown plan", _unknown_plan, "plan"),
    Case("decide empty table", _empty_table, "in.csv"),
    Case("decide header only", _header_only, "in.csv"),
    Case("decide garbage parquet", _garbage_parquet, "in.parquet"),
    Case("decide unknown suffix", _unknown_suffix, "xlsx"),
    Case("decide bad date", lambda c: _decide(c, c.month, "--date", "2026-13-01"), "2026-13-01"),
    Case("decide unknown model alias", lambda c: _decide(c, c.month, "--model", "nosuch"), "nosuch"),
    Case("decide unknown model version", lambda c: _decide(c, c.month, "--model", "42"), "42"),
    Case("decide broken policy set", _broken_policy_for_decide, "unknown offer 'bonus_dat'"),
    Case("decide policies missing", lambda c: _decide(c, c.month, "--policies", str(c.tmp / "nowhere")),
         "does not exist"),
    Case("decide history missing columns", lambda c: _history(c, "subscriber_id,channel\nS1,sms\n"),
         "missing column"),
    Case("decide history bad date", lambda c: _history(
        c, "subscriber_id,contacted_on,channel,offer_id,outcome\nS1,yesterday,sms,x,pending\n"), "contacted_on"),
    Case("decide history unknown channel", lambda c: _history(
        c, "subscriber_id,contacted_on,channel,offer_id,outcome\nS1,2026-01-01,fax,x,pending\n"), "fax"),
    Case("decide history unknown outcome", lambda c: _history(
        c, "subscriber_id,contacted_on,channel,offer_id,outcome\nS1,2026-01-01,sms,x,maybe\n"), "maybe"),
    Case("decide out under a file", _out_under_file, "blocker"),
    Case("decide garbage store url", lambda c: ["decide", "--input", str(c.month), "--out", str(c.out),
                                                "--policies", str(c.policies), "--no-log", "--record",
                                                "--config", str(c.write("cfg.yaml", "store_url: sqlite:///{}\n".format(
                                                    c.write("s.db", bytes(range(256)) * 8)))),
                                                "--tracking-uri", c.store.uri], "is not an SQLite database"),
]


def _drift(c: Ctx, current: Path, *extra: str) -> list[str]:
    return ["drift", "--current", str(current), "--out", str(c.out), "--no-log", *extra, *c.args()]


def _nan_storm(c: Ctx) -> list[str]:
    df = c.frame()
    for col in ("arpu_m0", "arpu_m1", "arpu_m2", "data_gb_m0", "voice_min_m0"):
        df[col] = np.nan
    return _drift(c, c.csv("cur.csv", df))


DRIFT_CASES = [
    Case("drift missing current", lambda c: _drift(c, c.tmp / "none.parquet"), "does not exist"),
    Case("drift missing columns", lambda c: _drift(c, c.csv("cur.csv", c.frame().drop(columns=["arpu_m0"]))),
         "arpu_m0"),
    Case("drift one row", lambda c: _drift(c, c.csv("cur.csv", c.frame().head(1))), "row"),
    Case("drift nan storm", _nan_storm, "arpu_m0"),
    Case("drift reference missing", lambda c: _drift(c, c.month, "--reference", str(c.tmp / "none.parquet")),
         "does not exist"),
    Case("drift webhook with credentials unreachable", lambda c: _drift(
        c, c.month, "--webhook", "http://user:s3cr3t@127.0.0.1:9/hook"), "127.0.0.1"),
    Case("drift webhook not http", lambda c: _drift(c, c.month, "--webhook", "ftp://x/y"), "ftp"),
    Case("drift unknown model", lambda c: _drift(c, c.month, "--model", "nosuch"), "nosuch"),
]


def _ingest(c: Ctx, text: str, *extra: str) -> list[str]:
    return ["feedback", "ingest", str(c.write("outcomes.csv", text)), "--store",
            f"sqlite:///{c.tmp / 'store.db'}", *extra, *c.args()]


FEEDBACK_CASES = [
    Case("ingest missing file", lambda c: ["feedback", "ingest", str(c.tmp / "none.csv"), *c.args()],
         "does not exist"),
    Case("ingest missing columns", lambda c: _ingest(c, "order_id,accepted\nA,yes\n"), "column"),
    Case("ingest bad yes/no", lambda c: _ingest(
        c, "order_id,contacted,accepted,churned_30d\nA,yes,perhaps,no\n"), "accepted"),
    Case("ingest infinite revenue", lambda c: _ingest(
        c, "order_id,contacted,accepted,churned_30d,revenue_after\nA,yes,yes,no,inf\n"), "revenue_after"),
    Case("ingest garbage store", lambda c: ["feedback", "ingest", str(c.write(
        "o.csv", "order_id,contacted,accepted,churned_30d\nA,yes,no,no\n")), "--store",
                                            f"sqlite:///{c.write('s.db', bytes(range(256)) * 8)}", *c.args()],
         "is not an SQLite database"),
    Case("ingest unknown store scheme", lambda c: ["feedback", "ingest", str(c.write(
        "o.csv", "order_id,contacted,accepted,churned_30d\nA,yes,no,no\n")),
                                                   "--store", "mongo://x/y", *c.args()], "mongo"),
    Case("record not a decisions folder", lambda c: ["feedback", "record", str(c.tmp), "--store",
                                                     f"sqlite:///{c.tmp / 'store.db'}", *c.args()],
         "decisions.parquet"),
    Case("report on an empty store", lambda c: ["report", "--out", str(c.out), "--no-log", "--store",
                                                f"sqlite:///{c.tmp / 'empty.db'}", *c.args()], "store"),
    Case("data outcomes not a decisions folder", lambda c: ["data", "outcomes", "--decisions", str(c.tmp),
                                                            "--out", str(c.out / "o.csv")], "decisions"),
]

CASES = POLICY_CASES + CONFIG_CASES + DATA_CASES + MODEL_CASES + DECIDE_CASES + DRIFT_CASES + FEEDBACK_CASES

#: Known gaps being fixed (each must start passing: strict xfail fails the suite when it does).
KNOWN_GAPS = {
}


@pytest.fixture(scope="module")
def month(trained, month_files, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-month")
    path = folder / "month.parquet"
    pd.read_parquet(month_files["same"]).head(400).to_parquet(path, index=False)
    return path


def _integrity(db: Path) -> str:
    if not db.exists():
        return "absent"
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_the_corpus_is_large_and_named_uniquely():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[c.name]))
                                  if c.name in KNOWN_GAPS else c for c in CASES], ids=[c.name for c in CASES])
def test_hostile(case: Case, trained, month, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    ctx = Ctx(tmp_path, trained, month)
    mlflow_db = Path(trained.uri.removeprefix("sqlite:///"))
    argv = case.argv(ctx)
    res = CliRunner().invoke(app, argv)
    text = res.output
    assert "Traceback" not in text, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == case.code, f"exit {res.exit_code}: {text}"
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text
    assert case.expect in errors[0], errors[0]
    assert "hunter2" not in text and "s3cr3t" not in text
    if case.no_output:
        assert not ctx.out.exists() or not any(ctx.out.iterdir()), sorted(p.name for p in ctx.out.rglob("*"))
    assert not list(tmp_path.rglob(".staging-*")) and not list(tmp_path.rglob("*.tmp"))
    assert _integrity(mlflow_db) == "ok"
    assert _integrity(tmp_path / "store.db") in ("ok", "absent")
