"""`kiln --help`: commands in the user's order, one short line each; the long text stays in
`kiln COMMAND --help`."""

from __future__ import annotations

import re

import typer.main
from typer.testing import CliRunner

from kiln.cli import COMMANDS, app

runner = CliRunner()


def test_help_lists_every_command_in_the_users_order_one_short_line_each():
    result = runner.invoke(app, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    rows = [m.group(1, 2) for m in re.finditer(r"^│ (\w+) +(.+?) +│$", result.output, re.M)
            if m.group(1) in COMMANDS]
    assert [name for name, _ in rows] == list(COMMANDS)  # every command, once, in order, none wrapped
    assert dict(rows) == COMMANDS
    assert rows[0][0] == "init" and rows[-1][0] == "serve"
    assert all(len(text) <= 64 and text.endswith(".") for text in COMMANDS.values())


def test_no_command_is_left_out_of_the_order():
    group = typer.main.get_command(app)
    assert set(group.commands) == set(COMMANDS)


def test_the_long_text_is_in_the_commands_own_help():
    result = runner.invoke(app, ["serve", "--help"], terminal_width=100)
    assert result.exit_code == 0
    assert "HMAC-SHA256" in result.output
