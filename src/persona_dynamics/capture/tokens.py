"""Tokenize transcripts once, with the reference checkpoint's tokenizer and chat format.

The same token ids then go to every checkpoint and adapter (docs/contracts.md: tokens digest), so
only the weights differ between labels. Ids are kept as int32 arrays: a Python list of ints costs
about ten times the memory, and a paper-scale run holds ~130M tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from persona_dynamics.chat import encode
from persona_dynamics.store import Key


@dataclass(frozen=True)
class Sample:
    """One transcript as the models read it: its key, token ids and response token range."""

    key: Key
    ids: np.ndarray
    start: int
    end: int

    @property
    def n_response(self) -> int:
        return self.end - self.start


def row_key(row: dict) -> Key:
    """The (role, system_prompt_idx, question_idx, rollout_idx) key of a transcript row."""
    return (
        row["role"],
        int(row["system_prompt_idx"]),
        int(row["question_idx"]),
        int(row["rollout_idx"]),
    )


def tokenize(rows: list[dict], tokenizer) -> list[Sample]:
    """Render and tokenize every transcript (messages + response); span by chat.SPAN_RULE."""
    out = []
    for row in tqdm(rows, desc="tokenize", unit="transcript", mininterval=2):
        enc = encode(tokenizer, row["messages"], row["response"])
        out.append(Sample(row_key(row), np.asarray(enc.input_ids, np.int32), enc.start, enc.end))
    return out


def tokens_digest(samples: list[Sample]) -> str:
    """Content hash of (key, ids, span) over all samples, independent of their order."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.key):
        h.update(repr((s.key, s.start, s.end, len(s.ids))).encode())
        h.update(s.ids.astype("<i4").tobytes())
    return h.hexdigest()[:16]
