"""`retain serve` started for real (uvicorn in a subprocess on a free local port): happy path, auth, bad
payloads, contact rules across requests, recording drained on SIGTERM, hot reload of policies and model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, store, *, extra: list[str] = (), env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.policies = root / "policies"
        if not self.policies.exists():
            shutil.copytree(ROOT / "policies", self.policies)
        self.db = root / "serve.db"
        self.log = root / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "engine.cli.main", "serve", "--port", str(self.port), *store.args(),
               "--policies", str(self.policies), "--store", f"sqlite:///{self.db}", *extra]
        self._log = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "RETAIN_API_TOKEN": TOKEN, **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.log.read_text()[-3000:]}")

    def post(self, rows, headers=AUTH, **kw) -> httpx.Response:
        return httpx.post(self.url + "/v1/decisions", json={"subscribers": rows}, headers=headers, timeout=60, **kw)

    def ready(self) -> dict:
        return httpx.get(self.url + "/readyz", timeout=10).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def rows_of(path: Path, start: int, n: int) -> list[dict]:
    import pandas as pd

    df = pd.read_parquet(path).drop(columns=["churn", "churn_reason"]).iloc[start:start + n]
    return json.loads(df.to_json(orient="records"))


def wait_for(pred, timeout: float = 30.0, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """A served copy of the trained store (this module moves its champion alias)."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(trained.root / "mlruns", root / "mlruns")
    shutil.copy(trained.config, root / "retain.yaml")
    store = type(trained)(root, root / "retain.yaml")  # the conftest Store, pointing at the copy
    srv = Server(root, store, extra=["--poll-seconds", "0.5", "--flush-seconds", "0.2"])
    srv.store = store
    yield srv
    srv.stop()


FIELDS = {"subscriber_id", "churn_probability", "risk_grade", "reason", "value_tier", "offer_id", "channel", "message",
          "status", "rule_id", "matched_rules", "model_version", "policy_hash", "decision_id"}


