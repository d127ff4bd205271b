"""The command line as a user runs it: `python -m persona_dynamics` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers.paths import ROOT


def command(*args: str) -> list[str]:
    """The argv that runs the console entry point with this interpreter."""
    return [sys.executable, "-m", "persona_dynamics", *args]


def cli(*args: str, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    """Run the CLI; `env` adds variables to this process's environment."""
    return subprocess.run(
        command(*args), cwd=cwd, capture_output=True, text=True, env=env and {**os.environ, **env}
    )
