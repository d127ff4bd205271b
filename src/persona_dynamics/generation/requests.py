"""What to sample, as pure data: the requests every backend consumes, built once, here.

A request is one prompt (a role's system prompt, filled, plus one question) with its rollouts,
those already written marked. Every backend samples from these exact messages, so the text a
transcript records is the text the model was asked with. Seeds derive from the key, never from
the batch, so a rerun, a resume or a shard samples each key with the same seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_dynamics.chat import Message, prompt_text
from persona_dynamics.config import WHOLE, Shard, Study
from persona_dynamics.models import is_local
from persona_dynamics.roles import Question, Role


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters shared by every backend (temperature 0 means greedy)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int = 0


@dataclass(frozen=True)
class Request:
    """One prompt to sample: an id (role, system_prompt_idx, question_idx for transcripts),
    its exact messages, its rollout indices, those already written, and a seed from the id.

    Written rollouts stay in the request so that a backend can plan the same batches as an
    uninterrupted run would (the hf backend then reproduces its texts bit for bit).
    """

    id: tuple
    messages: tuple[Message, ...]
    rollouts: tuple[int, ...]
    seed: int
    done: frozenset[int] = frozenset()

    @property
    def todo(self) -> tuple[int, ...]:
        """The rollouts still to write."""
        return tuple(k for k in self.rollouts if k not in self.done)

    def rollout_seed(self, rollout: int) -> int:
        """The seed of one rollout: a function of the request's seed and the rollout index only."""
        return derive_seed(self.seed, rollout)


@dataclass(frozen=True)
class Result:
    """One sampled response for (request, rollout)."""

    request: Request
    rollout: int
    response: str
    finish_reason: str
    n_tokens: int

    @property
    def key(self) -> tuple:
        return (*self.request.id, self.rollout)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from a base seed and key parts (stable across processes and platforms)."""
    blob = json.dumps([seed, *parts], default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def shard_of(prompt_id: tuple, n: int) -> int:
    """Which of n shards owns a prompt: a stable hash, so shards never overlap and need no list."""
    blob = json.dumps(list(prompt_id)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") % n


def display_name(cfg: Study) -> str:
    """The name that fills {model_name}: configured, else the model id's last part."""
    if cfg.generation.model_display_name:
        return cfg.generation.model_display_name
    ckpt = cfg.generating_checkpoint()
    return Path(ckpt.model).name if is_local(ckpt.model) else ckpt.model.rsplit("/", 1)[-1]


def fill(text: str, model_name: str) -> str:
    """Fill the {model_name} placeholder (plain replace: prompts may hold other braces)."""
    return text.replace("{model_name}", model_name)


def messages_for(system: str, question: str) -> tuple[Message, ...]:
    """The chat messages of one prompt; an empty system prompt means no system message."""
    user = {"role": "user", "content": question}
    return ({"role": "system", "content": system}, user) if system else (user,)


def build_requests(
    roles: Sequence[Role],
    questions: dict[str, list[Question]],
    model_name: str,
    num_rollouts: int,
    seed: int,
    done: dict[str, set[tuple]] | None = None,
    shard: Shard = WHOLE,
) -> list[Request]:
    """Every (role, system prompt, question) of this shard, marking the rollouts in `done`.

    `done` maps a role to the (system_prompt_idx, question_idx, rollout_idx) keys already written.
    """
    done = done or {}
    out = []
    for role in roles:
        have = done.get(role.name, set())
        for spi, system in enumerate(role.instructions):
            system = fill(system, model_name)
            for q in questions[role.name]:
                pid = (role.name, spi, q.id)
                if shard.count > 1 and shard_of(pid, shard.count) != shard.index:
                    continue
                written = frozenset(r for r in range(num_rollouts) if (spi, q.id, r) in have)
                msgs = messages_for(system, q.question)
                seed_ = derive_seed(seed, *pid)
                out.append(Request(pid, msgs, tuple(range(num_rollouts)), seed_, written))
    return out


def encode_prompt(tokenizer, messages: Iterable[Message]) -> list[int]:
    """Token ids of the chat-templated prompt, exactly as the hf and vllm backends feed them."""
    text = prompt_text(tokenizer, list(messages))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_tokens(generated: int, finish_reason: str) -> int:
    """`n_tokens` as the hf backend counts it: the tokens generated, the end-of-sequence not.

    vLLM (offline and served) and `transformers serve` count the EOS a 'stop' ends with.
    """
    return max(generated - (finish_reason == "stop"), 0)
