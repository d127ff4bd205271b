"""A tiny random OLMo-2 model (weights, no training) for tests that need a real model."""

from __future__ import annotations

from pathlib import Path

TINY_TEXTS = [
    "Arr, matey! The sea be calling and I answer with a grin.",
    "As an AI assistant, I am happy to help you with that question.",
    "Verily, the stars foretell a journey of great consequence.",
    "Let me walk you through the numbers step by step.",
    "Purr. I nap in the sun and care little for your schedule.",
    " leading spaces, tabs\tand\nnewlines matter to the span rule.",
] * 40


def write_tiny_model(out: Path) -> Path:
    """Save an untrained Olmo2ForCausalLM (4 layers, hidden 64) and the OLMo-2 chat tokenizer."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from persona_dynamics.toy import build_tokenizer

    tok = build_tokenizer(TINY_TEXTS, vocab_size=512)
    tok.save_pretrained(out)
    cfg = Olmo2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    Olmo2ForCausalLM(cfg).save_pretrained(out)
    return out
