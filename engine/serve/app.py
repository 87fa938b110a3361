"""The HTTP service: FastAPI routes over the decider, with auth, size limits, metrics and health probes.

Routes: ``POST /v1/decisions`` (bearer token when ``RETAIN_API_TOKEN`` is set), ``GET /healthz``
(the process is alive), ``GET /readyz`` (model and policies loaded: model version, policy hash, last
reload error; 503 until loaded), ``GET /metrics`` (Prometheus text), ``/docs`` (OpenAPI, with examples).

Errors never carry a traceback or a server path: 401 for a missing or wrong token (compared with
`hmac.compare_digest`), 413 above the body limit, 422 naming the field and the problem, 500 with a
generic message (the details go to the log), 503 while the model is not loaded.

Why `POST /v1/decisions` is answered by the `Guard` (plain ASGI) rather than a FastAPI route: FastAPI's
per-route machinery (dependency solving, request and response wrappers, its middleware stack) cost
~0.1 ms of the event loop's CPU per request, measured here, and under load that time is taken from the
deciding thread (one interpreter lock). The body is validated by the same pydantic models a route would use
(`DecisionRequest`, with pydantic's JSON parser), and `/openapi.json` documents the endpoint from them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from engine.config import Settings
from engine.errors import DataError
from engine.serve.schema import DECISIONS_OPENAPI, DecisionRequest, openapi_components

log = logging.getLogger("retain.serve")
TOKEN_ENV = "RETAIN_API_TOKEN"
CONFIG_ENV = "RETAIN_SERVE_CONFIG"
DEFAULT_MAX_BODY = 2 * 1024 * 1024  # 1,000 subscribers of the schema are ~0.6 MB of JSON
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class ServeConfig:
    """Everything a worker process needs to build the app (passed to workers as JSON in the environment)."""

    config: str | None = None
    tracking_uri: str | None = None
    store: str | None = None
    model: str = "champion"
    policies: str | None = None
    learned: bool = True
    poll_seconds: float = 5.0
    flush_seconds: float = 0.5
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_batch_rows: int = 256
    workers: int = 1

    def to_env(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(CONFIG_ENV)
        return cls(**json.loads(raw)) if raw else cls()

    def settings(self) -> Settings:
        from engine.config import load_settings

        return load_settings(Path(self.config) if self.config else None, tracking_uri=self.tracking_uri)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
class Metrics:
    def __init__(self) -> None:
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        if multiproc:  # several workers: each writes its own files, /metrics sums them
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
            reg = None
        else:
            reg = self.registry
        self.requests = Counter("retain_http_requests_total", "HTTP requests by route, method and status code",
                                ["route", "method", "code"], registry=reg)
        self.latency = Histogram("retain_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=reg)
        self.decisions = Counter("retain_decisions_total", "Decisions made, by status", ["status"], registry=reg)
        self.batch_requests = Histogram("retain_decide_batch_requests", "Requests decided per decide call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=reg)
        self.stage = Histogram("retain_decide_stage_seconds", "Time per decide call: wait (queued), state "
                               "(history and allowance from the store), decide (decide_frame), answer",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=reg)
        self.recorded = Counter("retain_recorded_runs_total", "Decision runs written to the decision store",
                                registry=reg)
        self.reloads = Gauge("retain_reloads", "Model or policy reloads since start", registry=reg,
                             **({"multiprocess_mode": "max"} if multiproc else {}))
        self.reload_failing = Gauge("retain_reload_failing", "1 while the last reload attempt failed",
                                    registry=reg, **({"multiprocess_mode": "max"} if multiproc else {}))


# ---------------------------------------------------------------------------------------------
# auth, size limit, metrics and the decisions endpoint, as one plain ASGI middleware (see the module docs)
# ---------------------------------------------------------------------------------------------
DECISIONS = "/v1/decisions"
ROUTES = (DECISIONS, "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    await _send_bytes(send, status, _json(body), headers)


async def _send_bytes(send: Any, status: int, data: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Auth, body limit and metrics for every request; answers `POST /v1/decisions` itself (see the module
    docs) through `decide`: request body -> (HTTP status, JSON body)."""

    def __init__(self, app: Any, *, metrics: Metrics, max_body_bytes: int, token: str | None,
                 decide: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.token = f"Bearer {token}".encode() if token else None
        self.decide = decide

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if path.startswith("/v1"):
                if self.token is not None:
                    given = dict(scope["headers"]).get(b"authorization", b"")
                    if not hmac.compare_digest(given, self.token):
                        return await _send_json(send_wrapper, 401, {"error": "missing or wrong bearer token"},
                                                [(b"www-authenticate", b"Bearer")])
                headers = dict(scope["headers"])
                length = headers.get(b"content-length")
                if length is not None and (not length.isdigit() or int(length) > self.max_body):
                    return await _send_json(send_wrapper, 413, {
                        "error": f"request body larger than {self.max_body:,} bytes"})
                body = await self._body(receive, send_wrapper)
                if body is None:
                    return
                if path == DECISIONS:
                    if scope.get("method") != "POST":
                        return await _send_json(send_wrapper, 405, {"error": "use POST"}, [(b"allow", b"POST")])
                    code, data = await self.decide(body)
                    return await _send_bytes(send_wrapper, code, data)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    async def _body(self, receive: Any, send: Any) -> bytes | None:
        """The body up to the limit (also when chunked, without a Content-Length); None when answered already."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await _send_json(send, 413, {"error": f"request body larger than {self.max_body:,} bytes"})
                return None
            chunks.append(body)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """`receive` for the app behind the guard: the body read already, then whatever comes next."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


# ---------------------------------------------------------------------------------------------
# validation errors: field and problem, nothing else
# ---------------------------------------------------------------------------------------------
def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("function-after", "literal_error") or str(p).startswith(("function-", "literal[")):
            continue
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def validation_problems(exc: ValidationError, *, empty: bool = False) -> list[dict[str, str]]:
    """Each problem of a request body as (field, problem): `subscribers[3].arpu_m0`, in pydantic's words."""
    if empty:
        return [{"field": "body", "problem": "body is missing: send {\"subscribers\": [...]}"}]
    out = []
    for err in exc.errors()[:20]:
        if err.get("type") == "json_invalid":
            out.append({"field": "body", "problem": "body is not valid JSON"})
            continue
        out.append({"field": _field_name(tuple(err.get("loc", ()))), "problem": str(err.get("msg", "invalid"))})
    return out


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def data_error_body(exc: DataError) -> dict[str, Any]:
    """A DataError from the schema validation ('request: column 'x': problem; ...') as fields and problems."""
    text = str(getattr(exc, "message", exc)).split("\n")[0].removeprefix("request: ")
    problems = []
    for part in text.split("; "):
        field = part.split("'")[1] if part.startswith(("column '", "missing column '")) else "subscribers"
        problems.append({"field": field, "problem": part})
    return {"error": "invalid subscribers", "detail": problems}


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig | None = None, *, token: str | None = None) -> FastAPI:
    """Build the app; the model and policies load in its lifespan (once per worker process)."""
    from engine.feedback.store import open_store
    from engine.serve.decider import Decider, Recorder
    from engine.serve.ledger import Ledger
    from engine.serve.state import ServingState, settle_heap

    cfg = cfg or ServeConfig.from_env()
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    metrics = Metrics()
    parts: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings = cfg.settings()
        state = ServingState(settings, model=cfg.model, policy_dir=cfg.policies or settings.policy_dir,
                             learned=cfg.learned, poll_seconds=cfg.poll_seconds)
        await asyncio.to_thread(state.load)
        store = open_store(settings, url=cfg.store)
        assert store is not None
        ledger = Ledger(store, settings.arbitration.budget,
                        {ch: c.daily_capacity for ch, c in settings.channels.items()})
        recorder = Recorder(settings, ledger, flush_seconds=cfg.flush_seconds, store_url=cfg.store,
                            on_written=lambda n: metrics.recorded.inc(n))

        def on_batch(n_requests: int, statuses: dict[str, int], seconds: dict[str, float]) -> None:
            metrics.batch_requests.observe(n_requests)
            for stage, sec in seconds.items():
                metrics.stage.labels(stage).observe(sec)
            for s, n in statuses.items():
                metrics.decisions.labels(str(s)).inc(n)

        decider = Decider(state, ledger, recorder, max_batch_rows=cfg.max_batch_rows, shared=cfg.workers > 1,
                          on_batch=on_batch)
        settle_heap()  # loaded once: keep the garbage collector's full passes off it (see settle_heap)
        parts.update(state=state, decider=decider, recorder=recorder, store=store.display_url)
        state.start()
        log.info("ready: decision store %s, token %s", store.display_url, "required" if token else "not set")
        try:
            yield
        finally:  # SIGTERM / Ctrl-C: uvicorn stops accepting, finishes requests, then this drains
            state.stop()
            decider.close()
            recorder.close()
            log.info("stopped: %d decision run(s), %d decisions recorded", recorder.written_runs,
                     recorder.written_decisions)

    app = FastAPI(title="retain decisions", version="1", lifespan=lifespan,
                  description="Real-time churn-retention decisions: the same decide function as `retain decide`, "
                              "one subscriber or up to 1,000 per call. With RETAIN_API_TOKEN set, `/v1` calls "
                              "need `Authorization: Bearer <token>`.")

    async def decide(body: bytes) -> tuple[int, bytes]:
        """Decide for 1 to 1,000 subscribers (`POST /v1/decisions`, see DECISIONS_OPENAPI): (status, JSON body)."""
        decider = parts.get("decider")
        if decider is None:
            return 503, b'{"error": "not ready"}'
        try:
            request = DecisionRequest.model_validate_json(body)
        except ValidationError as exc:
            return 422, _json({"error": "invalid request", "detail": validation_problems(exc, empty=not body.strip())})
        problems = [{"field": f"subscribers[{i}].{k}", "problem": "must be a single value (text, number, "
                     "true/false or null)"}
                    for i, r in enumerate(request.subscribers) for k, v in (r.model_extra or {}).items()
                    if not (v is None or isinstance(v, str | int | float | bool))]
        if problems:
            return 422, _json({"error": "invalid request", "detail": problems[:20]})
        try:
            rows = await asyncio.wrap_future(decider.submit([r.model_dump() for r in request.subscribers]))
        except DataError as exc:
            return 422, _json(data_error_body(exc))
        except Exception:  # noqa: BLE001 - answer 500 without details; they go to the log
            log.exception("unexpected error on %s", DECISIONS)
            return 500, b'{"error": "internal error; see the service log"}'
        return 200, _json({"decisions": rows})

    app.add_middleware(Guard, metrics=metrics, max_body_bytes=cfg.max_body_bytes, token=token, decide=decide)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": "internal error; see the service log"}, status_code=500)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema of the other routes, plus `POST /v1/decisions` (answered by the Guard)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_components())
            schema["paths"][DECISIONS] = DECISIONS_OPENAPI
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        """The process is alive (it may still be loading the model)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> JSONResponse:
        """Ready to decide: model version, policy hash, last reload error (503 until loaded)."""
        state = parts.get("state")
        if state is None or state.bundle is None:
            return JSONResponse({"ready": False}, status_code=503)
        body = state.status()
        recorder = parts["recorder"]
        body["recorder"] = {"backlog": recorder.backlog, "written_runs": recorder.written_runs,
                            "written_decisions": recorder.written_decisions,
                            "unrecorded_runs": recorder.unrecorded_runs, "last_error": recorder.last_error}
        metrics.reloads.set(state.reloads)
        metrics.reload_failing.set(1 if state.last_reload_error else 0)
        return JSONResponse(body)

    @app.get("/metrics", tags=["probes"])
    async def prometheus() -> Response:
        """Prometheus text format: requests, latency histogram, decisions by status, recorded runs."""
        state = parts.get("state")
        if state is not None:
            metrics.reloads.set(state.reloads)
            metrics.reload_failing.set(1 if state.last_reload_error else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes (`retain serve --workers N`)."""
    return create_app()
