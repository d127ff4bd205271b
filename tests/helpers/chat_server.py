"""A small OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) for the `openai` client:
GET /v1/models and POST /v1/chat/completions. It can be told to answer with scripted faults
(429, 500, a malformed body, a reply without choices), to wait before answering, and to demand an
API key; it records every request and the most requests it held at once.

Run alone (`python tests/helpers/chat_server.py --delay 0.02`) it prints its base URL and serves
forever.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable

FAULTS = {429, 500, 503, "malformed", "nochoices"}


def default_reply(body: dict) -> str:
    """A judge-like answer: 'Score: 3'."""
    return "Score: 3"


class ChatServer:
    """Serve chat completions from a background thread; use as a context manager."""

    def __init__(
        self,
        reply: Callable[[dict], str] = default_reply,
        delay: float = 0.0,
        api_key: str | None = None,
        model: str = "test-model",
        faults: list | None = None,
        fault_for: Callable[[dict], object] | None = None,
    ):
        self.reply, self.delay, self.api_key, self.model = reply, delay, api_key, model
        self.faults = list(faults or [])  # consumed one per chat request, first come first served
        self.fault_for = fault_for  # or decided per request body (None: answer normally)
        self.requests: list[dict] = []
        self.statuses: list[int | str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving (again: nothing); every open connection closes with the loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, v = h.decode().split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, payload, extra = await self._handle(method, path, headers, body)
                head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                head += f"Content-Length: {len(payload)}\r\n\r\n"
                writer.write(head.encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away (a killed subprocess) or the server stops
        finally:
            writer.close()

    async def _handle(self, method: str, path: str, headers: dict, raw: bytes):
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            err = {
                "error": {
                    "message": "Incorrect API key provided",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
            return 401, json.dumps(err).encode(), {}
        if method == "GET" and path.rstrip("/").endswith("/models"):
            data = {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "owned_by": "tests", "root": self.model}
                ],
            }
            return 200, json.dumps(data).encode(), {}
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, b'{"error": {"message": "not found"}}', {}
        body = json.loads(raw)
        self.requests.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            fault = self.faults.pop(0) if self.faults else None
            if fault is None and self.fault_for is not None:
                fault = self.fault_for(body)
            self.statuses.append(fault or 200)
            return self._answer(body, fault)
        finally:
            self.in_flight -= 1

    def _answer(self, body: dict, fault):
        fast_retry = {"retry-after-ms": "5"}
        if fault in (429, 500, 503):
            msg = {"error": {"message": f"scripted {fault}", "type": "server_error"}}
            return fault, json.dumps(msg).encode(), fast_retry
        if fault == "malformed":
            return 200, b'{"id": "x", "choices": [{"message": {"content": "Sco', {}
        if fault == "nochoices":
            return 200, json.dumps({"id": "x", "object": "chat.completion"}).encode(), {}
        content = self.reply(body)
        data = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ],
            "usage": {  # the words, plus the EOS a 'stop' ends with (vLLM counts it)
                "prompt_tokens": 10,
                "completion_tokens": len(content.split()) + 1,
                "total_tokens": 11 + len(content.split()),
            },
        }
        return 200, json.dumps(data).encode(), {}


def main() -> None:
    """Serve until interrupted, printing the base URL on the first line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--model", default="test-model")
    args = ap.parse_args()
    with ChatServer(delay=args.delay, model=args.model) as server:
        print(server.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
