"""Role-play transcripts: build requests, sample them with a backend (hf, vllm, openai), store them.

`run_generate(cfg)` is the stage; `read_transcripts` and `transcripts_dir` are what later stages
read. Backends are imported lazily, so reading transcripts never loads torch or vllm.
"""

from persona_dynamics.generation.run import run_generate
from persona_dynamics.generation.store import read_transcripts, transcripts_digest, transcripts_dir

__all__ = ["read_transcripts", "run_generate", "transcripts_digest", "transcripts_dir"]
