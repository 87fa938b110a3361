"""`retain workbench`: the marketers' web application over a policy folder (FastAPI, Jinja2, htmx).

Pages: the policy set as decision tables (/), a rule or offer in a form and a YAML pane (/edit/rules,
/edit/offers), a whole file (/file), test cases (/tests), simulation against the saved set (/simulate),
explain one subscriber (/explain), save with the diff (/save) and sign-off (/signoff). Everything the
pages compute comes from the policy package's public functions, called as `retain policy ...` calls
them. Errors are shown as one line, without tracebacks or server paths.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import RetainError
from engine.vocabulary import CHANNELS, STAGES
from engine.workbench import charts, tables
from engine.workbench.editing import FormState, apply_form, apply_yaml, form_values, map_problems, replace_item
from engine.workbench.workspace import (
    SIGNOFF_FILE,
    WorkbenchError,
    Workspace,
    dump,
    flow_text,
    items_of,
    load_text,
)

log = logging.getLogger("retain.workbench")
HERE = Path(__file__).resolve().parent
TOKEN_ENV = "RETAIN_WORKBENCH_TOKEN"
COOKIE = "retain_workbench"
TEST_CASES_FILE = "tests/workbench_cases.yaml"
KIND_WORDS = {"rules": "rule", "offers": "offer"}


# ---------------------------------------------------------------------------------------------
# The population: the --input table, else a synthetic one (as `retain policy validate` does)
# ---------------------------------------------------------------------------------------------
class Population:
    def __init__(self, input_path: str | Path | None, settings: Any) -> None:
        self.path = Path(input_path) if input_path else None
        self.settings = settings
        self._frame: pd.DataFrame | None = None
        self._mtime: float | None = None
        self._synthetic: dict[tuple, pd.DataFrame] = {}
        if self.path is not None:
            self.table()  # an unreadable --input is refused at start, with one line

    @property
    def label(self) -> str:
        if self.path is None:
            from engine.policy.synthetic import POPULATION_SEED, POPULATION_SIZE

            return f"a synthetic population of {POPULATION_SIZE:,} subscribers (seed {POPULATION_SEED})"
        n = len(self._frame) if self._frame is not None else 0
        return f"{self.path.name} ({n:,} subscribers)"

    def table(self) -> pd.DataFrame | None:
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            raise WorkbenchError(f"input table '{self.path.name}' cannot be read") from None
        if self._frame is None or mtime != self._mtime:
            from engine.data.io import read_table

            self._frame = read_table(self.path, what="decisions table")
            self._mtime = mtime
        return self._frame

    def frame(self, policy_set: Any) -> pd.DataFrame:
        """The subscribers to simulate and explain on; the policy set's declared attributes are required."""
        table = self.table()
        if table is not None:
            policy_set.require_declared(table.columns)
            return table
        from engine.policy.synthetic import synthetic_population

        key = tuple(sorted((n, a.kind, tuple(a.values or ()), a.minimum, a.maximum)
                           for n, a in policy_set.declared.items()))
        if key not in self._synthetic:
            from engine.policy.synthetic import POPULATION_SEED, POPULATION_SIZE

            self._synthetic[key] = synthetic_population(policy_set, POPULATION_SIZE, POPULATION_SEED, self.settings)
        return self._synthetic[key]

    def for_validation(self, policy_set: Any) -> Any:
        from engine.policy import validate as checks

        table = self.table()
        if table is not None:
            return checks.from_table(policy_set, table, str(self.path.name))
        return checks.synthetic(policy_set, self.settings)


