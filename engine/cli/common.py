"""What every `retain` command group shares: user errors become one line and exit code 2.

Why a shared group class: sub-apps (policy, data, drift) are also usable and testable on their own, so
each needs the same behaviour as the root, from one definition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from engine.errors import RetainError

err_console = Console(stderr=True, soft_wrap=True)


class ErrorGroup(TyperGroup):
    """Turns a RetainError anywhere below this group into `error: <message>` on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetainError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


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
