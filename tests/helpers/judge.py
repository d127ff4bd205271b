"""A planted judge run: transcripts whose responses name their score, and a judge that reads it."""

from __future__ import annotations

import re

from persona_dynamics.config import Study
from persona_dynamics.generation.requests import messages_for
from persona_dynamics.jsonl import Appender
from persona_dynamics.roles import load_questions, load_roles
from persona_dynamics.transcripts import transcripts_dir

from helpers.paths import QUESTIONS, ROLES_DIR
from helpers.study import make_study

FOUR_QUESTIONS = {"dir": str(ROLES_DIR), "questions": str(QUESTIONS), "question_count": 4}

PLANTED = re.compile(r"<response>\nplanted:(\w)\n</response>")


def planted_judge(body: dict) -> str:
    """Answer like a judge would: the planted digit, in a few real-looking forms, or junk."""
    m = PLANTED.search(body["messages"][-1]["content"])
    s = m.group(1) if m else "?"
    if not s.isdigit():
        return "Hard to say; the response is ambiguous."
    return {"0": "0", "1": "Score: 1", "2": '{"score": 2}', "3": "**Score:** 3"}[s]


def judge_study(root, url, **judge) -> Study:
    """A study judged over the openai backend at `url` (four questions, a key nobody has)."""
    return make_study(
        root,
        run_name="j",
        roles=FOUR_QUESTIONS,
        judge={
            "backend": "openai",
            "base_url": url,
            "model": "test-judge",
            "api_key_env": "PD_NO_SUCH_KEY",
            **judge,
        },
    )


def plant(cfg, roles=("pirate", "cat"), n_prompts=2) -> dict:
    """Write transcripts whose responses name the score a judge should give; return the truth."""
    out = transcripts_dir(cfg)
    qs = load_questions(QUESTIONS, 4)
    truth = {}
    for role in [*load_roles(ROLES_DIR, list(roles)), *[None]]:
        name = role.name if role else "default"
        with Appender(out / f"{name}.jsonl") as w:
            rows = []
            for spi in range(n_prompts):
                for q in qs:
                    score = "x" if (spi + 2 * q.id) % 5 == 4 else str((spi * 3 + q.id) % 4)
                    system = role.instructions[spi] if role else ""
                    rows.append(
                        {
                            "system_prompt_idx": spi,
                            "question_idx": q.id,
                            "rollout_idx": 0,
                            "messages": list(messages_for(system, q.question)),
                            "response": f"planted:{score}",
                            "finish_reason": "stop",
                            "n_tokens": 2,
                        }
                    )
                    if role:
                        truth[(name, spi, q.id, 0)] = None if score == "x" else int(score)
            w.write(rows)
    return truth
