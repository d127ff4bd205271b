"""The one interface every sampling backend (hf, vllm, openai) implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from persona_dynamics.generation.requests import Request, Result, Sampling


class Generator(Protocol):
    """A sampling backend: results come back batch by batch so the caller can write as it goes."""

    name: str

    def info(self) -> dict:
        """What identifies the sampler, for the manifest (model, revision, commit, template...)."""
        ...

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[list[Result]]:
        """Sample every wanted rollout of every request; yield results in batches."""
        ...

    def close(self) -> None:
        """Release the model or connections."""
        ...


def resolve_backend(backend: str) -> str:
    """'auto' is vllm where CUDA and vllm are both present, else hf."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None
    return "vllm" if torch.cuda.is_available() and has_vllm else "hf"
