"""The openai backend against real HTTP servers on 127.0.0.1: ours, and `transformers serve`."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from persona_dynamics.config import parse
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.generation import run_generate
from persona_dynamics.transcripts import read_transcripts

from chat_server import ChatServer
from conftest import QUESTIONS, ROLES_DIR


def study(tmp_path, urls, model="served-model", **gen):
    return parse(
        {
            "run_name": "served",
            "output_root": str(tmp_path),
            "checkpoints": [{"label": "m", "model": model}],
            "roles": {
                "dir": str(ROLES_DIR),
                "questions": str(QUESTIONS),
                "include": ["cat"],
                "question_count": 3,
            },
            "generation": {"backend": "openai", "base_urls": urls, "max_tokens": 7, **gen},
        }
    )


def echo(body: dict) -> str:
    """Answer with what was asked, so the test can check every row against its request."""
    user = body["messages"][-1]["content"]
    return f"{user[:12]}|{body['seed']}|{body['temperature']}|{body['top_p']}|{body['max_tokens']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replicas_share_the_work_and_rows_match_requests(tmp_path):
    with (
        ChatServer(echo, delay=0.02, model="served-model") as a,
        ChatServer(echo, delay=0.02, model="served-model") as b,
    ):
        cfg = study(tmp_path, [a.url, b.url], max_in_flight=6, num_rollouts=2)
        out = run_generate(cfg)
        n = (5 + 6) * 3 * 2
        assert len(a.requests) + len(b.requests) == n
        assert min(len(a.requests), len(b.requests)) >= n // 4  # both replicas got real shares
        assert a.max_in_flight + b.max_in_flight >= 4  # many requests in flight
        rows = read_transcripts(out)
        assert len(rows) == n
        seeds = set()
        for r in rows:
            q, seed, temp, top_p, max_tokens = r["response"].split("|")
            assert q == r["messages"][-1]["content"][:12]
            assert (float(temp), float(top_p), int(max_tokens)) == (0.7, 0.9, 7)
            seeds.add(int(seed))
        assert len(seeds) == n and all(0 <= s < 2**31 for s in seeds)  # one seed per rollout
        man = json.loads((out / "manifest.json").read_text())
        assert man["backend"] == "openai" and man["base_urls"] == [a.url, b.url]
        assert {m["id"] for m in man["served"]} == {"served-model"}

        before = len(a.requests) + len(b.requests)
        run_generate(cfg)  # resume: every key present, nothing asked
        assert len(a.requests) + len(b.requests) == before


def test_retries_429_and_5xx_then_succeeds(tmp_path):
    with ChatServer(echo, faults=[429, 500, 503, 429]) as s:
        out = run_generate(study(tmp_path, [s.url]))
        assert len(read_transcripts(out)) == (5 + 6) * 3
        assert s.statuses.count(429) == 2 and 500 in s.statuses and 503 in s.statuses


def test_unreachable_server_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(PersonaDynamicsError, match=f"cannot reach {url}.*server running"):
        run_generate(study(tmp_path, [url]))
    assert time.perf_counter() - start < 10  # no stack of retries


def test_wrong_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("PD_TEST_KEY", "wrong")
    with ChatServer(echo, api_key="right") as s:
        with pytest.raises(
            PersonaDynamicsError, match=r"rejected the API key \(from \$PD_TEST_KEY\)"
        ):
            run_generate(study(tmp_path, [s.url], api_key_env="PD_TEST_KEY"))
        assert s.requests == []
        monkeypatch.setenv("PD_TEST_KEY", "right")
        assert (
            len(read_transcripts(run_generate(study(tmp_path, [s.url], api_key_env="PD_TEST_KEY"))))
            == 33
        )


def test_no_base_url(tmp_path):
    with pytest.raises(
        PersonaDynamicsError, match=r"needs its server's URL: generation\.base_urls"
    ):
        run_generate(study(tmp_path, []))


@pytest.mark.slow
@pytest.mark.skipif(
    not (importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn")),
    reason="`transformers serve` needs the transformers[serving] extra (fastapi, uvicorn)",
)
def test_against_transformers_serve(tmp_path, tiny_model_dir):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            str(tiny_model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "transformers serve exited"
                assert time.time() < deadline, "transformers serve did not come up"
                time.sleep(0.5)
        cfg = study(tmp_path, [url], model=str(tiny_model_dir), max_in_flight=2)
        cfg.roles.question_count = 1
        cfg.roles.include_default = False
        out = run_generate(cfg)
        rows = read_transcripts(out)
        assert len(rows) == 5
        assert all(
            r["finish_reason"] in ("stop", "length") and 0 < r["n_tokens"] <= 7 for r in rows
        )
        man = json.loads((out / "manifest.json").read_text())
        assert str(tiny_model_dir) in {m["id"] for m in man["served"]}
    finally:
        server.kill()
        server.wait()
