"""One builder for the studies tests run: a validated config with test defaults."""

from __future__ import annotations

from pathlib import Path

from persona_dynamics.config import Study, parse

CHECKPOINT = {"label": "m", "model": "org/model"}


def make_study(root: Path, **sections) -> Study:
    """A Study with output_root `root`, run "t" and one checkpoint unless given.

    Each keyword is a top-level key (`run_name`, `reference`, `checkpoints`), a section given as a
    dict (`capture={"layers": [1, 3]}`), or one dotted field (`**{"capture.layers": [1, 3]}`).
    """
    data: dict = {"run_name": "t", "output_root": str(root), "checkpoints": [CHECKPOINT]}
    for key, value in sections.items():
        section, dot, field = key.partition(".")
        if dot:
            data.setdefault(section, {})[field] = value
        elif isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return parse(data)
