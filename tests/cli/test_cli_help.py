"""Every command and every option of `retain` explains itself in --help."""

from __future__ import annotations

import typer

from engine.cli.main import app


def walk(cmd, path: tuple[str, ...] = ()):
    """Typer 0.29 vendors its own click, so groups and options are recognised by shape, not class."""
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from walk(sub, (*path, name))


def test_every_command_and_option_has_help(runner):
    root = typer.main.get_command(app)
    seen = 0
    for path, cmd in walk(root):
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        if path:
            assert (cmd.help or cmd.short_help or "").strip(), f"`retain {' '.join(path)}` has no help text"
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"`retain {' '.join(path)}` option {param.opts} has no help"
        seen += 1
    assert seen >= 25
