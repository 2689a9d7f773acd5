"""The README stays a five-minute read, CI runs its test command as written, and no link
in the README or docs/ points nowhere (tests/e2e/test_documented_commands.py checks every
documented command)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _code_lines(path: Path) -> list[str]:
    """The lines of ``path``'s fenced code blocks, comments and prompts left as written."""
    lines, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_a_five_minute_read() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    lines = _code_lines(README)
    command = lines[lines.index("# 2. install the test dependencies and run the test suite (what CI runs)") + 1]
    assert command.endswith(".venv/bin/python -m pytest")
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    anchors = {
        page: {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", page.read_text(encoding="utf-8"), re.M)}
        for page in PAGES
    }
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors.get(resolved, set()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
