"""Real model servers started by tests: a free port, and waiting until one lists its models."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(server: subprocess.Popen, url: str, what: str, seconds: float, log: Path | None = None):
    """Wait until `url`/models answers; fail at once if the server exits, naming `what`."""
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            return
        except OSError:
            if server.poll() is not None:
                tail = f":\n{log.read_text()[-3000:]}" if log else ""
                raise AssertionError(f"{what} exited{tail}") from None
            assert time.time() < deadline, f"{what} did not come up in {seconds:.0f} s"
            time.sleep(0.5)
