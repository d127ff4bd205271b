"""One async client for OpenAI-compatible chat endpoints, shared by generation and the judge.

Built on the `openai` package's AsyncOpenAI, whose timeouts and retries (exponential backoff on
429, 5xx, timeouts and dropped connections, honouring Retry-After) do the HTTP work. On top: many
requests in flight (a fixed pool of workers), several base URLs balanced by the fewest requests in
flight, a short retry for malformed replies, a pre-flight check that turns an unreachable server or
a rejected key into one clear message, and a plain iterator interface for synchronous callers.

A hung server (one that takes the request and never answers) costs at most `worst_case_s`:
every attempt waits `timeout_s`, with the client's backoff between attempts; the defaults of both
config sections keep that near or under two minutes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from persona_dynamics.errors import PersonaDynamicsError

log = logging.getLogger(__name__)

HOSTED = "https://api.openai.com/v1"
BACKOFF_S = (0.5, 8.0)  # the openai client's first wait between attempts (doubling) and its cap


def worst_case_s(timeout_s: float, max_retries: int) -> float:
    """The longest one request can take against a server that never answers."""
    first, cap = BACKOFF_S
    waits = sum(min(cap, first * 2**i) for i in range(max_retries))
    return timeout_s * (max_retries + 1) + waits


@dataclass(frozen=True)
class Call:
    """One chat request: a caller's key, the messages, and sampling parameters."""

    key: object
    messages: list[dict]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """The first choice of a chat completion."""

    text: str
    finish_reason: str | None
    n_tokens: int | None
    model: str | None


def api_key(env: str | None, base_url: str | None) -> str:
    """The API key from the named environment variable; local servers may go without one."""
    value = os.environ.get(env) if env else None
    if value:
        return value
    if base_url is None or base_url.rstrip("/") == HOSTED:
        raise PersonaDynamicsError(
            f"the environment variable {env or 'OPENAI_API_KEY'} holding the API key is not set "
            "(name another with api_key_env)"
        )
    return "EMPTY"


