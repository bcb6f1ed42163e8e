"""The README's claims that code can check: its first Python block runs, it starts with the
two commands, and its architecture table is what `attnres models` prints."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands() -> None:
    first = re.search(r"```\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert commands == ["make demo", "make test"]


def test_first_python_block_runs() -> None:
    exec(compile(blocks("python")[0], str(README), "exec"), {})


def test_architecture_table_is_current() -> None:
    from attnres.models import model_table

    assert model_table() in README.read_text()
