"""Role-play transcripts: build requests, sample them with a backend (hf, vllm, openai), store them.

`run_generate(cfg)` is the stage; what it writes is read through `persona_dynamics.transcripts`.
Backends are imported lazily, so importing this package never loads torch or vllm.
"""

from persona_dynamics.generation.run import run_generate

__all__ = ["run_generate"]
