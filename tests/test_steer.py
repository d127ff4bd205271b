"""`steer`: the dose-response table of a steering grid on a tiny model, judged by a local server.

The mechanics, not the causal claim (that is the toy organism's, tests/test_toy_steering.py):
one row per setting and role, the baseline identical to itself, a strong push changing the text,
intervals around their means, and the capability column equal to an independent perplexity.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from persona_dynamics.capture.tokens import tokenize
from persona_dynamics.config import dump
from persona_dynamics.roles import DEFAULT
from persona_dynamics.steering.dose import COLUMNS
from persona_dynamics.transcripts import read_transcripts, transcripts_dir
from persona_dynamics.vectors import write_gguf

from helpers.archs import write_tiny
from helpers.chat_server import ChatServer
from helpers.cli import cli
from helpers.study import make_study

pytestmark = pytest.mark.slow


def judge(body: dict) -> str:
    """Score by response length: 3 for long answers, 1 for short ones."""
    text = body["messages"][-1]["content"]
    answer = text.split("<response>")[-1]
    return "Score: 3" if len(answer) > 40 else "Score: 1"


def independent_perplexity(model_dir, rows) -> float:
    """exp(token-weighted mean loss over the response tokens), from transformers' own loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for s in tokenize(rows, tok):
        if s.end - s.start < 2:
            continue
        ids = torch.as_tensor(s.ids[None], dtype=torch.long)
        labels = torch.full_like(ids, -100)
        labels[0, max(s.start, 1) : s.end] = ids[0, max(s.start, 1) : s.end]
        n = int((labels != -100).sum())
        with torch.inference_mode():
            total += model(input_ids=ids, labels=labels).loss.item() * n
        count += n
    return math.exp(total / count)


def test_dose_response_table(tmp_path):
    model = write_tiny(tmp_path / "m", "olmo2")
    rng = np.random.default_rng(1)
    vec = write_gguf(tmp_path / "v.gguf", {i: rng.normal(size=64) for i in (1, 2)}, "olmo2")
    with ChatServer(judge, model="judge-a") as server:
        cfg = make_study(
            tmp_path / "out",
            checkpoints=[{"label": "m", "model": str(model)}],
            roles={"include": ["pirate"], "question_count": 4},
            generation={"backend": "hf", "temperature": 0.0, "max_tokens": 12, "device": "cpu"},
            capture={"device": "cpu"},
            judge={"base_url": server.url, "model": "judge-a", "api_key_env": "PD_NO_KEY"},
            steering={"vector": str(vec), "layers": [1, 2], "bootstrap": 50, "settings": [
                {"name": "push", "mode": "add", "coefficient": 8.0},
                {"name": "cap-p50", "mode": "cap", "percentile": 50.0}]},
        )  # fmt: skip
        conf = tmp_path / "study.toml"
        conf.write_text(dump(cfg))
        for stage in ("generate", "calibrate", "steer"):
            r = cli(stage, str(conf))
            assert r.returncode == 0, (stage, r.stderr)
    out = cfg.path("steering", "dose_response.csv")
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == COLUMNS
    got = {(r["setting"], r["role"]): r for r in rows}
    assert sorted(got) == [(s, role) for s in ("cap-p50", "none", "push")
                           for role in (DEFAULT, "pirate")]  # fmt: skip
    base = got[("none", "pirate")]
    assert float(base["same_tokens"]) == 1.0 and float(got[("none", DEFAULT)]["same_tokens"]) == 1.0
    assert float(got[("push", "pirate")]["same_tokens"]) < 0.9  # the push rewrote the answers
    for r in rows:
        if r["role"] == "pirate":
            lo, mean, hi = (float(r[k]) for k in ("score_lo", "score_mean", "score_hi"))
            assert lo <= mean <= hi and 1 <= mean <= 3
            assert int(r["n"]) == 4 * 5
        else:
            assert r["score_mean"] == "" and int(r["n"]) == 4 * 6  # not judged: empty
    assert got[("push", "pirate")]["layers"] == "1 2" and got[("push", "pirate")]["mode"] == "add"
    default_rows = [r for r in read_transcripts(transcripts_dir(cfg)) if r["role"] == DEFAULT]
    want = independent_perplexity(model, default_rows)
    assert float(base["perplexity"]) == pytest.approx(want, rel=1e-4)
    assert float(got[("push", "pirate")]["perplexity"]) != pytest.approx(want, rel=1e-3)


def test_the_jailbreak_prompts_are_steered_and_judged_for_harm(tmp_path):
    model = write_tiny(tmp_path / "m", "olmo2")
    rng = np.random.default_rng(2)
    vec = write_gguf(tmp_path / "v.gguf", {2: rng.normal(size=64)}, "olmo2")
    seen = []

    def harm_judge(body: dict) -> str:
        seen.append(body["messages"][-1]["content"])
        return "0"

    with ChatServer(harm_judge, model="judge-a") as server:
        cfg = make_study(
            tmp_path / "out",
            checkpoints=[{"label": "m", "model": str(model)}],
            roles={"include": ["pirate"], "question_count": 2},
            generation={"backend": "hf", "temperature": 0.0, "max_tokens": 6, "device": "cpu"},
            judge={"base_url": server.url, "model": "judge-a", "api_key_env": "PD_NO_KEY"},
            steering={"vector": str(vec), "layers": [2], "prompts": "jailbreaks",
                      "question_count": 2, "bootstrap": 0,
                      "settings": [{"name": "away", "mode": "add", "coefficient": -3.0,
                                    "unit": "raw"}]},
        )  # fmt: skip
        conf = tmp_path / "study.toml"
        conf.write_text(dump(cfg))
        for stage in ("generate", "steer"):
            r = cli(stage, str(conf))
            assert r.returncode == 0, (stage, r.stderr)
    with cfg.path("steering", "dose_response.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    roles = {r["role"] for r in rows}
    assert roles == {"dev_mode", "grandma_story", "unbound_ai", "villain_mentor"}
    assert all(int(r["n"]) == 5 * 2 and float(r["score_mean"]) == 0.0 for r in rows)
    assert seen and all("harmful request" in s for s in seen)  # the harm rubric asked
    assert len(seen) == 2 * 4 * 5 * 2  # baseline and one setting, every jailbreak answer
    assert (tmp_path / "out" / "transcripts" / "t").is_dir()
    main = sorted(p.name for p in transcripts_dir(cfg).glob("*.jsonl"))
    assert main == ["default.jsonl", "pirate.jsonl"]  # the study's own text is untouched
