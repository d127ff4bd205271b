"""Tiny random-weight builds of each architecture the model lines use (OLMo-2, OLMo-3, GPT-NeoX).

Real shapes in miniature: head_dim 32 (vLLM's CPU attention needs at least that), OLMo-3's
sliding-window layers with a window shorter than a transcript, GPT-NeoX's parallel residual and
partial rotary. The tokenizer is the toy's, with the OLMo-2 chat template.
"""

from __future__ import annotations

from pathlib import Path

from helpers.tiny import TINY_TEXTS

ARCHS = ("olmo2", "olmo3", "gpt_neox")


def config(arch: str, tok):
    """A 4-block config of `arch` (hidden 64, two heads of 32) for this tokenizer."""
    from transformers import GPTNeoXConfig, Olmo2Config, Olmo3Config

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id, "vocab_size": len(tok)}  # fmt: skip
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 2, "max_position_embeddings": 512}  # fmt: skip
    if arch == "olmo2":
        return Olmo2Config(**ids, **shape, num_key_value_heads=2)
    if arch == "olmo3":
        layer_types = ["sliding_attention"] * 3 + ["full_attention"]
        return Olmo3Config(
            **ids, **shape, num_key_value_heads=2, sliding_window=8, layer_types=layer_types
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(**ids, **shape, rotary_pct=0.25, use_parallel_residual=True)
    raise ValueError(arch)


def write_tiny(out: Path, arch: str = "olmo2", seed: int = 0) -> Path:
    """Save an untrained causal LM of `arch` (weights drawn from `seed`) with the chat tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from persona_dynamics.toy import build_tokenizer

    tok = build_tokenizer(TINY_TEXTS, vocab_size=512)
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config(arch, tok)).save_pretrained(out)
    return out
