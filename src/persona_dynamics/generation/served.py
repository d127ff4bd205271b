"""The openai backend: sample from any OpenAI-compatible server (`vllm serve`, SGLang,
`transformers serve`), one base URL or several replicas, many requests in flight.

This is how a study runs vLLM at scale across machines. Each rollout is one request with its own
seed, so replicas share the work evenly and a resumed run asks for exactly the missing keys. The
server applies its model's chat template to the recorded messages. A checkpoint with an adapter
asks for the model named by its label, which the server serves as a LoRA module (README).
"""

from __future__ import annotations

from collections.abc import Iterator

from persona_dynamics.config import Checkpoint, Generation
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.generation.requests import Request, Result, Sampling, response_tokens
from persona_dynamics.openai_client import Call, ChatClient, api_key

CHUNK = 64  # results per yielded batch (each batch is one durable write)


def served_model(ckpt: Checkpoint) -> str:
    """The model a request names: the checkpoint's model, or for an adapter its label (vLLM's
    `--lora-modules LABEL=DIR`)."""
    return ckpt.label if ckpt.adapter else ckpt.model


class ServedGenerator:
    """Sample through the shared async chat client."""

    name = "openai"

    def __init__(self, ckpt: Checkpoint, gen: Generation):
        if not gen.base_urls:
            raise PersonaDynamicsError(
                "the openai backend needs its server's URL: generation.base_urls (or --base-url)"
            )
        self.ckpt = ckpt
        self.client = ChatClient(
            gen.base_urls,
            model=served_model(ckpt),
            api_key=api_key(gen.api_key_env, gen.base_urls[0]),
            key_env=gen.api_key_env,
            max_in_flight=gen.max_in_flight,
            timeout_s=gen.timeout_s,
            max_retries=gen.max_retries,
            setting="generation.timeout_s",
        )
        self.served = self.client.check()

    def info(self) -> dict:
        revisions = sorted({str(m["revision"]) for m in self.served if "revision" in m})
        return {
            "backend": self.name,
            "model": self.ckpt.model,
            "revision": self.ckpt.revision,
            "commit": None,
            "adapter": self.ckpt.adapter,
            "served_model": self.client.model,
            "chat_template_hash": None,  # applied by the server
            "base_urls": self.client.base_urls,
            "served": self.served,
            "served_revision": revisions[0] if len(revisions) == 1 else (revisions or None),
        }

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[list[Result]]:
        """Yield results in completion order, CHUNK at a time."""
        calls = [
            Call(
                (req, k),
                list(req.messages),
                {
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p,
                    "max_tokens": sampling.max_tokens,
                    "seed": req.rollout_seed(k) >> 32,  # 31 bits: what every server accepts
                },
            )
            for req in requests
            for k in req.todo
        ]
        batch: list[Result] = []
        for call, reply in self.client.map(calls):
            req, k = call.key
            reason = reply.finish_reason or "stop"
            n = response_tokens(reply.n_tokens or 0, reason)
            batch.append(Result(req, k, reply.text, reason, n))
            if len(batch) >= CHUNK:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        """Nothing held between calls: each `map` opens and closes its connections."""
