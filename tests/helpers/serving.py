"""Real model servers started by tests and benchmarks: a free port, waiting until one lists its
models, and a vLLM server as the README starts it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
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


def serve_command(model: str, port: int, *extra: str) -> list[str]:
    """The README's command serving a checkpoint with vLLM on CPU (its `vllm` script is broken),
    plus `extra` arguments (the LoRA modules)."""
    return [
        *(sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model),
        *("--dtype", "float32", "--no-enable-chunked-prefill"),
        *("--host", "127.0.0.1", "--port", str(port), *extra),
    ]


@contextlib.contextmanager
def vllm_served(model: str, log: Path, core: int, *extra: str):
    """A vLLM server on `model` (its own process group, killed on exit), its engine on one core
    so that replicas run side by side; yields (process, base URL)."""
    port = free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CPU_OMP_THREADS_BIND": str(core),
    }
    with log.open("w") as out:
        server = subprocess.Popen(
            serve_command(model, port, *extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_up(server, url, "vllm server", 300, log)  # start-up compiles the model
        yield server, url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