# ---------------------------------------------------------------------------------------------
@dataclass
class Workbench:
    ws: Workspace
    population: Population
    settings: Any
    token: str | None
    allowed_hosts: set[str] | None


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), b"retain-workbench-session-v1", hashlib.sha256).hexdigest()


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def create_app(policies: str | Path = "policies", *, input_path: str | Path | None = None, settings: Any = None,
               token: str | None = None, allowed_hosts: set[str] | None = None, display: str | None = None) -> FastAPI:
    """The workbench over `policies` (a working copy is made at once). `token` (default: the
    RETAIN_WORKBENCH_TOKEN variable) makes every page ask for it first."""
    if settings is None:
        from engine.config import load_settings

        settings = load_settings()
    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    population = Population(input_path, settings)
    ws = Workspace(policies, display=display, settings=settings, population=population.for_validation)
    wb = Workbench(ws, population, settings, token, allowed_hosts)
    app = FastAPI(title="retain workbench", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.wb = wb
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(channels=list(CHANNELS), stages=list(STAGES), signoff_file=SIGNOFF_FILE)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def scrub(text: str) -> str:
        return one_line(ws.scrub(str(text)))

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("error", None)
        ctx.setdefault("notice", None)
        ctx.update(request=request, display=ws.display, changed=ws.changed_files(), token=bool(wb.token),
                   population=population.label)
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def fragment(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        ctx.update(request=request, display=ws.display)
        return templates.TemplateResponse(request, name, ctx)

    def error_response(request: Request, message: str, status: int) -> Response:
        message = scrub(message)
        if _is_htmx(request):
            return HTMLResponse(f'<p class="error" role="alert">{Markup.escape(message)}</p>', status_code=200)
        try:
            return page(request, "error.html", status=status, error=message)
        except Exception:  # the error page itself failed: still one line
            return PlainTextResponse(f"error: {message}", status_code=status)

    # -----------------------------------------------------------------------------------------
    @app.exception_handler(RetainError)
    async def _retain_error(request: Request, exc: RetainError) -> Response:
        return error_response(request, str(exc), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        text = "page not found" if exc.status_code == 404 else str(exc.detail)
        return error_response(request, text, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error_response(request, f"bad request: {where} {first.get('msg', '')}".strip(), 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("workbench: unexpected error on %s", request.url.path)
        return error_response(request, f"unexpected error ({type(exc).__name__}); the details are in the "
                                       f"workbench's log", 500)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        if wb.allowed_hosts is not None:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in wb.allowed_hosts:
                return PlainTextResponse("error: unknown host name for this workbench", status_code=400)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
                return PlainTextResponse("error: cross-site request refused", status_code=403)
        path = request.url.path
        if wb.token and not (path.startswith("/static/") or path in ("/login", "/healthz")):
            cookie = request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(cookie.encode(), _session_value(wb.token).encode()):
                if _is_htmx(request):
                    return Response(status_code=401, headers={"HX-Redirect": "/login"})
                target = path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    # -----------------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        if not wb.token:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", next=_safe_next(next))

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token") or "")
        target = _safe_next(str(form.get("next") or "/"))
        if not wb.token:
            return RedirectResponse("/", status_code=303)
        if not hmac.compare_digest(given.encode(), wb.token.encode()):
            time.sleep(0.3)
            return page(request, "login.html", status=401, next=target, error="wrong token")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, _session_value(wb.token), httponly=True, samesite="strict", path="/")
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -----------------------------------------------------------------------------------------
    # Overview: decision tables, offers, declared attributes, arbitration
    # -----------------------------------------------------------------------------------------
    def overview(request: Request, notice: str | None = None, error: str | None = None,
                 status: int = 200) -> Response:
        with ws.lock:
            check = ws.check()
            files = []
            arbitration = None
            arbitration_file = None
            for rel in ws.policy_files():
                text = ws.read(rel)
                try:
                    data = load_text(text)
                except WorkbenchError:
                    data = None
                files.append((rel, text, data))
                if isinstance(data, dict) and "arbitration" in data:
                    arbitration, arbitration_file = flow_text(data["arbitration"]), rel
            built = tables.build(files, check.problems, check.warnings, check.policy_set)
        ps = check.policy_set
        return page(request, "index.html", status=status, check=check, tables=built, arbitration=arbitration or "first",
                    arbitration_file=arbitration_file, policy_hash=ps.content_hash if ps else None,
                    policy_files=ws.policy_files(), test_files=ws.test_files(), notice=notice, error=error)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request, notice: str | None = None) -> Response:
        return await run_in_threadpool(overview, request, one_line(notice)[:300] if notice else None)

    @app.post("/arbitration")
    async def set_arbitration(request: Request) -> Response:
        form = await request.form()
        mode = str(form.get("mode") or "").strip()

        def work() -> Response:
            with ws.lock:
                target = None
                for rel in ws.policy_files():
                    data = load_text(ws.read(rel))
                    if isinstance(data, dict) and "arbitration" in data:
                        target = (rel, data)
                        break
                if target is None:
                    rel = "policy.yaml"
                    if rel in ws.files():
                        data = load_text(ws.read(rel))
                        if not isinstance(data, dict):
                            raise WorkbenchError("policy.yaml is not a mapping; edit it in its YAML pane")
                    else:
                        from ruamel.yaml.comments import CommentedMap

                        data = CommentedMap()
                    target = (rel, data)
                rel, data = target
                data["arbitration"] = mode
                ws.write(rel, dump(data))
            return RedirectResponse("/#arbitration", status_code=303)

        return await run_in_threadpool(work)

    # -----------------------------------------------------------------------------------------
    # Rule and offer editor
    # -----------------------------------------------------------------------------------------
    def _kind(kind: str) -> str:
        if kind not in KIND_WORDS:
            raise StarletteHTTPException(404)
        return kind

    def _index(raw: Any) -> int | None:
        text = str(raw if raw is not None else "").strip()
        if text in ("", "new"):
            return None
        if not text.isdigit():
            raise WorkbenchError(f"'{text}' is not an item number")
        return int(text)

    def _item(rel: str, kind: str, index: int | None) -> tuple[Any, Any]:
        data = ws.load(rel)
        items = items_of(data, kind)
        if index is not None and not 0 <= index < len(items):
            raise WorkbenchError(f"{ws.display}/{rel} has no {KIND_WORDS[kind]} number {index + 1}")
        return data, (items[index] if index is not None else None)

    def editor_state(kind: str, rel: str, index: int | None, item: Any, check: Any, text: str) -> FormState:
        values, rows = form_values(kind, item)
        state = FormState(values, rows)
        map_problems(check.problems + check.warnings, rel, text, kind, index, state)
        return state

    def editor(request: Request, kind: str, rel: str, index: int | None, notice: str | None = None,
               error: str | None = None) -> Response:
        with ws.lock:
            data, item = _item(rel, kind, index)
            text = ws.read(rel)
            check = ws.check()
        state = editor_state(kind, rel, index, item, check, text)
        pane = dump(item) if item is not None else _new_item_yaml(kind)
        ps = check.policy_set
        return page(request, "edit.html", kind=kind, word=KIND_WORDS[kind], rel=rel, index=index, state=state,
                    pane=pane, check=check, notice=notice, error=error,
                    offers=sorted(ps.offers) if ps else _offer_ids(),
                    attributes=sorted(ps.vocabulary) if ps else _attribute_names())

    def _offer_ids() -> list[str]:
        ids = []
        for rel in ws.policy_files():
            try:
                data = load_text(ws.read(rel))
            except WorkbenchError:
                continue
            ids += [str(o.get("id")) for o in items_of(data, "offers") if isinstance(o, dict) and o.get("id")]
        return sorted(ids)

    def _attribute_names() -> list[str]:
        from engine.data.attributes import DECISION_ATTRIBUTES

        return sorted(DECISION_ATTRIBUTES)

    @app.get("/edit/{kind}", response_class=HTMLResponse)
    async def edit(request: Request, kind: str, file: str, index: str = "new", notice: str | None = None) -> Response:
        return await run_in_threadpool(editor, request, _kind(kind), file, _index(index),
                                       one_line(notice)[:300] if notice else None)

    def candidate(kind: str, rel: str, index: int | None, build: Any) -> tuple[str, int, FormState, Any]:
        """(candidate file text, item index, form state with every message, check) for an edit."""
        data, item = _item(rel, kind, index)
        new_item, local = build(item)
        position = replace_item(data, kind, index, new_item)
        text = dump(data)
        values, rows = form_values(kind, new_item)
        state = FormState(values, rows, errors=dict(local))
        if local:
            return text, position, state, None
        check = ws.check_candidate({rel: text})
        map_problems(check.problems + check.warnings, rel, text, kind, position, state)
        return text, position, state, check

    def form_build(kind: str, form: dict[str, str]) -> Any:
        return lambda item: apply_form(kind, item, form)

    def yaml_build(form: dict[str, str]) -> Any:
        return lambda _item: (apply_yaml(form.get("yaml", "")), {})

    def field_names(kind: str, form: dict[str, str], state: FormState) -> list[str]:
        names = set(state.errors) | {k for k in form if k not in ("file", "index", "yaml")}
        names |= {"_item", "when", "then", "eligibility", "then_kind"}
        return sorted(names)

    @app.post("/edit/{kind}/check", response_class=HTMLResponse)
    async def edit_check(request: Request, kind: str) -> Response:
        kind = _kind(kind)
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            with ws.lock:
                _text, _pos, state, check = candidate(kind, form.get("file", ""), _index(form.get("index")),
                                                      form_build(kind, form))
            return fragment(request, "_field_errors.html", state=state, check=check,
                            names=field_names(kind, form, state))

        return await run_in_threadpool(work)

    @app.post("/edit/{kind}/apply")
    async def edit_apply(request: Request, kind: str) -> Response:
        kind = _kind(kind)
        form = {k: str(v) for k, v in (await request.form()).items()}
        source = form.get("source", "form")

        def work() -> Response:
            rel, index = form.get("file", ""), _index(form.get("index"))
            with ws.lock:
                build = yaml_build(form) if source == "yaml" else form_build(kind, form)
                try:
                    text, position, state, check = candidate(kind, rel, index, build)
                except WorkbenchError as exc:
                    return editor(request, kind, rel, index, error=str(exc))
                if check is None:  # values that are not YAML: nothing written, the form says where
                    first = next(iter(state.errors.values()))[0]
                    return editor(request, kind, rel, index, error=f"not applied: {first}")
                ws.write(rel, text)
            n = len(check.problems)
            notice = (f"applied to the working copy; {n} error{'s' if n != 1 else ''} to fix before saving" if n
                      else "applied to the working copy; the set is valid")
            return RedirectResponse(f"/edit/{kind}?file={quote(rel)}&index={position}&notice={quote(notice)}",
                                    status_code=303)

        return await run_in_threadpool(work)

    @app.post("/edit/{kind}/yaml-check", response_class=HTMLResponse)
    async def yaml_check(request: Request, kind: str) -> Response:
        kind = _kind(kind)
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            with ws.lock:
                try:
                    _t, _p, state, check = candidate(kind, form.get("file", ""), _index(form.get("index")),
                                                     yaml_build(form))
                except WorkbenchError as exc:
                    return fragment(request, "_problems.html", lines=[scrub(str(exc))], ok=False)
            lines = [m for ms in state.errors.values() for m in ms] + state.item_errors + state.elsewhere
            return fragment(request, "_problems.html", lines=lines, warnings=state.warnings, ok=not lines)

        return await run_in_threadpool(work)

    @app.post("/edit/{kind}/delete")
    async def edit_delete(request: Request, kind: str) -> Response:
        kind = _kind(kind)
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            rel, index = form.get("file", ""), _index(form.get("index"))
            with ws.lock:
                data, item = _item(rel, kind, index)
                if item is None:
                    raise WorkbenchError(f"no {KIND_WORDS[kind]} to delete")
                del items_of(data, kind)[index]
                ws.write(rel, dump(data))
            return RedirectResponse(f"/?notice={quote(f'{KIND_WORDS[kind]} deleted from the working copy')}",
                                    status_code=303)

        return await run_in_threadpool(work)

    # -----------------------------------------------------------------------------------------
    # A whole file in a YAML pane
    # -----------------------------------------------------------------------------------------
    @app.get("/file", response_class=HTMLResponse)
    async def file_page(request: Request, path: str, notice: str | None = None) -> Response:
        def work() -> Response:
            with ws.lock:
                text = ws.read(path)
                check = ws.check()
            mine = [p.text for p in check.problems + check.warnings if p.file == path]
            others = [p.text for p in check.problems if p.file != path]
            return page(request, "file.html", rel=path, text=text, mine=mine, others=others, notice=notice)

        return await run_in_threadpool(work)

    @app.post("/file/check", response_class=HTMLResponse)
    async def file_check(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            rel, text = form.get("file", ""), form.get("yaml", "")
            ws.path(rel)
            check = ws.check_candidate({rel: text})
            lines = [p.text for p in check.problems]
            return fragment(request, "_problems.html", lines=lines, ok=not lines,
                            warnings=[p.text for p in check.warnings if p.file == rel])

        return await run_in_threadpool(work)

    @app.post("/file/apply")
    async def file_apply(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            rel, text = form.get("file", ""), form.get("yaml", "").replace("\r\n", "\n")
            load_text(text, f"{ws.display}/{rel}")  # refuse text that is not YAML at all
            with ws.lock:
                ws.path(rel)
                ws.write(rel, text if text.endswith("\n") else text + "\n")
            return RedirectResponse(f"/file?path={quote(rel)}&notice={quote('applied to the working copy')}",
                                    status_code=303)

        return await run_in_threadpool(work)

    # -----------------------------------------------------------------------------------------
    # Test cases
    # -----------------------------------------------------------------------------------------
    def run_tests() -> dict[str, Any]:
        from engine.decision.whatif import run_cases
        from engine.errors import PolicyError
        from engine.policy import PolicyEngine
        from engine.policy.testing import load_cases

        with ws.lock:
            check = ws.check(warnings=False)
            if not check.ok:
                return {"problems": [p.text for p in check.problems], "results": [], "what": "policy set"}
            try:
                cases = load_cases(ws.work, check.policy_set, settings=wb.settings)
            except PolicyError as exc:
                return {"problems": [scrub(p) for p in exc.problems], "results": [], "what": "test cases"}
            engine = PolicyEngine(check.policy_set)
            try:
                results = run_cases(engine, cases)
            finally:
                _close(engine)
        for r in results:
            r.where = scrub(r.where)
        return {"problems": [], "results": results, "what": ""}

    @app.get("/tests", response_class=HTMLResponse)
    async def tests_page(request: Request, notice: str | None = None, subscriber: str = "") -> Response:
        outcome = await run_in_threadpool(run_tests)
        return page(request, "tests.html", outcome=outcome, notice=notice, subscriber=subscriber,
                    has_input=population.path is not None)

    @app.post("/tests/run", response_class=HTMLResponse)
    async def tests_run(request: Request) -> Response:
        outcome = await run_in_threadpool(run_tests)
        return fragment(request, "_test_results.html", outcome=outcome)

    def explain_one(subscriber: str) -> tuple[Any, dict[str, Any], Any]:
        from engine.decision.whatif import explain
        from engine.policy import PolicyEngine
        from engine.policy.explain import find_subscriber

        subscriber = subscriber.strip()
        if not subscriber:
            raise WorkbenchError("give a subscriber id")
        with ws.lock:
            check = ws.check(warnings=False)
            if not check.ok:
                raise WorkbenchError(f"the working copy has {len(check.problems)} error(s); fix them first "
                                     f"(first: {check.problems[0].text})")
            ps = check.policy_set
            frame = population.frame(ps)
            record = find_subscriber(frame, subscriber, source=population.label)
            engine = PolicyEngine(ps)
            try:
                ex = explain(engine, record)
            finally:
                _close(engine)
        return ex, record, ps

    @app.post("/tests/preview", response_class=HTMLResponse)
    async def tests_preview(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            ex, record, ps = explain_one(form.get("subscriber", ""))
            case = case_from(record, ex, ps)
            return fragment(request, "_case_preview.html", case=case, case_yaml=dump(case_yaml(case)))

        return await run_in_threadpool(work)

    @app.post("/tests/add")
    async def tests_add(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            ex, record, ps = explain_one(form.get("subscriber", ""))
            case = case_from(record, ex, ps)
            name = one_line(form.get("name") or case["name"])
            case["name"] = name or case["name"]
            expect: dict[str, Any] = {}
            offer = (form.get("expect_offer") or "").strip()
            channel = (form.get("expect_channel") or "").strip()
            if form.get("expect_kind") == "suppressed":
                expect["suppressed"] = True
            elif form.get("expect_kind") == "no_offer" or not offer:
                expect["no_offer"] = True
            else:
                expect["offer"] = offer
                if channel:
                    expect["channel"] = channel
            case["expect"] = expect
            with ws.lock:
                add_case(case)
            notice = f"case '{case['name']}' added to {ws.display}/{TEST_CASES_FILE}"
            return RedirectResponse(f"/tests?notice={quote(notice)}", status_code=303)

        return await run_in_threadpool(work)

    def add_case(case: dict[str, Any]) -> None:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        rel = TEST_CASES_FILE
        if rel in ws.files():
            data = load_text(ws.read(rel))
        else:
            data = load_text("# Test cases added in `retain workbench` from subscribers of the input table.\n"
                             "description: Cases added from real subscribers in the workbench\n\ntests: []\n")
        tests = data.get("tests") if isinstance(data, dict) else None
        if not isinstance(tests, list):
            raise WorkbenchError(f"{ws.display}/{rel} has no `tests:` list; fix it in its YAML pane")
        if isinstance(tests, CommentedSeq) and tests.fa.flow_style():
            tests.fa.set_block_style()
        entry = CommentedMap()
        entry["name"] = case["name"]
        sub = CommentedMap(case["subscriber"])
        entry["subscriber"] = sub
        exp = CommentedMap(case["expect"])
        exp.fa.set_flow_style()
        entry["expect"] = exp
        tests.append(entry)
        ws.write(rel, dump(data))

    # -----------------------------------------------------------------------------------------
    # Simulation
    # -----------------------------------------------------------------------------------------
    def simulate_now() -> dict[str, Any]:
        from engine.decision.whatif import simulate
        from engine.policy import PolicyEngine

        with ws.lock:
            check = ws.check(warnings=False)
            if not check.ok:
                raise WorkbenchError(f"cannot simulate: the working copy has {len(check.problems)} error(s) "
                                     f"(first: {check.problems[0].text})")
            saved = ws.saved_check()
            ps = check.policy_set
            frame = population.frame(ps)
            engine = PolicyEngine(ps)
            baseline = PolicyEngine(saved.policy_set) if saved.ok else None
            try:
                if baseline is not None:
                    saved.policy_set.require_declared(frame.columns)
                sim = simulate(engine, frame, against=baseline, settings=wb.settings)
                base = simulate(baseline, frame, settings=wb.settings) if baseline is not None else None
            finally:
                _close(engine)
                if baseline is not None:
                    _close(baseline)
        return sim_view(sim, base, saved)

    @app.get("/simulate", response_class=HTMLResponse)
    async def simulate_page(request: Request) -> Response:
        return page(request, "simulate.html", result=None)

    @app.post("/simulate/run", response_class=HTMLResponse)
    async def simulate_run(request: Request) -> Response:
        view = await run_in_threadpool(simulate_now)
        return fragment(request, "_simulation.html", v=view)

    # -----------------------------------------------------------------------------------------
    # Explain
    # -----------------------------------------------------------------------------------------
    @app.get("/explain", response_class=HTMLResponse)
    async def explain_page(request: Request, subscriber: str = "") -> Response:
        def work() -> Response:
            ex = None
            error = None
            examples: list[str] = []
            if subscriber.strip():
                try:
                    ex, _record, _ps = explain_one(subscriber)
                except RetainError as exc:
                    error = scrub(str(exc))
            try:
                table = population.table()
                if table is not None and "subscriber_id" in table.columns:
                    examples = [str(s) for s in table["subscriber_id"].head(5)]
            except RetainError:
                pass
            return page(request, "explain.html", ex=ex, subscriber=subscriber, error=error, examples=examples)

        return await run_in_threadpool(work)

    # -----------------------------------------------------------------------------------------
    # Save and sign-off
    # -----------------------------------------------------------------------------------------
    def save_view(request: Request, notice: str | None = None, error: str | None = None, status: int = 200) -> Response:
        with ws.lock:
            check = ws.check(warnings=False)
            diffs = ws.diff()
            saved = ws.saved_check()
            tests = run_tests() if diffs and check.ok else None
        return page(request, "save.html", status=status, check=check, diffs=diffs, notice=notice, error=error,
                    tests=tests,
                    saved_hash=saved.policy_set.content_hash if saved.ok else None,
                    new_hash=check.policy_set.content_hash if check.ok else None)

    @app.get("/save", response_class=HTMLResponse)
    async def save_page(request: Request, notice: str | None = None) -> Response:
        return await run_in_threadpool(save_view, request, one_line(notice)[:300] if notice else None)

    @app.post("/save")
    async def save(request: Request) -> Response:
        def work() -> Response:
            try:
                files, new_hash = ws.save()
            except WorkbenchError as exc:
                return save_view(request, error=scrub(str(exc)), status=409)
            names = ", ".join(f"{ws.display}/{f}" for f in files)
            return RedirectResponse(f"/signoff?notice={quote(f'saved {names}; policy hash {new_hash[:12]}')}",
                                    status_code=303)

        return await run_in_threadpool(work)

    @app.post("/discard")
    async def discard() -> Response:
        await run_in_threadpool(ws.discard)
        return RedirectResponse(f"/?notice={quote('working copy discarded: it is the saved set again')}",
                                status_code=303)

    def signoff_view(request: Request, notice: str | None = None, error: str | None = None,
                     status: int = 200) -> Response:
        with ws.lock:
            saved = ws.saved_check()
            try:
                entries = ws.signoffs()
            except WorkbenchError as exc:
                entries, error = [], error or scrub(str(exc))
            changed = ws.changed_files()
        current = saved.policy_set.content_hash if saved.ok else None
        return page(request, "signoff.html", status=status, saved=saved, current=current, entries=entries,
                    unsaved=changed, notice=notice, error=error)

    @app.get("/signoff", response_class=HTMLResponse)
    async def signoff_page(request: Request, notice: str | None = None) -> Response:
        return await run_in_threadpool(signoff_view, request, one_line(notice)[:300] if notice else None)

    @app.post("/signoff")
    async def signoff(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}

        def work() -> Response:
            try:
                entry = ws.sign_off(form.get("name", ""), form.get("note", ""), form.get("policy_hash") or None)
            except WorkbenchError as exc:
                return signoff_view(request, error=scrub(str(exc)), status=409)
            notice = (f"signed off: {entry['name']} approved policy {entry['policy_hash'][:12]} at "
                      f"{entry['approved_at']}")
            return RedirectResponse(f"/signoff?notice={quote(notice)}", status_code=303)

        return await run_in_threadpool(work)

    return app


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _close(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing a ruleset must not hide the page
            log.debug("closing a policy engine failed", exc_info=True)


def _new_item_yaml(kind: str) -> str:
    if kind == "rules":
        return ("id: new-rule\ndescription: What this rule is for, in words\npriority: 50\nstage: intervention\n"
                "when:\n  risk_grade: [high, medium]\nthen:\n  offer: loyalty_points\n  channel: preferred\n")
    return ("id: new_offer\ndescription: What the subscriber gets\ncost: 5\nvalue_kept: 10\nacceptance: 0.1\n"
            "channels: [sms, app_popup]\n")


# ---------------------------------------------------------------------------------------------
# Test cases from a subscriber
# ---------------------------------------------------------------------------------------------
ALWAYS_IN_CASE = ("churn_probability", "risk_grade", "reason", "value_tier", "preferred_channel")


def _plain_value(v: Any) -> Any:
    import numpy as np

    if v is None or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        if v != v:
            return None
        return round(v, 4)
    if isinstance(v, dt.datetime | dt.date | pd.Timestamp):
        return str(v)[:10]
    return v


def case_from(record: dict[str, Any], ex: Any, ps: Any) -> dict[str, Any]:
    """A test case for one subscriber: the attributes the policy set reads, and what it decides now."""
    vocab = ps.vocabulary
    wanted = (set(ps.required_columns) | set(ALWAYS_IN_CASE)) & set(vocab)
    subscriber: dict[str, Any] = {"subscriber_id": str(record.get("subscriber_id", "TEST"))}
    for name in sorted(wanted):
        if name not in record:
            continue
        value = _plain_value(record[name])
        if value is None and vocab[name].kind == "boolean":
            continue
        if vocab[name].kind == "boolean" and not isinstance(value, bool):
            from engine.vocabulary import FALSE_WORDS, TRUE_WORDS

            word = str(value).strip().lower()
            value = True if word in TRUE_WORDS else False if word in FALSE_WORDS else value
        subscriber[name] = value
    d = ex.decision
    suppressed = bool(ex.suppressed_by) and not d.get("offer_id")
    offer = d.get("offer_id")
    offer = None if offer is None or (isinstance(offer, float) and offer != offer) else str(offer)
    if suppressed:
        expect: dict[str, Any] = {"suppressed": True}
        outcome = f"suppressed by {ex.suppressed_by}"
    elif offer:
        expect = {"offer": offer, "channel": str(d.get("channel"))}
        outcome = f"{offer} via {d.get('channel')}"
    else:
        expect = {"no_offer": True}
        outcome = "no offer"
    return {"name": f"subscriber {subscriber['subscriber_id']} gets {outcome}", "subscriber": subscriber,
            "expect": expect, "rule": d.get("rule_id")}


def case_yaml(case: dict[str, Any]) -> list[dict[str, Any]]:
    from ruamel.yaml.comments import CommentedMap

    exp = CommentedMap(case["expect"])
    exp.fa.set_flow_style()
    return [CommentedMap([("name", case["name"]), ("subscriber", CommentedMap(case["subscriber"])),
                          ("expect", exp)])]


# ---------------------------------------------------------------------------------------------
# Simulation view: the edited set against the saved one, per rule, offer and channel
# ---------------------------------------------------------------------------------------------
def _by(frame: pd.DataFrame | None, key: str) -> dict[str, dict[str, float]]:
    if frame is None or not len(frame):
        return {}
    out = {}
    for row in frame.to_dict(orient="records"):
        name = row.get(key)
        name = "(none)" if name is None or (isinstance(name, float) and name != name) else str(name)
        out[name] = {"reach": float(row.get("reach", 0) or 0), "cost": float(row.get("cost", 0) or 0),
                     "expected_saves": float(row.get("expected_saves", 0) or 0)}
    return out


def _compare(edited: dict[str, dict[str, float]], saved: dict[str, dict[str, float]],
             order: list[str] | None = None) -> list[dict[str, Any]]:
    names = order or sorted(set(edited) | set(saved), key=lambda n: -max(edited.get(n, {}).get("reach", 0),
                                                                          saved.get(n, {}).get("reach", 0)))
    rows = []
    zero = {"reach": 0.0, "cost": 0.0, "expected_saves": 0.0}
    for n in names:
        e, s = edited.get(n, zero), saved.get(n, zero)
        rows.append({"name": n, "saved": s, "edited": e,
                     "delta": {k: e[k] - s[k] for k in zero}, "changed": any(abs(e[k] - s[k]) > 1e-9 for k in zero),
                     "only": "new" if n not in saved else "gone" if n not in edited else ""})
    return rows


def sim_view(sim: Any, base: Any, saved: Any) -> dict[str, Any]:
    rule_order = list(dict.fromkeys([*sim.by_rule["rule_id"].astype(str),
                                     *(base.by_rule["rule_id"].astype(str) if base is not None else [])]))
    by_rule = _compare(_by(sim.by_rule, "rule_id"), _by(base.by_rule, "rule_id") if base is not None else {},
                       rule_order)
    by_offer = _compare(_by(sim.by_offer, "offer_id"), _by(base.by_offer, "offer_id") if base is not None else {})
    by_channel = _compare(_by(sim.by_channel, "channel"), _by(base.by_channel, "channel") if base is not None else {})
    view_charts = []
    for title, rows, key in (("Reach per offer", by_offer, "reach"), ("Expected saves per offer", by_offer,
                                                                      "expected_saves"),
                             ("Reach per channel", by_channel, "reach"), ("Cost per offer", by_offer, "cost")):
        view_charts.append(Markup(charts.paired_bars(title, [r["name"] for r in rows],
                                                     [r["saved"][key] for r in rows],
                                                     [r["edited"][key] for r in rows])))
    transitions = sim.transitions.head(15).to_dict(orient="records") if sim.transitions is not None else []
    return {"sim": sim, "base": base, "totals": sim.totals, "comparison": sim.comparison,
            "by_rule": by_rule, "by_offer": by_offer, "by_channel": by_channel, "charts": view_charts,
            "transitions": transitions, "saved_ok": saved.ok,
            "saved_problem": saved.problems[0].text if saved.problems else None}
