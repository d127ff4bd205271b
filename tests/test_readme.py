"""Every command the README shows must exist and the cheap ones must run as written."""

from __future__ import annotations

import re
import shlex

import pytest

from helpers.cli import cli
from helpers.paths import ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
LINES = [ln.split("#")[0].strip() for b in BLOCKS for ln in b.splitlines() if ln.strip()]
CLI_LINES = [ln for ln in LINES if ln.startswith("persona-dynamics ")]
SETUP = [ln for ln in LINES if ln.startswith("pip install")]
# commands that do real work (models, GPUs, minutes) are checked through their --help only
HEAVY = {
    "demo",
    "run",
    "generate",
    "judge",
    "capture",
    "analyze",
    "compare",
    "report",
    "adapters",
    "toy",
    "revisions",
    "calibrate",
    "steer",
    "drift",
    "vectors",
}


def test_two_setup_commands():
    assert len(SETUP) == 2
    demo, tests = SETUP
    assert demo.endswith("persona-dynamics demo") and "torch==2.13.0" in demo
    assert tests.endswith("&& pytest") and '".[dev]"' in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npytest\n" in ci and "torch==2.13.0" in ci and '".[dev]"' in ci


def test_extras_named_in_readme_exist():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for line in SETUP:
        for group in re.findall(r"\.\[([a-z,]+)\]", line):
            assert set(group.split(",")) <= set(extras), line


@pytest.mark.parametrize("line", CLI_LINES)
def test_readme_cli_lines(line):
    args = shlex.split(line)[1:]
    subcommand = next((a for a in args if not a.startswith("-")), None)
    if subcommand in HEAVY:
        words = []  # the command path: leading bare words, up to the first flag or file
        for a in args:
            if not re.fullmatch(r"[a-z]+", a):
                break
            words.append(a)
        r = cli(*words, "--help")
    else:
        r = cli(*args)
    assert r.returncode == 0, f"{line}\n{r.stderr}"
