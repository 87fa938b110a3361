"""What every `retain` command group shares: user errors become one line and exit code 2.

Why a shared group class: sub-apps (policy, data, drift) are also usable and testable on their own, so
each needs the same behaviour as the root, from one definition.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer._click.exceptions import TyperException
from typer.core import TyperGroup

from engine.errors import RetainError, mask_secrets

err_console = Console(stderr=True, soft_wrap=True)


class ErrorGroup(TyperGroup):
    """Turns a RetainError anywhere below this group into `error: <message>` on stderr and its exit code.

    Anything else is a bug in retain, but a scheduler still deserves one line and exit code 2 rather than a
    traceback: the line names the exception, and RETAIN_DEBUG=1 shows the traceback for a bug report.
    A full disk and an interrupted run are said in words.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetainError as exc:
            _fail(str(exc), exc.exit_code)
        except (typer.Exit, typer.Abort, TyperException, click.exceptions.ClickException, click.exceptions.Exit):
            raise  # usage errors and exits: the CLI framework prints and exits as documented
        except BrokenPipeError:  # the reader went away (`retain ... | head`): nothing to say to anyone
            raise typer.Exit(141) from None
        except KeyboardInterrupt:
            _fail("interrupted; nothing was published", 130)
        except OSError as exc:
            if os.environ.get("RETAIN_DEBUG"):
                raise
            if exc.errno == errno.ENOSPC:
                _fail(f"no space left on the device{_where(exc)}; nothing was published (hint: free disk space "
                      f"and run the command again)", 2)
            _fail(f"{exc.strerror or exc}{_where(exc)}", 2)
        except Exception as exc:  # noqa: BLE001 - the last line of defence, see docstring
            if os.environ.get("RETAIN_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(f"unexpected {type(exc).__name__}: {first} (hint: this is a bug in retain; RETAIN_DEBUG=1 "
                  f"shows the traceback)", 2)


def _where(exc: OSError) -> str:
    return f" ('{exc.filename}')" if getattr(exc, "filename", None) else ""


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(mask_secrets(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def settings_for(config: Path | None, tracking_uri: str | None):
    """Settings from defaults, config file and tracking URI (see engine.config.load_settings)."""
    from engine.config import load_settings

    return load_settings(config, tracking_uri=tracking_uri)


def plain_cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def rows_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None,
               cell: Callable[[Any, str], str] = plain_cell) -> Table:
    """A rich table of dict rows (columns default to the first row's keys); cells are escaped markup."""
    table = Table(title=title, title_justify="left")
    columns = columns or (list(rows[0]) if rows else [])
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[escape(cell(row.get(c), c)) for c in columns])
    return table
