"""A ready study config over a built toy family: what the demo and the end-to-end tests run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona_dynamics.toy.data import DEMO_ROLES, MODEL_NAME
from persona_dynamics.toy.drift import TURNS
from persona_dynamics.toy.family import ToyFamily
from persona_dynamics.toy.traits import TRAITS


def study_config(family: ToyFamily, run_name: str, output_root: str | Path, **overrides: Any):
    """A ready `Study` over the toy family (local checkpoints, `instruct` reference, demo roles,
    20 questions, hf generation, the toy judge on the local backend, drift over the shipped
    scripts' first turns the plant covers, the family's planted trait files).

    `overrides` set dotted keys written with `__` (`roles__question_count=5`), or merge a
    section given as a dict (`generation={"num_rollouts": 2}`).
    """
    from persona_dynamics.config import parse, set_dotted

    data: dict[str, Any] = {
        "run_name": run_name,
        "output_root": str(output_root),
        "reference": "instruct",
        "checkpoints": [{"label": s, "model": str(p)} for s, p in family.checkpoints.items()],
        "roles": {
            "include": list(DEMO_ROLES),
            "question_count": 20,
        },
        "generation": {"backend": "hf", "model_display_name": MODEL_NAME, "max_tokens": 128},
        "judge": {"backend": "local", "model": str(family.judge), "max_tokens": 4},
        "capture": {"layers": "all"},
        "drift": {"turns": TURNS, "max_tokens": 48},
        "traits": {"specs": [str(family.root / "traits" / f"{t}.json") for t in TRAITS]},
    }
    for key, value in overrides.items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in items:
            set_dotted(data, ".".join(filter(None, [key.replace("__", "."), sub])), v)
    return parse(data, f"toy study '{run_name}'")
