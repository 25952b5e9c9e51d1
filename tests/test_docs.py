"""The docs stay current: README's config reference is the one the code generates, and the quickstart is
exactly the two commands. Regenerate the reference with `make docs` (runs this file)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def expected_readme(text: str) -> str:
    from cai_pipeline.config import reference_markdown

    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference_markdown()}\n{END}{tail}"


def test_readme_config_reference_is_current():
    text = (REPO / "README.md").read_text()
    assert text == expected_readme(text), "README's config reference is stale: run `make docs`"


def test_quickstart_is_two_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```sh\n(.*?)```", text, re.S).group(1)
    assert block.split("\n")[:2] == ["make demo", "make test"] and block.strip().count("\n") == 1


def test_ci_runs_make_test():
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "set -e" in ci


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    path = REPO / "README.md"
    path.write_text(expected_readme(path.read_text()))
    print("README.md config reference updated")