def test_happy_path_and_probes(server, month_files):
    rows = rows_of(month_files["same"], 0, 40)
    r = server.post(rows)
    assert r.status_code == 200, r.text
    out = r.json()["decisions"]
    assert [d["subscriber_id"] for d in out] == [row["subscriber_id"] for row in rows]
    for d in out:
        assert set(d) >= FIELDS
        assert 0 <= d["churn_probability"] <= 1
        assert d["model_version"] == "1"
        assert d["decision_id"] == f"{d['decision_run']}/{d['subscriber_id']}"
        assert isinstance(d["matched_rules"], list)
    assert {d["status"] for d in out} & {"offer", "control", "not_worth_it", "no_offer", "blocked"}
    offered = [d for d in out if d["status"] == "offer"]
    assert offered and all(d["order_id"] and d["offer_id"] and d["channel"] for d in offered)
    # one row: the same function, the same answer for the same subscriber's grade and probability
    single = server.post(rows[:1]).json()["decisions"][0]
    assert single["churn_probability"] == out[0]["churn_probability"]
    assert single["risk_grade"] == out[0]["risk_grade"]

    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = server.ready()
    assert ready["ready"] and ready["model_version"] == "1" and len(ready["policy_hash"]) == 64
    assert ready["last_reload_error"] is None
    metrics = httpx.get(server.url + "/metrics").text
    assert 'retain_http_requests_total{code="200",method="POST",route="/v1/decisions"}' in metrics
    assert "retain_http_request_duration_seconds_bucket" in metrics
    assert 'retain_decisions_total{status="offer"}' in metrics
    docs = httpx.get(server.url + "/openapi.json").json()
    body = docs["paths"]["/v1/decisions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/DecisionRequest"}
    schemas = docs["components"]["schemas"]
    row = schemas[schemas["DecisionRequest"]["properties"]["subscribers"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert {"subscriber_id", "arpu_m0", "plan"} <= set(row["properties"])  # every schema field, with its meaning
    assert row["properties"]["arpu_m0"]["description"]
    assert "decisions" in schemas["DecisionResponse"]["properties"]
    assert "S0000042" in json.dumps(docs)  # example payload
    assert httpx.get(server.url + "/docs").status_code == 200


def test_auth(server, month_files):
    rows = rows_of(month_files["same"], 100, 1)
    assert server.post(rows, headers={}).status_code == 401
    assert server.post(rows, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert server.post(rows, headers={"Authorization": TOKEN}).status_code == 401
    r = server.post(rows, headers={})
    assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]
    assert server.post(rows).status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200  # probes need no token


def _clean(text: str, server) -> None:
    assert "Traceback" not in text and "File \"" not in text
    assert str(server.root) not in text and str(ROOT) not in text and "/tmp" not in text


@pytest.mark.parametrize("change, field, words", [
    (lambda r: r.pop("arpu_m0"), "subscribers[0].arpu_m0", "required"),
    (lambda r: r.update(arpu_m0="lots"), "subscribers[0].arpu_m0", "number"),
    (lambda r: r.update(arpu_m0=-5), "subscribers[0].arpu_m0", "greater than or equal"),
    (lambda r: r.update(plan="gold"), "subscribers[0].plan", "prepaid_basic"),
    (lambda r: r.update(tenure_months=3.5), "subscribers[0].tenure_months", "integer"),
    (lambda r: r.update(household={"size": 3}), "subscribers[0].household", "single value"),
])
def test_bad_rows_are_422_naming_the_field(server, month_files, change, field, words):
    row = rows_of(month_files["same"], 200, 1)[0]
    change(row)
    r = server.post([row])
    assert r.status_code == 422, r.text
    problems = r.json()["detail"]
    assert any(p["field"] == field and words in p["problem"] for p in problems), problems
    _clean(r.text, server)


def test_bad_payloads(server, month_files):
    rows = rows_of(month_files["same"], 300, 2)
    cases = [
        httpx.post(server.url + "/v1/decisions", content=b"{not json", headers={**AUTH, "content-type":
                                                                                 "application/json"}),
        httpx.post(server.url + "/v1/decisions", json={"rows": rows}, headers=AUTH),
        server.post([]),
        server.post([rows[0], dict(rows[0])]),  # the same subscriber twice: the schema's uniqueness check
        httpx.post(server.url + "/v1/decisions", content=b"", headers=AUTH),
    ]
    for r in cases:
        assert r.status_code == 422, r.text
        _clean(r.text, server)
    assert cases[0].json()["detail"][0] == {"field": "body", "problem": "body is not valid JSON"}
    assert cases[1].json()["detail"][0]["field"] == "subscribers"
    assert cases[2].json()["detail"][0]["field"] == "subscribers"
    assert "subscriber_id" in cases[3].text and "duplicate" in cases[3].text
    assert cases[4].json()["detail"] == [{"field": "body", "problem": 'body is missing: send {"subscribers": [...]}'}]
    wrong_method = httpx.get(server.url + "/v1/decisions", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    too_many = server.post([rows[0]] * 1001)
    assert too_many.status_code in (413, 422)
    big = httpx.post(server.url + "/v1/decisions", content=b"x" * (3 * 1024 * 1024),
                     headers={**AUTH, "content-type": "application/json"})
    assert big.status_code == 413 and "larger than" in big.json()["error"]
    # the service still answers after all that
    assert server.post(rows[:1]).status_code == 200


def test_contacted_once_a_day_and_recorded(server, month_files):
    rows = rows_of(month_files["same"], 400, 200)
    first = {d["subscriber_id"]: d for d in server.post(rows).json()["decisions"]}
    outbound = {"sms", "outbound_call", "voice_bot", "vip_manager"}
    contacted = [s for s, d in first.items() if d["status"] == "offer" and d["channel"] in outbound]
    assert contacted, "expected some outbound offers"
    again = {d["subscriber_id"]: d for d in server.post([r for r in rows if r["subscriber_id"] in contacted])
             .json()["decisions"]}
    for s in contacted:
        d = again[s]
        assert not (d["status"] == "offer" and d["channel"] in outbound), d
    assert any(d["blocked_reason"] == "already contacted today" for d in again.values())
    # recorded in the store, in the tables outcomes are ingested against
    engine = sa.create_engine(f"sqlite:///{server.db}")

    def stored():
        with engine.connect() as c:
            runs = {first[contacted[0]]["decision_run"], again[contacted[0]]["decision_run"]}
            n = c.execute(sa.text("SELECT count(*) FROM decisions WHERE decision_run IN (:a, :b)"),
                          {"a": runs.pop(), "b": runs.pop()}).scalar()
            return n == len(rows) + len(contacted)

    wait_for(stored)
    with engine.connect() as c:
        used = dict(c.execute(sa.text("SELECT item, used FROM serve_allowance")).all())
        orders = c.execute(sa.text("SELECT count(*) FROM work_orders WHERE order_id = :o"),
                           {"o": first[contacted[0]]["order_id"]}).scalar()
    assert used["budget"] > 0 and orders == 1


def test_hot_reload_policies_and_model(server, month_files):
    before = server.ready()
    rule_file = server.policies / "rules" / "preventive.yaml"
    original = rule_file.read_text()
    rule_file.write_text(original.replace("here are 500 loyalty points", "here are 600 loyalty points"))
    after = wait_for(lambda: (r := server.ready())["policy_hash"] != before["policy_hash"] and r)
    assert after["last_reload_error"] is None and after["reloads"] >= 1
    d = server.post(rows_of(month_files["same"], 700, 1)).json()["decisions"][0]
    assert d["policy_hash"] == after["policy_hash"]

    rule_file.write_text(original + "\n  - id: [broken\n")  # a failed load keeps serving the old set
    broken = wait_for(lambda: (r := server.ready())["last_reload_error"] and r)
    assert broken["policy_hash"] == after["policy_hash"]
    assert str(server.root) not in json.dumps(broken)
    assert server.post(rows_of(month_files["same"], 701, 1)).status_code == 200
    assert "retain_reload_failing 1.0" in httpx.get(server.url + "/metrics").text
    rule_file.write_text(original)
    fixed = wait_for(lambda: (r := server.ready())["last_reload_error"] is None and r)
    assert fixed["policy_hash"] == before["policy_hash"]

    # the champion alias moves to a new version (same artefact, registered again): followed in the background
    import mlflow
    from mlflow import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.store.uri)  # MLflow resolves a logged-model source through the global URI
    try:
        client = MlflowClient(tracking_uri=server.store.uri, registry_uri=server.store.uri)
        v1 = client.get_model_version("churn", "1")
        v2 = client.create_model_version("churn", v1.source, run_id=v1.run_id)
        client.set_registered_model_alias("churn", "champion", v2.version)
    finally:
        mlflow.set_tracking_uri(previous)
    moved = wait_for(lambda: (r := server.ready())["model_version"] == str(v2.version) and r, timeout=60)
    assert moved["last_reload_error"] is None
    r = server.post(rows_of(month_files["same"], 702, 1))
    assert r.status_code == 200, (r.text, server.log.read_text()[-4000:])
    d = r.json()["decisions"][0]
    assert d["model_version"] == str(v2.version)
    log = server.log.read_text()
    assert "reload failed" in log and f"model version 1 -> {v2.version}" in log


def test_sigterm_drains_every_decision(trained, month_files, tmp_path):
    """Nothing is written before shutdown (long flush interval); SIGTERM must still record every decision."""
    srv = Server(tmp_path, trained, extra=["--flush-seconds", "120", "--poll-seconds", "0"])
    try:
        answered, decided = [], []
        for i in range(6):
            r = srv.post(rows_of(month_files["same"], 1000 + 10 * i, 10))
            assert r.status_code == 200
            answered += [d["decision_id"] for d in r.json()["decisions"]]
            decided += r.json()["decisions"]
        assert srv.ready()["recorder"]["written_decisions"] == 0
    finally:
        code = srv.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is "terminated by SIGTERM"
    assert code in (0, -signal.SIGTERM), srv.log.read_text()[-2000:]
    assert "Application shutdown complete" in srv.log.read_text()
    engine = sa.create_engine(f"sqlite:///{srv.db}")
    with engine.connect() as c:
        stored = {f"{r}/{s}" for r, s in c.execute(sa.text("SELECT decision_run, subscriber_id FROM decisions"))}
        allowance = c.execute(sa.text("SELECT count(*) FROM serve_allowance")).scalar()
    assert stored == set(answered)
    assert allowance > 0
    assert "60 decisions recorded" in srv.log.read_text()

    # outcomes ingest against service decisions like against batch runs: by order id, or run + subscriber
    from engine.feedback.ingest import ingest

    offer = next(d for d in decided if d["order_id"])
    other = next(d for d in decided if not d["order_id"])
    pd.DataFrame([
        {"order_id": offer["order_id"], "contacted": "yes", "accepted": "no", "churned_30d": "no"},
        {"subscriber_id": other["subscriber_id"], "decision_run": other["decision_run"], "contacted": "no",
         "accepted": "no", "churned_30d": "yes"},
    ]).to_csv(tmp_path / "outcomes.csv", index=False)
    result = ingest(trained.settings(), tmp_path / "outcomes.csv", url=f"sqlite:///{srv.db}", strict=True)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM outcomes")).scalar() == 2, result


def test_a_store_fault_is_a_500_without_details_and_nothing_answered_is_lost(trained, month_files, tmp_path):
    """The contact history cannot be read (its table moved away under the service): 500 with a generic message,
    the details in the log, the service alive; once the table is back, requests succeed again and every
    decision answered is recorded."""
    srv = Server(tmp_path, trained, extra=["--flush-seconds", "0.2", "--poll-seconds", "0"])
    engine = sa.create_engine(f"sqlite:///{srv.db}")
    rows = rows_of(month_files["same"], 1200, 3)
    try:
        first = srv.post(rows[:1])
        assert first.status_code == 200, first.text
        with engine.begin() as c:
            c.exec_driver_sql("ALTER TABLE serve_contacts RENAME TO serve_contacts_away")
        broken = srv.post(rows[1:2])
        assert broken.status_code == 500
        assert broken.json() == {"error": "internal error; see the service log"}
        _clean(broken.text, srv)
        assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}
        with engine.begin() as c:
            c.exec_driver_sql("ALTER TABLE serve_contacts_away RENAME TO serve_contacts")
        last = srv.post(rows[2:3])
        assert last.status_code == 200, last.text
        answered = {d["decision_id"] for r in (first, last) for d in r.json()["decisions"]}

        def recorded() -> bool:
            with engine.connect() as c:
                rows_ = c.execute(sa.text("SELECT decision_run, subscriber_id FROM decisions")).all()
            return {f"{r}/{s}" for r, s in rows_} == answered

        wait_for(recorded, timeout=60)
    finally:
        srv.stop()
    log = srv.log.read_text()
    assert "decision failed" in log and "serve_contacts" in log  # the details are in the log, not the answer


def test_allowance_is_kept_in_the_store_across_restarts(trained, month_files, tmp_path):
    """Channel capacity is a daily allowance: used up by one process, still used up after a restart; risk grades
    follow the thresholds even when the batch is configured to grade by capacity."""
    from fastapi.testclient import TestClient

    from engine.serve.app import ServeConfig, create_app

    cfg_file = tmp_path / "retain.yaml"
    cfg = yaml.safe_load(trained.config.read_text())
    cfg["channels"] = {ch: {"cost": c, "daily_capacity": 2} for ch, c in
                       {"vip_manager": 12.0, "outbound_call": 4.0, "voice_bot": 0.4, "sms": 0.05,
                        "app_popup": 0.01, "front_desk": 0.5}.items()}
    cfg["risk_grades"] = {"capacity_high": 1, "high": 0.5, "medium": 0.25}  # the batch grades by capacity
    cfg_file.write_text(yaml.safe_dump(cfg))
    serve_cfg = ServeConfig(config=str(cfg_file), tracking_uri=trained.uri, store=f"sqlite:///{tmp_path / 's.db'}",
                            policies=str(ROOT / "policies"), poll_seconds=0, flush_seconds=0.05)
    rows = rows_of(month_files["same"], 1500, 100)

    def count(decisions, out):
        for d in decisions:
            if d["status"] == "offer":
                out[d["channel"]] = out.get(d["channel"], 0) + 1
        return out

    first: dict[str, int] = {}
    with TestClient(create_app(serve_cfg, token="")) as client:
        for row in rows[:40]:  # one request per subscriber, as the front desk sends them
            count(client.post("/v1/decisions", json={"subscribers": [row]}).json()["decisions"], first)
    assert first and all(n <= 2 for n in first.values()), first
    assert max(first.values()) == 2  # some channel was used up
    with TestClient(create_app(serve_cfg, token="")) as client:  # a restart: what is left comes from the store
        many = client.post("/v1/decisions", json={"subscribers": rows[40:]}).json()["decisions"]
        second = count(many, {})
    # the service grades by thresholds, never by capacity within a request
    assert [d["risk_grade"] == "high" for d in many] == [d["churn_probability"] >= 0.5 for d in many]
    assert sum(d["risk_grade"] == "high" for d in many) > 1
    for ch, n in second.items():
        assert first.get(ch, 0) + n <= 2, (first, second)


def test_history_from_the_store_feeds_the_contact_rules(tmp_path):
    """A declined offer recorded as an outcome starts the cool-down; a contact today blocks a second one."""
    import datetime as dt

    from engine.config import ContactRules, Settings
    from engine.decision.contact import blocked_reasons
    from engine.feedback.store import open_store
    from engine.serve.decider import SAME_DAY_REASON, serving_settings
    from engine.serve.ledger import Ledger, contacts_of

    store = open_store(url=f"sqlite:///{tmp_path / 'h.db'}")
    ledger = Ledger(store, budget=10.0, capacity={"sms": 3, "app_popup": None})
    today = dt.date(2026, 11, 24)
    with store.transaction() as c:
        for run, day, sub in (("r1", "2026-11-10", "A"), ("r2", "2026-11-24", "B")):
            c.execute(sa.text("INSERT INTO decision_runs (decision_run, decided_on, recorded_at, subscribers, offers, "
                              "control) VALUES (:r, :d, :d, 1, 1, 0)"), {"r": run, "d": day})
            c.execute(sa.text("INSERT INTO decisions (decision_run, subscriber_id, status, control) "
                              "VALUES (:r, :s, 'offer', 0)"), {"r": run, "s": sub})
        c.execute(sa.text("INSERT INTO outcomes (decision_run, subscriber_id, contacted, accepted, ingested_at) "
                          "VALUES ('r1', 'A', 1, 0, 'x')"))
        orders = {"sms": pd.DataFrame({"order_id": ["r1-1"], "subscriber_id": ["A"], "offer_id": ["discount_15"]})}
        ledger.write(c, [(dt.date(2026, 11, 10), "r1", {"budget": 4.0, "channel:sms": 1},
                          (contacts_of("r1", dt.date(2026, 11, 10), orders)))])
        orders = {"app_popup": pd.DataFrame({"order_id": ["r2-1"], "subscriber_id": ["B"], "offer_id": ["bonus_data"]})}
        ledger.write(c, [(today, "r2", {"budget": 4.0, "channel:app_popup": 1},
                          (contacts_of("r2", today, orders)))])
    # decided but not yet written: seen by the next decision all the same
    ledger.spend(today, {"budget": 3.0, "channel:sms": 2}, "r3",
                 contacts_of("r3", today, {"sms": pd.DataFrame({"order_id": ["r3-1"], "subscriber_id": ["C"],
                                                                "offer_id": ["care_message"]})}))
    assert ledger.left(today) == (3.0, {"sms": 1, "app_popup": None})
    history = ledger.history(["A", "B", "C", "D"], today, 30)
    assert dict(zip(history["subscriber_id"], history["outcome"], strict=True)) == {
        "A": "declined", "B": "pending", "C": "pending"}
    ids = pd.Series(["A", "B", "C", "D"])
    rules = serving_settings(Settings()).contact  # the service's: one contact a day unless configured
    assert rules.max_contacts_per_day == 1
    reasons = blocked_reasons(ids, pd.Series([False] * 4), history, today, rules)
    assert reasons[0].startswith("cool-down")
    assert reasons[1] == reasons[2] == SAME_DAY_REASON == "already contacted today"  # B inbound, C sms, today
    assert reasons[3] == ""
    assert blocked_reasons(ids, pd.Series([False] * 4), history, today, ContactRules())[1] == "", \
        "without a daily limit (the batch default) a contact today alone blocks nothing"
    # once written, the contact is read from the store: once, not also from what waited for the writer
    r3 = (today, "r3", {"budget": 3.0, "channel:sms": 2},
          (contacts_of("r3", today, {"sms": pd.DataFrame({"order_id": ["r3-1"], "subscriber_id": ["C"],
                                                                      "offer_id": ["care_message"]})})))
    with store.transaction() as c:
        ledger.write(c, [r3])
    ledger.written([r3])
    assert ledger.history(["C"], today, 30)["subscriber_id"].tolist() == ["C"]
    assert ledger.left(today) == (3.0, {"sms": 1, "app_popup": None})


def test_cli_refuses_a_missing_model_in_one_line(trained, runner):
    from engine.cli.main import app

    res = runner.invoke(app, ["serve", "--model", "99", *trained.args()])
    assert res.exit_code == 2
    assert "no version 99" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_two_workers_share_metrics_and_drain(trained, month_files, tmp_path):
    """--workers 2: both workers answer, /metrics sums them, SIGTERM drains both."""
    srv = Server(tmp_path, trained, extra=["--workers", "2", "--flush-seconds", "60", "--poll-seconds", "0"])
    try:
        wait_for(lambda: srv.log.read_text().count("Application startup complete") >= 2, timeout=120)
        answered = set()
        for i in range(20):
            r = srv.post(rows_of(month_files["same"], 2000 + 5 * i, 5))
            assert r.status_code == 200
            answered |= {d["decision_id"] for d in r.json()["decisions"]}
        metrics = httpx.get(srv.url + "/metrics").text
        line = next(x for x in metrics.splitlines()
                    if x.startswith('retain_http_requests_total{code="200",method="POST",route="/v1/decisions"}'))
        assert float(line.split()[-1]) == 20
    finally:
        srv.stop()
    engine = sa.create_engine(f"sqlite:///{srv.db}")
    with engine.connect() as c:
        stored = {f"{r}/{s}" for r, s in c.execute(sa.text("SELECT decision_run, subscriber_id FROM decisions"))}
    assert stored == answered


def test_claims_keep_limits_across_workers(tmp_path):
    """Two workers' ledgers on one store: guarded claims never take more than the day's limit."""
    import datetime as dt

    from engine.feedback.store import open_store
    from engine.serve.ledger import Ledger, contacts_of

    store = open_store(url=f"sqlite:///{tmp_path / 'c.db'}")
    a = Ledger(store, budget=10.0, capacity={"sms": 3, "app_popup": None})
    b = Ledger(store, budget=10.0, capacity={"sms": 3, "app_popup": None})
    day = dt.date(2026, 11, 24)
    orders = {"sms": pd.DataFrame({"order_id": ["r1-1"], "subscriber_id": ["A"], "offer_id": ["x"]})}
    assert a.claim(day, {"budget": 4.0, "channel:sms": 2, "channel:app_popup": 5}, contacts_of("r1", day, orders))
    assert not b.claim(day, {"budget": 4.0, "channel:sms": 2})  # sms would be 4 > 3: nothing taken
    assert b.left(day) == (6.0, {"sms": 1, "app_popup": None})  # b reads what a took
    assert b.claim(day, {"budget": 6.0, "channel:sms": 1})
    assert not a.claim(day, {"budget": 0.5})
    a.refresh(day)
    assert a.left(day) == (0.0, {"sms": 0, "app_popup": None})
    assert list(b.history(["A"], day, 30)["subscriber_id"]) == ["A"]  # a's contact, seen by b at once
