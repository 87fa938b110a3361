"""`retain workbench`: serve the marketers' workbench over a policy folder (engine/workbench)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def workbench_cmd(
    policies: Annotated[Path, typer.Option("--policies", help="Policy folder to work on (edits go to a working "
                                                              "copy until saved).")] = Path("policies"),
    input: Annotated[Path | None, typer.Option("--input", help="Decisions table (.parquet/.csv) to simulate, "
                                                               "explain and take test cases from (default: a "
                                                               "synthetic population).")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8050,
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the workbench on this machine. "
                                           "Set RETAIN_WORKBENCH_TOKEN before listening elsewhere.")] = "127.0.0.1",
    config: Annotated[Path | None, typer.Option("--config", help="Settings YAML (thresholds, channel costs).")]
    = None,
) -> None:
    """The marketers' workbench: policies as decision tables, edit with live validation, test cases, simulate
    against the saved set, explain a subscriber, save with the diff, and sign off.

    With RETAIN_WORKBENCH_TOKEN set, every page asks for that token first.
    """
    import uvicorn

    from engine.cli.common import settings_for
    from engine.errors import ConfigError
    from engine.workbench.app import TOKEN_ENV, create_app

    token = os.environ.get(TOKEN_ENV) or None
    if host not in LOOPBACK and not token:
        raise ConfigError(f"--host {host} would open the workbench to the network without a token",
                          hint=f"set {TOKEN_ENV}, or keep the default --host 127.0.0.1")
    allowed = (LOOPBACK | {host}) if host not in ("0.0.0.0", "::") else None
    app = create_app(policies, input_path=input, settings=settings_for(config, None), token=token,
                     allowed_hosts=allowed)
    typer.echo(f"retain workbench on http://{host}:{port}/ - policies {policies}"
               f"{' (token required)' if token else ''}; Ctrl+C to stop", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
