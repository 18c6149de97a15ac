"""``--help`` of every command: bracketed defaults survive, docstring markup does not show raw.

Typer's default "rich" markup mode reads ``[brats2021]`` as a style tag and drops it, so
``--layout`` used to read "picks the output label values ." Every app uses "markdown" mode.
"""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from transmed.cli import app

runner = CliRunner()


def _commands(group: click.Command, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    yield path, group
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _flat(text: str) -> str:
    """Rendered help without the panels' box characters and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize(
    "path,command", COMMANDS, ids=[" ".join(p) or "transmed" for p, _ in COMMANDS]
)
def test_help_keeps_bracketed_text_and_hides_docstring_markup(path, command) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    assert "``" not in shown and ":func:" not in shown and ":class:" not in shown
    for param in command.params:
        for bracketed in re.findall(r"\[[^\]]+\]", getattr(param, "help", None) or ""):
            assert _flat(bracketed) in shown, f"{' '.join(path)} {param.name}: {bracketed} lost"


def test_the_layout_default_survives_in_predict_help() -> None:
    """The case a new user reported: "--layout ... picks the output label values ."."""
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "100"})
    assert "output label values [brats2021]" in _flat(result.output)
