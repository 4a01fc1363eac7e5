"""The README's command lines parse: every `$ unleak ...` example names a real subcommand and real flags
with values of the right kind, and every flag the demo section lists is a flag of `unleak demo`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from unleak.cli import app

# typer >= 0.2x ships its own click; its usage errors derive from this class either way
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argv after `unleak`) of each `$ unleak` line of the console blocks, continuations
    joined, comments dropped and `[--flag]` (an optional flag) unbracketed."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.startswith("$ unleak "):
            continue
        number, command = i + 1, line[2:]
        while command.rstrip().endswith("\\"):
            i += 1
            command = command.rstrip()[:-1] + " " + lines[i].strip()
        argv = shlex.split(command, comments=True)[1:]
        argv = [a[1:-1] if re.fullmatch(r"\[--[\w-]+\]", a) else a for a in argv]
        out.append((number, argv))
    return out


def resolve(argv: list[str]) -> tuple[Any, list[str], str]:
    command = typer.main.get_command(app)
    name = "unleak"
    while hasattr(command, "get_command") and argv and not argv[0].startswith("-"):
        sub = command.get_command(typer.Context(command), argv[0])
        assert sub is not None, f"{name} has no subcommand {argv[0]!r}"
        command, name, argv = sub, f"{name} {argv[0]}", argv[1:]
    return command, argv, name


def test_readme_examples_are_found():
    commands = readme_commands(README.read_text())
    names = {resolve(argv)[2] for _, argv in commands}
    assert len(commands) >= 20
    assert {"unleak demo", "unleak generate", "unleak serve", "unleak train orpo", "unleak pairs build",
            "unleak eval run", "unleak corpus synth", "unleak negate"} <= names


@pytest.mark.parametrize("number,argv", readme_commands(README.read_text()),
                         ids=lambda x: f"line{x}" if isinstance(x, int) else None)
def test_readme_command_parses(number, argv):
    """`...` stands for the flags of the example above it, so only those may be missing there."""
    command, rest, name = resolve([a for a in argv if a != "..."])
    try:
        command.make_context(name, list(rest))
    except UsageError as e:
        if "..." in argv and type(e).__name__ == "MissingParameter":
            return
        pytest.fail(f"README.md:{number}: `{name}`: {e.format_message()}")


def test_the_demo_sections_flags_are_demo_flags():
    text = README.read_text()
    section = text[text.index("## The demo"):text.index("### The default run's results")]
    listed = set(re.findall(r"`(--[a-z][\w-]*)", section))
    demo, _, _ = resolve(["demo"])
    known = {opt for p in demo.params for opt in p.opts + p.secondary_opts}
    assert len(listed) >= 20
    assert listed <= known, sorted(listed - known)


def test_a_wrong_flag_or_value_fails_the_check():
    for argv in (["generate", "--guidance-scale", "three"], ["train", "orpo", "--model", "m", "--pairs", "p",
                                                            "--out", "o", "--epoch", "3"]):
        command, rest, name = resolve(argv)
        with pytest.raises(UsageError):
            command.make_context(name, rest)