def _reply(resp) -> Reply | None:
    """Read a completion; None when it is malformed (no choices, no message text)."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None
    msg = getattr(choices[0], "message", None)
    text = getattr(msg, "content", None)
    if not isinstance(text, str):
        return None
    usage = getattr(resp, "usage", None)
    n = getattr(usage, "completion_tokens", None)
    return Reply(text, choices[0].finish_reason, n, getattr(resp, "model", None))


class ChatClient:
    """Chat completions against one or more replicas of an OpenAI-compatible server."""

    backoff_s = 0.5  # first wait before re-asking after a malformed reply; doubles, at most 8 s

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        api_key: str = "EMPTY",
        key_env: str | None = None,
        max_in_flight: int = 16,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        setting: str = "timeout_s",
    ):
        if not base_urls:
            raise PersonaDynamicsError("no server URL given (base_url / base_urls is empty)")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.model, self.api_key, self.key_env = model, api_key, key_env
        self.max_in_flight, self.timeout_s, self.max_retries = max_in_flight, timeout_s, max_retries
        self.setting = setting  # the config key to raise when replies are slow, not lost
        self.answered: set[str] = set()  # URLs that answered once: a lost connection is a death

    def _client(self, url: str, retries: int, timeout: float):
        import openai

        return openai.AsyncOpenAI(
            base_url=url, api_key=self.api_key, max_retries=retries, timeout=timeout
        )

    def explain(self, exc: Exception, url: str, timeout_s: float | None = None, n: int = -1) -> str:
        """One line saying what went wrong with a request to `url` and what to do."""
        import openai

        key = f" (from ${self.key_env})" if self.key_env else ""
        n = self.max_retries if n < 0 else n
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return f"{url} rejected the API key{key} ({exc.status_code}): check the key"
        if isinstance(exc, openai.NotFoundError):
            return (
                f"{url}: not found (404); is model '{self.model}' served there, and does the "
                f"URL end in /v1? ({exc.message})"
            )
        if isinstance(exc, openai.RateLimitError):
            return (
                f"{url}: still rate-limited (429) after {n} retries; lower max_in_flight or "
                "raise max_retries"
            )
        if isinstance(exc, openai.APITimeoutError):
            wait = timeout_s or self.timeout_s
            return (
                f"{url} stopped answering: no reply within {wait:g} s, {n + 1} attempt(s); "
                f"is the server stuck? (raise {self.setting} if its replies are just slow)"
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            if url in self.answered:
                return (
                    f"{url} stopped answering mid-run: connection lost after {n + 1} "
                    f"attempt(s) ({cause}); did the server stop or crash?"
                )
            return f"cannot reach {url} ({cause}); is the server running at that address?"
        if isinstance(exc, openai.APIStatusError):
            return f"{url}: server answered {exc.status_code} ({exc.message})"
        return f"{url}: {type(exc).__name__}: {exc}"

    def check(self) -> list[dict]:
        """Ask every replica for its models once, without retries; return what they serve.

        An unreachable server or a rejected key fails here in one message instead of as a
        stack of retries later. A server without /models is accepted (logged).
        """

        async def probe(url: str) -> list[dict]:
            import openai

            wait = min(self.timeout_s, 10.0)
            client = self._client(url, retries=0, timeout=wait)
            try:
                page = await client.models.list()
                self.answered.add(url)
                return [{"base_url": url, **m.model_dump(exclude_none=True)} for m in page.data]
            except openai.NotFoundError:
                self.answered.add(url)
                log.info("%s has no /models endpoint; serving model not recorded", url)
                return []
            except openai.APIError as exc:
                raise PersonaDynamicsError(self.explain(exc, url, wait, 0)) from None
            finally:
                await client.close()

        async def all_() -> list[list[dict]]:
            return await asyncio.gather(*(probe(u) for u in self.base_urls))

        served = [m for ms in asyncio.run(all_()) for m in ms]
        ids = {m.get("id") for m in served}
        if served and self.model not in ids:
            log.warning(
                "model '%s' is not among those listed by the server(s): %s",
                self.model,
                ", ".join(sorted(map(str, ids))),
            )
        return served

    async def _one(self, client, url: str, call: Call) -> Reply:
        import openai

        last = "no reply"
        for attempt in range(self.max_retries + 1):
            try:
                resp = await client.chat.completions.create(
                    model=self.model, messages=call.messages, **call.params
                )
                reply = _reply(resp)
                last = "no choices or no message text"
            except json.JSONDecodeError as exc:
                reply, last = None, f"invalid JSON: {exc.msg}"
            except openai.APIResponseValidationError as exc:
                reply, last = None, exc.message
            except openai.APIError as exc:
                raise PersonaDynamicsError(self.explain(exc, url)) from None
            self.answered.add(url)
            if reply is not None:
                return reply
            log.debug("%s: malformed reply (%s); asking again", url, last)
            await asyncio.sleep(min(8.0, self.backoff_s * 2**attempt))
        raise PersonaDynamicsError(
            f"{url}: malformed replies to one request {self.max_retries + 1} times running ({last})"
        )

    async def _drain(self, calls: Iterable[Call], emit) -> None:
        clients = [self._client(u, self.max_retries, self.timeout_s) for u in self.base_urls]
        load = [0] * len(clients)
        pending = iter(calls)

        async def worker() -> None:
            for call in pending:  # one shared iterator: each call goes to exactly one worker
                i = min(range(len(load)), key=load.__getitem__)
                load[i] += 1
                try:
                    reply = await self._one(clients[i], self.base_urls[i], call)
                finally:
                    load[i] -= 1
                emit(call, reply)

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self.max_in_flight):
                    tg.create_task(worker())
        finally:
            for c in clients:
                await c.close()

    def map(self, calls: Iterable[Call]) -> Iterator[tuple[Call, Reply]]:
        """Send every call, `max_in_flight` at a time; yield (call, reply) as they complete.

        The event loop runs in a background thread, so callers stay synchronous; stopping the
        iteration early cancels what is in flight. The first failure is raised here.
        """
        results: queue.SimpleQueue = queue.SimpleQueue()
        done = object()
        state: dict = {}

        async def main() -> None:
            state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
            await self._drain(calls, lambda c, r: results.put((c, r)))

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                results.put(exc)
            finally:
                results.put(done)

        thread = threading.Thread(target=run, name="chat-client", daemon=True)
        thread.start()
        try:
            while (item := results.get()) is not done:
                if isinstance(item, BaseException):
                    raise _first(item)
                yield item
        finally:
            if thread.is_alive() and "task" in state:
                state["loop"].call_soon_threadsafe(state["task"].cancel)
            thread.join()


def _first(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
