"""Shared fixtures: a tiny random OLMo-2 model (weights, no training) and the toy organism."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_dynamics.roles import shipped_dir, shipped_questions

ROOT = Path(__file__).resolve().parents[1]
ROLES_DIR = shipped_dir()
QUESTIONS = shipped_questions()

TINY_TEXTS = [
    "Arr, matey! The sea be calling and I answer with a grin.",
    "As an AI assistant, I am happy to help you with that question.",
    "Verily, the stars foretell a journey of great consequence.",
    "Let me walk you through the numbers step by step.",
    "Purr. I nap in the sun and care little for your schedule.",
    " leading spaces, tabs\tand\nnewlines matter to the span rule.",
] * 40


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained Olmo2ForCausalLM (4 layers, hidden 64) with the OLMo-2 chat tokenizer."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from persona_dynamics.toy import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-olmo2")
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


@pytest.fixture(scope="session")
def toy_family():
    """The toy organism, built once per content hash (about two minutes) and then reused."""
    from persona_dynamics.toy import cached_build

    return cached_build()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, toy_family):
    """The offline demo, run once per test session: every stage on the toy organism."""
    from persona_dynamics.pipeline import demo_config, run_study

    out = tmp_path_factory.mktemp("demo")
    cfg = demo_config(out)
    outputs = run_study(cfg)
    return cfg, outputs
