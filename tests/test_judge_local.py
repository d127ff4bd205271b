"""The local judge backend: a judge model run offline by the project's own hf generation backend."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from persona_dynamics.generation.hf import HFGenerator
from persona_dynamics.jsonl import Appender, key_of, read_rows
from persona_dynamics.judge import run_judge
from persona_dynamics.judges import judge_prompt, parse_score
from persona_dynamics.roles import load_roles
from persona_dynamics.scores import load_scores
from persona_dynamics.transcripts import read_transcripts, transcripts_dir

from helpers.judge import FOUR_QUESTIONS, plant
from helpers.paths import ROLES_DIR
from helpers.study import make_study


def study(tmp_path, judge_dir):
    """Four questions judged by the local backend with the model in `judge_dir`."""
    return make_study(
        tmp_path,
        run_name="local",
        roles=FOUR_QUESTIONS,
        judge={"backend": "local", "model": str(judge_dir), "max_tokens": 4},
    )


def long_context(model_dir, tmp_path):
    """The tiny model with room for a judge prompt (its byte-level tokens make prompts long)."""
    out = tmp_path / "judge-model"
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return out


def raws(directory) -> dict:
    return {key_of(r): r["raw"] for r in read_rows(directory / "pirate.jsonl")}


def test_local_judge_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    asked = []
    original = HFGenerator.generate

    def spy(self, requests, sampling):
        asked.extend(requests)
        yield from original(self, requests, sampling)

    monkeypatch.setattr(HFGenerator, "generate", spy)
    judge_dir = long_context(tiny_model_dir, tmp_path)
    cfg = study(tmp_path, judge_dir)
    truth = plant(cfg, ("pirate",))
    out = run_judge(cfg)
    rows = read_rows(out / "pirate.jsonl")
    assert len(rows) == len(truth) == len(asked)
    assert all(r["judge"] == str(judge_dir) and isinstance(r["raw"], str) for r in rows)
    assert all(r["score"] == parse_score(r["raw"]) for r in rows)  # untrained: mostly null

    pirate = load_roles(ROLES_DIR, ["pirate"])[0]
    row = next(
        r for r in read_transcripts(transcripts_dir(cfg), ["pirate"]) if key_of(r) == (1, 2, 0)
    )
    req = next(r for r in asked if r.id == ("pirate", 1, 2, 0))
    assert list(req.messages) == judge_prompt(
        pirate.eval_prompt, row["messages"][-1]["content"], row["response"]
    )

    first = raws(out)
    (out / "pirate.jsonl").unlink()
    shutil.rmtree(tmp_path / "cache")
    assert raws(run_judge(cfg)) == first  # greedy decoding: the same answers again
    assert len(asked) == 2 * len(truth)  # and they were really asked again, not cached


@pytest.mark.slow
def test_toy_judge_agrees_with_the_planted_scores(tmp_path, toy_family):
    """Transcripts written by the toy's response generator at planted scores, judged locally."""
    from persona_dynamics import toy

    cfg = toy.study_config(toy_family, "judge-toy", tmp_path)
    src = toy.Source.load()
    cfg.roles.include = [r.name for r in src.roles[:12]]
    cfg.roles.question_count = None  # held-out questions reach past the first 20: select them
    rng = np.random.default_rng(7)
    truth = {}
    for role in src.roles[:12]:
        rows = []
        for q in src.split(held_out=True)[:4]:
            spi, score = int(rng.integers(len(role.instructions))), int(rng.integers(4))
            ex = src.example(role, spi, q, score, rng)
            qid = src.questions[q].id
            rows.append(
                {
                    "system_prompt_idx": spi,
                    "question_idx": qid,
                    "rollout_idx": 0,
                    "messages": list(ex.messages),
                    "response": ex.response,
                    "finish_reason": "stop",
                    "n_tokens": 1,
                }
            )
            truth[(role.name, spi, qid, 0)] = score
        with Appender(transcripts_dir(cfg) / f"{role.name}.jsonl") as w:
            w.write(rows)
    scores = load_scores(run_judge(cfg))
    assert scores.keys() == truth.keys()
    agreement = np.mean([scores[k] == s for k, s in truth.items()])
    print(f"toy judge agreement with planted scores: {agreement:.3f} over {len(truth)}")
    assert agreement > 0.6  # chance is 0.25
