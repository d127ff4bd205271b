"""Small transcript sets for capture tests: varied lengths, an empty response, tricky starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = [
    "arr",
    "matey",
    "the",
    "sea",
    "be",
    "calling",
    "and",
    "I",
    "answer",
    "with",
    "a",
    "grin",
    "as",
    "an",
    "AI",
    "assistant",
    "happy",
]


def make_rows(n_per_role: int = 12, seed: int = 0) -> list[dict]:
    """Transcript rows of three roles; lengths vary, one response is empty, some start oddly."""
    rng = np.random.default_rng(seed)
    rows = []
    for role in ("default", "pirate", "wizard"):
        for q in range(n_per_role):
            response = " ".join(rng.choice(WORDS, int(rng.integers(1, 60))))
            if q == 1:
                response = " " + response  # leading space
            if q == 2:
                response = "\n\n" + response  # first token merges with the header's newline
            if role == "pirate" and q == 3:
                response = ""
            system = "" if role == "default" else f"You are a {role}."
            messages = [{"role": "user", "content": "Tell me about the sea." * (1 + q % 3)}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            rows.append(
                {
                    "role": role,
                    "system_prompt_idx": q % 2,
                    "question_idx": q,
                    "rollout_idx": 0,
                    "messages": messages,
                    "response": response,
                    "finish_reason": "stop",
                    "n_tokens": 0,
                }
            )
    return rows


TRANSCRIPT_ROWS = make_rows()


def write_transcripts(directory: Path, rows: list[dict]) -> Path:
    """Write rows as `<role>.jsonl` files, the generation stage's layout."""
    directory.mkdir(parents=True, exist_ok=True)
    for role in sorted({r["role"] for r in rows}):
        with open(directory / f"{role}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                if r["role"] == role:
                    f.write(json.dumps({k: v for k, v in r.items() if k != "role"}) + "\n")
    return directory
