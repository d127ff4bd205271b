"""The vLLM backend for GPUs: a thin adapter over `vllm.LLM`.

All decisions live in `vllm_inputs`, a pure function tested without vLLM: prompts are token ids
of the same chat-templated text the hf backend feeds (so vLLM adds no BOS of its own), and each
prompt samples its missing rollouts with `n` and a seed derived from its key. Prefix caching is on,
since all prompts of a role share their system prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from persona_dynamics.chat import template_hash
from persona_dynamics.config import Checkpoint
from persona_dynamics.errors import PersonaDynamicsError, require
from persona_dynamics.generation.requests import Request, Result, Sampling, encode_prompt
from persona_dynamics.models import is_local, load_tokenizer, resolve_commit, unresolved

log = logging.getLogger(__name__)

CHUNK = 2048  # prompts per `LLM.generate` call: results are written after each


def vllm_inputs(tokenizer, requests: list[Request], sampling: Sampling) -> list[tuple[dict, dict]]:
    """(prompt, sampling-params kwargs) per request: what `LLM.generate` receives, as plain data.

    `n` is every rollout of the prompt, written or not; with the prompt's seed vLLM draws the
    same n samples each time, and the caller keeps those still to write. Prompts with nothing
    left to write are not sent.
    """
    out = []
    for r in requests:
        if not r.todo:
            continue
        prompt = {"prompt_token_ids": encode_prompt(tokenizer, r.messages)}
        params = {
            "n": len(r.rollouts),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
            "max_tokens": sampling.max_tokens,
            "seed": r.seed,
        }
        out.append((prompt, params))
    return out


class VLLMGenerator:
    """Sample with vLLM's offline engine on the local GPUs."""

    name = "vllm"

    def __init__(
        self,
        ckpt: Checkpoint,
        dtype: str = "auto",
        seed: int = 0,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
    ):
        self.vllm = require("vllm", "vllm")
        if ckpt.adapter:
            raise PersonaDynamicsError(
                f"checkpoint '{ckpt.label}': the vllm backend does not apply adapters; "
                "generate from the base weights or use backend 'hf'"
            )
        self.ckpt = ckpt
        self.commit = resolve_commit(ckpt.model, ckpt.revision)  # once: everything loads at it
        revision = None if is_local(ckpt.model) else (self.commit or ckpt.revision)
        self.tokenizer = load_tokenizer(ckpt.model, revision or ckpt.revision)
        self.template = template_hash(self.tokenizer)
        self.llm = self.vllm.LLM(
            model=ckpt.model,
            revision=revision,
            tokenizer_revision=revision,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
        )
        unresolved(ckpt.model, ckpt.revision, self.commit)

    def info(self) -> dict:
        return {
            "backend": self.name,
            "model": self.ckpt.model,
            "revision": self.ckpt.revision,
            "commit": self.commit,
            "chat_template_hash": self.template,
            "vllm_version": self.vllm.__version__,
        }

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[list[Result]]:
        """Yield the results of each chunk of prompts; vLLM schedules within a chunk."""
        requests = [r for r in requests if r.todo]
        for start in range(0, len(requests), CHUNK):
            chunk = requests[start : start + CHUNK]
            inputs = vllm_inputs(self.tokenizer, chunk, sampling)
            params = [self.vllm.SamplingParams(**p) for _, p in inputs]
            outs = self.llm.generate([p for p, _ in inputs], params, use_tqdm=False)
            results = []
            for req, out in zip(chunk, outs, strict=True):
                for c in out.outputs:
                    if c.index in req.todo:
                        ids = list(c.token_ids)
                        n = len(ids) - (bool(ids) and ids[-1] == self.tokenizer.eos_token_id)
                        reason = c.finish_reason or "length"
                        results.append(Result(req, c.index, c.text, reason, n))
            yield results

    def close(self) -> None:
        self.llm = None
