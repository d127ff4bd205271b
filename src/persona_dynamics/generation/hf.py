"""The transformers backend: batched `generate` for CPUs and GPUs without vLLM.

Prompts are sorted by length and packed into batches under a token budget, left-padded. Each row
samples with its own counter-based random stream (`uniforms`: draw t of a rollout is a function
of its seed and t alone), so a rollout's text does not depend on which rows share its batch,
up to float noise: another batch shape changes logits in the last bits, which moves a draw only
when it falls on a boundary. Measured batched against alone (benchmarks/generate.py, random
weights, whose flat distributions make flips likeliest): 98% of 64 texts of 32 tokens identical
on CPU in float32, none on an H100 in bfloat16. A resumed run therefore replays the exact batches
of an uninterrupted one, and the same config and seed give the same text on the same machine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext

from persona_dynamics.chat import template_hash
from persona_dynamics.config import Checkpoint
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.generation.requests import Request, Result, Sampling, encode_prompt
from persona_dynamics.interventions import Intervention
from persona_dynamics.models import load_model, load_tokenizer, resolve_commit
from persona_dynamics.steering.apply import steer

log = logging.getLogger(__name__)


def plan_batches(lengths: list[int], max_new: int, budget: int) -> list[list[int]]:
    """Indices grouped into batches, longest prompts first, each within `budget` tokens.

    A batch costs (its longest prompt + max_new) per row, padding included; one row always fits.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            b = batches[-1]
            width = lengths[b[0]] + max_new
            if (len(b) + 1) * width <= budget:
                b.append(i)
                continue
        batches.append([i])
    return batches


M64 = 1 << 64


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 torch stores (two's complement)."""
    c %= M64
    return c - M64 if c >= 1 << 63 else c


def _lsr(z, k: int):
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def uniforms(seeds, step: int):
    """Uniforms in [0, 1): the `step`-th output of SplitMix64 seeded with each row's seed.

    Counter-based, so a rollout's t-th draw is a function of (seed, t) alone: no generator state,
    nothing per row in Python, the same numbers on CPU and GPU. int64 arithmetic wraps as the
    algorithm needs.
    """
    z = seeds + _signed((step + 1) * 0x9E3779B97F4A7C15)
    z = (z ^ _lsr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _lsr(z, 27)) * _signed(0x94D049BB133111EB)
    z = z ^ _lsr(z, 31)
    return _lsr(z, 11).double() * 2.0**-53


def seeded_sampler(seeds: list[int], temperature: float, top_p: float, width: int):
    """A LogitsProcessor that samples every row with its own seed (see `SeededSampler`)."""
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        """Temperature, then nucleus (top-p) sampling by inverse CDF with one uniform per row.

        Row i's t-th token uses `uniforms(seed_i, t)`, whatever else is in the batch. The chosen
        token is returned as the only finite score, so `generate`'s greedy step selects it.
        Temperature 0 is plain argmax.
        """

        def __init__(self):
            self.seeds = torch.tensor(seeds, dtype=torch.int64)

        def __call__(self, input_ids, scores):
            if temperature == 0:
                choice = scores.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(scores.float() / temperature, dim=-1)
                p, idx = probs.sort(-1, descending=True)
                p = p * ((p.cumsum(-1) - p) < top_p)  # keep the smallest set reaching top_p
                cdf = p.cumsum(-1)
                self.seeds = self.seeds.to(cdf.device)
                u = uniforms(self.seeds, input_ids.shape[1] - width).to(cdf.dtype)
                pos = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
                choice = idx.gather(1, pos.clamp(max=idx.shape[1] - 1))
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, choice, 0.0)

    return SeededSampler()


class HFGenerator:
    """Sample with a transformers model: length-sorted, token-budgeted, left-padded batches."""

    name = "hf"

    def __init__(
        self,
        ckpt: Checkpoint,
        device: str = "auto",
        dtype: str = "auto",
        batch_tokens: int = 16384,
        intervention: Intervention | None = None,
    ):
        commit = resolve_commit(ckpt.model, ckpt.revision)  # once: tokenizer and weights load at it
        self.tokenizer = load_tokenizer(ckpt.model, commit or ckpt.revision)
        self.template = template_hash(self.tokenizer)  # refuses a model without a chat template
        self.loaded = load_model(ckpt, device, dtype, commit=commit)
        self.model = self.loaded.model
        self.ckpt = ckpt
        self.batch_tokens = batch_tokens
        self.intervention = intervention
        cfg_eos = self.model.generation_config.eos_token_id
        eos = cfg_eos if isinstance(cfg_eos, list) else [cfg_eos]
        self.eos = sorted({t for t in [*eos, self.tokenizer.eos_token_id] if t is not None})
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else self.eos[0]
        self.context = getattr(self.model.config, "max_position_embeddings", None)

    def info(self) -> dict:
        return {
            "backend": self.name,
            "model": self.ckpt.model,
            "revision": self.ckpt.revision,
            "commit": self.loaded.commit,
            "adapter": self.ckpt.adapter,
            "chat_template_hash": self.template,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "intervention": self.intervention and self.intervention.describe(),
        }

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[list[Result]]:
        """Yield the new results of one batch at a time, longest prompts first.

        Batches are planned over every rollout, written or not, so a resumed run samples exactly
        the batches an uninterrupted one would; batches already written are skipped.
        """
        ids = {r.id: encode_prompt(self.tokenizer, r.messages) for r in requests}
        rows = [(r, k) for r in requests for k in r.rollouts]
        lengths = [len(ids[r.id]) for r, _ in rows]
        if self.context and lengths and max(lengths) + sampling.max_tokens > self.context:
            worst = rows[lengths.index(max(lengths))][0]
            raise PersonaDynamicsError(
                f"prompt {worst.id} is {max(lengths)} tokens; with max_tokens "
                f"{sampling.max_tokens} it exceeds the model's context of {self.context}"
            )
        for batch in plan_batches(lengths, sampling.max_tokens, self.batch_tokens):
            todo = [rows[i] for i in batch]
            if any(k not in r.done for r, k in todo):  # rerun a partly written batch whole
                yield [x for x in self._run(todo, ids, sampling) if x.rollout not in x.request.done]

    def _run(self, rows, ids, sampling: Sampling) -> list[Result]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        prompts = [ids[r.id] for r, _ in rows]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=sampling.max_tokens,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
        )
        sampler = seeded_sampler(
            [r.rollout_seed(k) for r, k in rows], sampling.temperature, sampling.top_p, width
        )
        edit = steer(self.model, self.intervention) if self.intervention else nullcontext()
        with torch.inference_mode(), edit as steering:
            if steering is not None:  # a prompt ends where its tokens do; the rest is response
                steering.spans([len(p) for p in prompts])
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        results = []
        for (req, k), new in zip(rows, out[:, width:].tolist(), strict=True):
            stop = next((i for i, t in enumerate(new) if t in self.eos), None)
            toks = new if stop is None else new[:stop]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            reason = "length" if stop is None else "stop"
            results.append(Result(req, k, text, reason, len(toks)))
        return results

    def close(self) -> None:
        self.model = None
