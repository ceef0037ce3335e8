"""The README's CLI table says what the real `--help` says: same commands, same flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main

from iotpipe.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
_ROW = re.compile(r"^\| (`iotpipe .*?) \|", re.MULTILINE)


def documented() -> dict[tuple[str, ...], set[str]]:
    """Each command path the README's table shows, with the flags it shows for it."""
    found: dict[tuple[str, ...], set[str]] = {}
    for cell in _ROW.findall(README.read_text()):
        for usage in re.findall(r"`(iotpipe [^`]*)`", cell):
            words = usage.split()[1:]
            path = tuple(
                w
                for w in words[
                    : next(
                        (i for i, w in enumerate(words) if not re.fullmatch(r"[a-z]+(-[a-z]+)*", w)),
                        len(words),
                    )
                ]
            )
            found.setdefault(path, set()).update(re.findall(r"--[a-z][a-z0-9-]*", usage))
    return found


def real_commands() -> dict[tuple[str, ...], set[str]]:
    """Every command the CLI has (groups and leaves), with its option names."""
    commands: dict[tuple[str, ...], set[str]] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if path:
            commands[path] = {name for p in command.params for name in p.opts if name.startswith("--")}
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return commands


def test_every_command_in_the_readme_exists_with_the_flags_it_shows() -> None:
    real = real_commands()
    for path, flags in documented().items():
        assert path in real, f"README documents `iotpipe {' '.join(path)}`, which does not exist"
        assert flags <= real[path] | {"--help"}, (
            f"iotpipe {' '.join(path)}: no such flags {flags - real[path]}"
        )


def test_every_command_of_the_cli_is_in_the_readme() -> None:
    shown = documented()
    groups = {path[:-1] for path in real_commands() if len(path) > 1}
    missing = [" ".join(p) for p in real_commands() if p not in shown and p not in groups]
    assert not missing, f"README's CLI table lacks: {missing}"
