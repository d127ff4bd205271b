"""Toy builds cached by content hash, so tests and the demo build a family once and reuse it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from persona_dynamics.toy.data import Source
from persona_dynamics.toy.family import ToyFamily, build, cache_key
from persona_dynamics.toy.spec import ToySpec


def cache_root() -> Path:
    """Cached builds live in `$PERSONA_DYNAMICS_CACHE/toy` or `~/.cache/persona-dynamics/toy`."""
    return (
        Path(os.environ.get("PERSONA_DYNAMICS_CACHE", "~/.cache/persona-dynamics")).expanduser()
        / "toy"
    )


def cached_build(seed: int = 0, spec: ToySpec | None = None) -> ToyFamily:
    """The family for this seed, built once per content hash and reused (tests, the demo)."""
    spec = spec or ToySpec()
    path = cache_root() / cache_key(seed, spec, Source.load())
    if (path / "toy.json").exists():
        return ToyFamily.load(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp, seed, spec)
    try:
        os.replace(tmp, path)
    except OSError:  # a concurrent build of the same key finished first; its files are the same
        shutil.rmtree(tmp)
        if not (path / "toy.json").exists():
            raise
    return ToyFamily.load(path)
