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


def _commands(text: str) -> list[list[str]]:
    """Every command line of the README's bash blocks (continuations joined, comments dropped)."""
    import shlex

    out = []
    for block in bash_blocks(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                out.append(shlex.split(part))
    return out


def test_every_readme_command_parses():
    """Hydra lines compose with every key known (run_*_mp.py: configs/base.yaml; python -m eval:
    configs/eval.yaml); scripts exist and know every --option the README gives them."""
    from hydra import compose, initialize_config_dir

    from chords.config import CONFIG_DIR
    from eval.cli import compose_config

    checked = 0
    for argv in _commands(README):
        if argv[0] == "torchrun":
            argv = ["python", *argv[next(i for i, a in enumerate(argv) if a.endswith("_mp.py")):]]
        if argv[:1] != ["python"] and argv[:1] != ["bash"]:
            continue
        if argv[1:3] == ["-m", "eval"]:
            compose_config(argv[3:])
        elif argv[1] in ("run_image_mp.py", "run_video_mp.py"):
            overrides = [a for a in argv[2:] if not a.startswith("-")]
            sweeps = [o for o in overrides if "," in o.partition("=")[2] and not o.partition("=")[2].startswith("[")]
            overrides = [o if o not in sweeps else o.partition(",")[0] for o in overrides]
            with initialize_config_dir(str(CONFIG_DIR), version_base=None):
                compose(config_name="base", overrides=overrides)
        elif argv[1].startswith(("scripts/", "bench/", "download.py")) or argv[0] == "bash":
            script = ROOT / argv[1]
            assert script.is_file(), argv
            source = script.read_text(encoding="utf-8")
            for a in argv[2:]:
                if a.startswith("--"):
                    assert a.split("=")[0] in source, (argv[1], a)
        else:
            continue
        checked += 1
    assert checked >= 15
