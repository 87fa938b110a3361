"""`retain data`: the built-in data. Generate simulated subscribers, list drift scenarios, show the schema.

Thin by design (see engine/cli/main.py): parse options, call `engine.data.simulator`, render with rich. Every user
mistake is raised as a RetainError; the root `retain` group prints it as one line and exits with code 2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from engine.errors import ConfigError

console = Console()
err_console = Console(stderr=True)

#: Output formats and the file suffixes that mean them.
FORMATS: dict[str, tuple[str, ...]] = {"parquet": (".parquet", ".pq"), "csv": (".csv",)}
#: Above this many rows a spinner shows that generation and writing are under way.
SPINNER_ROWS = 200_000

app = typer.Typer(
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    help="Built-in data: generate simulated subscribers, list drift scenarios, show the schema.")


def resolve_output(out: Path, fmt: str | None) -> Path:
    """The file to write: its suffix picks the format; `--format` only fills in a missing suffix.

    Why refuse a disagreement instead of guessing: `--out month.parquet --format csv` is a typo either
    way, and a CSV file named .parquet breaks every reader later.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unsupported format '{fmt}'", hint=f"use one of: {', '.join(FORMATS)}")
    suffix = out.suffix.lower()
    if not suffix:
        return out.with_name(out.name + FORMATS[fmt or "parquet"][0])
    by_suffix = next((name for name, suffixes in FORMATS.items() if suffix in suffixes), None)
    if by_suffix is None:
        raise ConfigError(f"unsupported output type '{suffix}' for '{out}'",
                          hint="name the file .parquet or .csv (or pass --format)")
    if fmt is not None and fmt != by_suffix:
        raise ConfigError(f"--format {fmt} disagrees with the file name '{out.name}' ({by_suffix})",
                          hint="drop --format or change the suffix")
    return out


def generate_file(rows: int, seed: int, drift: str, out: Path,
                  fmt: str | None = None) -> tuple[Path, dict[str, object]]:
    """Validate options, simulate, write atomically; return the path and the simulator summary."""
    from engine.data.io import write_table
    from engine.data.simulator import generate, get_scenario, summary

    if rows <= 0:
        raise ConfigError(f"--rows must be a positive number of subscribers, got {rows}",
                          hint="for example --rows 50000")
    get_scenario(drift)
    path = resolve_output(out, fmt)
    if path.exists() and path.is_dir():
        raise ConfigError(f"--out '{path}' is a directory", hint="give a file name such as month.parquet")
    spinner = (err_console.status(f"simulating {rows:,} subscribers ({drift})...") if rows >= SPINNER_ROWS
               else contextlib.nullcontext())
    with spinner as status:
        df = generate(rows, seed=seed, scenario=drift)
        if status is not None:
            status.update(f"writing {rows:,} rows to {path}...")
        write_table(df, path)
    return path, summary(df)


@app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option("--out", help="File to write: .parquet (default) or .csv. Written "
                                                    "atomically, so a crash never leaves half a table.")],
    rows: Annotated[int, typer.Option("--rows", help="Number of subscribers to simulate.")] = 50_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed, rows and scenario give the "
                                                     "same table. Use another seed for another month.")] = 0,
    drift: Annotated[str, typer.Option("--drift", help="Market scenario to simulate, to rehearse drift "
                                                       "checks (see `retain data scenarios`).")] = "baseline",
    fmt: Annotated[str | None, typer.Option("--format", help="parquet or csv; only needed when --out has no "
                                                             "suffix.")] = None,
) -> None:
    """Simulate one month of subscribers with churn labels and true churn reasons, and write the table."""
    path, info = generate_file(rows, seed, drift, out, fmt)
    mix = ", ".join(f"{reason} {share:.0%}" for reason, share in
                    sorted(info["reasons"].items(), key=lambda kv: -kv[1]))
    console.print(f"wrote {info['rows']:,} subscribers (seed {seed}, scenario {drift}): churn rate "
                  f"{info['churn_rate']:.1%}; reasons: {mix} -> {path}", highlight=False, soft_wrap=True)


@app.command("scenarios")
def scenarios_cmd() -> None:
    """List the simulator's drift scenarios and the inputs each one moves (what a drift check should flag)."""
    from engine.data.simulator import SCENARIOS

    table = Table(title="Simulator scenarios (retain data generate --drift NAME)", title_justify="left")
    table.add_column("scenario", style="bold", no_wrap=True)
    table.add_column("what happens", overflow="fold")
    table.add_column("moved inputs", overflow="fold")
    table.add_column("moved derived signals", overflow="fold")
    for sc in SCENARIOS.values():
        table.add_row(sc.name, sc.description, ", ".join(sc.moved_features) or "(none)",
                      ", ".join(sc.moved_derived) or "(none)")
    console.print(table)


@app.command("schema")
def schema_cmd() -> None:
    """Show the subscriber table every input must match: columns, types, ranges and meaning."""
    from engine.data.schema import schema_table

    rows = schema_table()
    table = Table(title="Subscriber schema (labels churn and churn_reason are needed only for training)",
                  title_justify="left")
    for col in rows[0]:
        table.add_column(col, overflow="fold", no_wrap=col == "column")
    for row in rows:
        table.add_row(*["yes" if v is True else "" if v is False else str(v) for v in row.values()])
    console.print(table)
