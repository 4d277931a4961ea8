"""The README's commands: CI runs exactly its test command, and every command it shows parses."""
from __future__ import annotations

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    tests = [ln.strip() for b in bash_blocks(README) for ln in b.splitlines() if ln.strip().startswith("python -m pytest")]
    assert tests, "the README shows no test command"
    command = tests[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ran = [ln.split("#")[0].strip() for ln in ci.splitlines() if ln.strip().startswith("python -m pytest")]
    assert ran == [command]
    if " -n " in f" {command} ":  # pytest-xdist is what the README's set-up installs
        pins = (ROOT / "requirements.txt").read_text(encoding="utf-8")
        assert re.search(r"^pytest-xdist==\S+", pins, flags=re.M)
