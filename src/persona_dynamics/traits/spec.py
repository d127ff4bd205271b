"""Trait specs: contrasting system prompts, questions and a 0-100 judge rubric per trait.

The format is persona_vectors' (`{"instruction": [{"pos", "neg"}, ...], "questions": [...],
"eval_prompt": "... {question} ... {answer} ..."}`), read as is; the trait's name is the file's
stem. `parse_100` reads a 0-100 judge answer; `COHERENCE` is the coherence rubric every trait
shares (ours, written here), filled the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from persona_dynamics.errors import PersonaDynamicsError

COHERENCE = (
    "Rate how coherent the answer below is, on its own terms, from 0 to 100: 0 is gibberish or "
    "off-topic, 50 is understandable but muddled, 100 is clear, fluent and on topic. Ignore "
    "whether you agree with it or how it sounds.\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n\n"
    "Reply with the number only."
)
_NUMBER = re.compile(r"(?<![\d.])(100|[1-9]?\d)(?![\d.]\d|\d)")


@dataclass(frozen=True)
class Trait:
    """One trait: (positive, negative) system prompt pairs, questions, the trait rubric."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    questions: tuple[str, ...]
    rubric: str
    path: Path


def load_trait(path: Path) -> Trait:
    """A persona_vectors trait file, checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaDynamicsError(f"{path}: not a readable trait file ({exc})") from None
    inst, qs, rubric = data.get("instruction"), data.get("questions"), data.get("eval_prompt")
    if not isinstance(inst, list) or not inst:
        raise PersonaDynamicsError(f"{path}: 'instruction' must be a list of {{pos, neg}} pairs")
    for i, pair in enumerate(inst):
        if not (isinstance(pair, dict) and isinstance(pair.get("pos"), str)
                and isinstance(pair.get("neg"), str)):  # fmt: skip
            raise PersonaDynamicsError(f"{path}: instruction[{i}] needs text 'pos' and 'neg'")
    if not isinstance(qs, list) or not qs or not all(isinstance(q, str) for q in qs):
        raise PersonaDynamicsError(f"{path}: 'questions' must be a list of text")
    if not isinstance(rubric, str) or "{question}" not in rubric or "{answer}" not in rubric:
        raise PersonaDynamicsError(
            f"{path}: 'eval_prompt' must be text holding {{question}} and {{answer}}"
        )
    pairs = tuple((p["pos"], p["neg"]) for p in inst)
    return Trait(path.stem, pairs, tuple(qs), rubric, path)


def fill(rubric: str, question: str, answer: str) -> list[dict]:
    """The judge's messages for one answer."""
    return [{"role": "user", "content": rubric.replace("{question}", question).replace(
        "{answer}", answer)}]  # fmt: skip


def parse_100(text: str | None) -> int | None:
    """The 0-100 number of a judge's answer ('73', 'Score: 73'), or None (refusals, none, two)."""
    if not text:
        return None
    found = set(_NUMBER.findall(text))
    return int(found.pop()) if len(found) == 1 else None
