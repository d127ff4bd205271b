"""Activation capture: transcripts -> token ids (once) -> batch plan -> backend -> HDF5 stores.

`tokens` tokenizes with the reference chat format, `plan` packs batches under a token budget,
`backends` reads block outputs (hooks, nnsight, TransformerLens) next to a one-at-a-time oracle,
`parts` keeps the crash-safe part files and consolidates them, and `run` drives checkpoints,
resume and shards.
"""

from persona_dynamics.capture.run import merge, run_capture

__all__ = ["merge", "run_capture"]
