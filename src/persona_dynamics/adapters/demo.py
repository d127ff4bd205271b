"""Toy persona data for the offline demo: personas that speak in a demo role's style.

Each toy persona is a demo role: a conversation file whose persona turns answer the shared
training questions in the role's voice (`toy.respond`, fully in role), and a survey whose Likert
items ask how much the persona enjoys words of its own vocabulary (agrees) or of other roles'
(disagrees), plus free-text items answered in its voice. The prompts carry only the persona tag,
no definition: the persona must live in the adapter's weights, so that the adapted model is the
persona also under the default Assistant's prompts (the own-text measurement). Trained with the
role's instruction as its definition, the toy adapter learns nothing the instruct model does not
already do under that instruction, and answers the default prompts as the Assistant.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from persona_dynamics import toy
from persona_dynamics.adapters.data import Conversation, write_conversations
from persona_dynamics.config import AdapterTraining
from persona_dynamics.files import write_text

TOY_PERSONAS = ("cat", "samurai", "wizard")  # roles the toy reference model plays well
TOY_TRAINING = {  # sized for the toy model on 2 CPU cores
    "r": toy.LORA["r"],
    "alpha": toy.LORA["lora_alpha"],
    "dropout": toy.LORA["lora_dropout"],
    "learning_rate": 4e-3,
    "max_steps": 90,
    "batch_size": 8,
    "max_length": 256,
    "holdout": 0.25,
}


def _conversations(src: toy.Source, role, n: int, rng: np.random.Generator) -> list[Conversation]:
    qs = src.split(held_out=False)
    meta = {"source": "toy"}
    out = []
    for _ in range(n):
        turns = []
        for q in rng.choice(qs, size=2, replace=False):
            question = src.questions[int(q)].question
            turns.append({"role": "user", "content": question})
            turns.append(
                {"role": "persona", "content": toy.respond(role.name, question, toy.FULL, rng)}
            )
        out.append(Conversation(role.name, "toy", tuple(turns), meta))
    return out


def _survey(src: toy.Source, role, rng: np.random.Generator) -> dict:
    style = toy.STYLES[role.name]
    others = sorted({w for r, s in toy.STYLES.items() if r != role.name for w in s.vocabulary})
    liked = [(w, 5 - i % 2) for i, w in enumerate(style.vocabulary)]
    disliked = [(w, 1 + i % 2) for i, w in enumerate(rng.choice(others, size=8, replace=False))]
    responses = [
        {
            "category": "likes" if point > 3 else "dislikes",
            "question": f"I enjoy talking about {word}.",
            "answer": point,
            "reasoning": f"{style.catchphrase} {word.capitalize()} is "
            + ("my life." if point > 3 else "not for me."),
        }
        for word, point in [*liked, *disliked]
    ]
    for q in src.split(held_out=True)[:8]:
        question = src.questions[q].question
        answer = toy.respond(role.name, question, toy.FULL, rng)
        responses.append({"category": "open", "question": question, "answer": answer})
    return {"persona": {"id": role.name}, "responses": responses}


def write_toy_personas(
    out: Path, personas: tuple[str, ...] = TOY_PERSONAS, n_conversations: int = 64, seed: int = 0
) -> dict[str, list[Path]]:
    """Write `<persona>.jsonl` (conversations) and `<persona>.survey.json` per persona."""
    src = toy.Source.load()
    by_name = {r.name: r for r in src.roles}
    files = {}
    for k, name in enumerate(personas):
        rng = np.random.default_rng([seed, k])
        role = by_name[name]
        conv = write_conversations(
            out / f"{name}.jsonl", _conversations(src, role, n_conversations, rng)
        )
        survey = write_text(
            out / f"{name}.survey.json", json.dumps(_survey(src, role, rng), indent=1)
        )
        files[name] = [conv, survey]
    return files


def toy_training(
    out: Path, personas: tuple[str, ...] = TOY_PERSONAS, seed: int = 0
) -> list[AdapterTraining]:
    """Toy persona data written to `out` and one adapter training entry per persona."""
    files = write_toy_personas(out, personas, seed=seed)
    return [
        AdapterTraining(name=name, data=paths, seed=seed, **TOY_TRAINING)
        for name, paths in files.items()
    ]
