"""The vllm backend: its request building as a pure function; the engine only where it exists."""

from __future__ import annotations

import importlib.util

import pytest

from persona_dynamics.config import Checkpoint
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.generation.requests import Request, Sampling
from persona_dynamics.generation.vllm import VLLMGenerator, vllm_inputs
from persona_dynamics.models import load_tokenizer

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


REQS = [
    Request(
        ("pirate", 2, 5),
        ({"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Why?"}),
        (0, 1, 2),
        11,
    ),
    Request(
        ("default", 0, 5), ({"role": "user", "content": "Why?"},), (0, 1, 2), 12, frozenset({0, 2})
    ),
    Request(
        ("default", 1, 5),
        ({"role": "user", "content": "How?"},),
        (0, 1, 2),
        13,
        frozenset({0, 1, 2}),
    ),
]


def test_inputs_are_the_hf_token_ids_and_sampling_params(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    inputs = vllm_inputs(tok, REQS, Sampling(temperature=0.7, top_p=0.9, max_tokens=33))
    assert len(inputs) == 2  # the fully written prompt is not sent
    (p0, s0), (p1, s1) = inputs
    assert tok.decode(p0["prompt_token_ids"]) == (
        "<|endoftext|><|system|>\nBe a pirate.\n<|user|>\nWhy?\n<|assistant|>\n"
    )
    assert tok.decode(p1["prompt_token_ids"]) == "<|endoftext|><|user|>\nWhy?\n<|assistant|>\n"
    assert p0["prompt_token_ids"].count(tok.bos_token_id) == 1  # no second BOS from vLLM
    assert s0 == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 33, "seed": 11}
    assert s1["n"] == 3 and s1["seed"] == 12  # same n and seed as a fresh run: same samples
    greedy = vllm_inputs(tok, REQS[:1], Sampling(temperature=0.0, top_p=0.9, max_tokens=4))
    assert greedy[0][1]["temperature"] == 0.0 and greedy[0][1]["top_p"] == 1.0


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_names_the_extra(tiny_model_dir):
    with pytest.raises(PersonaDynamicsError, match=r"pip install 'persona-dynamics\[vllm\]'"):
        VLLMGenerator(Checkpoint(label="tiny", model=str(tiny_model_dir)))


@pytest.mark.gpu
@pytest.mark.skipif(
    not (HAS_VLLM and has_cuda()),
    reason="the real vllm path needs vllm and a CUDA GPU (neither is required elsewhere)",
)
def test_real_vllm_engine(tiny_model_dir):
    gen = VLLMGenerator(Checkpoint(label="tiny", model=str(tiny_model_dir)), dtype="float32")
    out = [r for b in gen.generate(REQS, Sampling(max_tokens=6)) for r in b]
    assert sorted(r.key for r in out) == [
        ("default", 0, 5, 1),
        ("pirate", 2, 5, 0),
        ("pirate", 2, 5, 1),
        ("pirate", 2, 5, 2),
    ]
    again = {r.key: r.response for b in gen.generate(REQS, Sampling(max_tokens=6)) for r in b}
    assert again == {r.key: r.response for r in out}  # seeded per prompt: reproducible
    assert gen.info()["chat_template_hash"]
