"""The kill-mid-run harness: start a stage in a subprocess, kill -9 it once output exists."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from helpers.cli import command
from helpers.paths import ROOT


def run_and_kill(
    args: list[str], until: Callable[[], bool], poll: float, timeout: float = 120, env=None
) -> None:
    """Run `persona-dynamics *args`, wait until `until()` holds (or `timeout` s), then kill -9."""
    proc = subprocess.Popen(
        command(*args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while time.time() < deadline and not until():
        time.sleep(poll)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def lines(directory: Path) -> int:
    """Newlines written so far over a directory's JSONL files: the rows a stage has finished."""
    return sum(p.read_bytes().count(b"\n") for p in directory.glob("*.jsonl"))
