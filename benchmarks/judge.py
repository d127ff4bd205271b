"""Benchmark: judge requests per second through the shared async client against a local server.

Starts the tests' OpenAI-compatible server (`tests/helpers/chat_server.py`) with a fixed answer
delay, standing in for a judge model's latency, then sends the same judge prompts with 1 and with
`--in-flight` requests in flight. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from persona_dynamics.judges import judge_prompt
from persona_dynamics.openai_client import Call, ChatClient

SERVER = Path(__file__).resolve().parents[1] / "tests" / "helpers" / "chat_server.py"


def rate(url: str, n: int, in_flight: int) -> float:
    """Requests per second for n judge requests with `in_flight` at a time."""
    client = ChatClient([url], model="test-model", max_in_flight=in_flight)
    calls = [
        Call(
            i,
            judge_prompt("Talks like a pirate.", f"Question {i}?", f"Arr, answer {i}."),
            {"temperature": 0.0, "max_tokens": 8},
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    done = sum(1 for _ in client.map(calls))
    assert done == n
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--delay", type=float, default=0.05, help="server seconds per answer")
    args = ap.parse_args()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--delay", str(args.delay)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = server.stdout.readline().strip()
        serial = rate(url, max(20, args.requests // 10), 1)
        parallel = rate(url, args.requests, args.in_flight)
    finally:
        server.kill()
        server.wait()
    print(
        json.dumps(
            {
                "benchmark": "judge_client",
                "server_delay_s": args.delay,
                "requests": args.requests,
                "in_flight": args.in_flight,
                "req_s_serial": round(serial, 1),
                "req_s": round(parallel, 1),
                "ratio_vs_serial": round(parallel / serial, 2),
                "ideal_ratio": args.in_flight,
            }
        )
    )


if __name__ == "__main__":
    main()
