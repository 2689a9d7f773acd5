"""The commands README.md and docs/*.md show in fenced ``bash`` blocks, cut as the shell
cuts them: continuation lines and multi-line quotes joined, comments dropped, ``&&``/``;``/
``&`` chains split (tests/e2e/test_documented_commands.py checks each one;
tests/e2e/test_flwr_run.py runs the README's ``flwr run`` commands)."""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Command:
    page: str
    words: tuple[str, ...]

    @property
    def program(self) -> str:
        return self.words[0].removeprefix(".venv/bin/")

    def __str__(self) -> str:
        return f"{self.page}: {shlex.join(self.words)}"


def code_blocks(path: Path, language: str = "bash") -> list[list[str]]:
    """The lines of each fenced ``language`` block of ``path``."""
    blocks, current = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if current is None and line.strip() == f"```{language}":
                current = []
            elif current is not None:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands(path: Path) -> list[Command]:
    """The commands of ``path``'s bash blocks, as the shell would cut them.

    A block written as a transcript (lines starting ``$ ``) gives only its ``$`` lines;
    ``NAME=value`` lines set variables that later commands of the block use.
    """
    found: list[Command] = []
    for block in code_blocks(path):
        if any(line.startswith("$ ") for line in block):
            block = [line[2:] for line in block if line.startswith("$ ")]
        variables: dict[str, str] = {}
        pending = ""
        for line in block:
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            try:
                words = shlex.split(re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), pending),
                                    comments=True)  # fmt: skip
            except ValueError:  # a quote that closes on a later line
                continue
            pending = ""
            for part in (list(g) for sep, g in itertools.groupby(words, lambda w: w in ("&&", ";", "&")) if not sep):
                part = [w.strip("()") for w in part if w.strip("()")]
                if len(part) == 1 and re.fullmatch(r"\w+=.*", part[0]):
                    name, value = part[0].split("=", 1)
                    variables[name] = value
                elif part:
                    found.append(Command(path.relative_to(ROOT).as_posix(), tuple(part)))
        assert not pending, f"{path.name}: unterminated command {pending!r}"
    return found


DOCUMENTED = [command for page in PAGES for command in commands(page)]


def of(*programs: str) -> list[Command]:
    """The documented commands of ``programs`` (``.venv/bin/`` prefixes dropped)."""
    return [c for c in DOCUMENTED if c.program in programs]
