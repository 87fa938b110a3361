"""`retain serve`: parse options, check the model and policies exist, run the HTTP service on uvicorn."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.common import err_console, settings_for


def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind. 127.0.0.1 (this machine only) unless told; "
                                           "put a TLS proxy in front before binding 0.0.0.0.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each with the model loaded once.")] = 1,
    model: Annotated[str, typer.Option(help="Model alias, version number or URI; an alias is followed when it "
                                            "moves (hot reload).")] = "champion",
    policies: Annotated[Path | None, typer.Option(help="Policy folder (default from config: policies/); "
                                                       "edits are picked up while serving.")] = None,
    store: Annotated[str | None, typer.Option("--store", envvar="RETAIN_STORE_URL",
                                              help="Decision store URL (default: store/retain.db next to "
                                                   "mlruns/).")] = None,
    learned: Annotated[bool, typer.Option("--learned/--no-learned", help="Use acceptance rates learned from "
                                                                         "ingested outcomes.")] = True,
    poll_seconds: Annotated[float, typer.Option(min=0, help="Seconds between checks for a moved model alias "
                                                            "or changed policy files (0: never).")] = 5.0,
    flush_seconds: Annotated[float, typer.Option(min=0.01, help="Seconds between writes of decisions to the "
                                                                "decision store.")] = 0.5,
    max_body_bytes: Annotated[int, typer.Option(min=1024, help="Largest request body accepted (413 above).")]
    = 2 * 1024 * 1024,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="Settings YAML overriding the defaults "
                                                "(also ./retain.yaml or $RETAIN_CONFIG).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                     help="MLflow store holding the model.")] = None,
) -> None:
    """Serve real-time decisions over HTTP (POST /v1/decisions; /healthz, /readyz, /metrics, /docs).

    The same decide function as `retain decide`, with a daily budget and channel capacity kept in the
    decision store, contact rules over the store's history, and every decision recorded there.
    Set RETAIN_API_TOKEN to require `Authorization: Bearer <token>` on /v1 calls. Stops cleanly on
    SIGTERM or Ctrl-C after recording every decision it answered.
    """
    import uvicorn

    from engine.decision.run import load_policy_engine
    from engine.feedback.store import open_store
    from engine.model.registry import _resolve_version, connect, model_uri
    from engine.serve.app import CONFIG_ENV, ServeConfig, create_app

    settings = settings_for(config, tracking_uri)
    policy_dir = policies or Path(settings.policy_dir)
    load_policy_engine(policy_dir).close()  # a broken policy set stops here, in one line
    _resolve_version(connect(settings), settings, model_uri(settings, model))  # so does a missing model
    open_store(settings, url=store)  # and a decision store that cannot be opened
    cfg = ServeConfig(config=str(config) if config else None, tracking_uri=tracking_uri, store=store, model=model,
                      policies=str(policy_dir), learned=learned, poll_seconds=poll_seconds,
                      flush_seconds=flush_seconds, max_body_bytes=max_body_bytes, workers=workers)
    if not os.environ.get("RETAIN_API_TOKEN"):
        err_console.print("[yellow]warning:[/] RETAIN_API_TOKEN is not set: /v1 calls need no token")
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] binding {host}: reachable from other machines; use a token and TLS")
    common = dict(host=host, port=port, access_log=access_log, log_level="info", timeout_graceful_shutdown=30)
    if workers == 1:
        uvicorn.run(create_app(cfg), **common)
        return
    os.environ[CONFIG_ENV] = cfg.to_env()
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # workers' metrics are summed through files here
        own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="retain-metrics-")
    try:
        uvicorn.run("engine.serve.app:app_from_env", factory=True, workers=workers, **common)
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
