"""A role set shaped like the published Assistant Axis one loads: near-duplicates only warn.

The published set (275 roles, 5 default prompts, 240 questions without categories) has seven
cross-role pairs of system prompts at word-3-gram Jaccard 0.80-0.81; the suite must use it as is,
while `--strict` (the shipped set's policy) still refuses it (issue 22).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from persona_dynamics.config import parse
from persona_dynamics.roles import near_duplicates

from helpers.cli import cli
from helpers.study import make_study

N_ROLES, WORDS = 275, 29  # one word changed in 29: 24 of 30 distinct 3-grams shared, J = 0.80
NEAR = [("role_010", "role_011"), ("role_020", "role_021"), ("role_030", "role_031")]
DEFAULTS = [
    "",
    "You are an AI assistant.",
    "You are a large language model.",
    "You are {model_name}.",
    "Respond as yourself.",
]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(roles dir, questions file) in the published layout, with the NEAR pairs planted."""
    root = tmp_path_factory.mktemp("assistant-axis")
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]

    def text() -> str:
        return " ".join(rng.choice(vocab, WORDS))

    roles = {
        f"role_{i:03d}": {"instruction": [{"pos": text()} for _ in range(5)], "eval_prompt": text()}
        for i in range(N_ROLES)
    }
    for a, b in NEAR:
        words = roles[a]["instruction"][0]["pos"].split()
        words[WORDS // 2] = "changed"
        roles[b]["instruction"][0]["pos"] = " ".join(words)
    d = root / "instructions"
    d.mkdir()
    for name, data in roles.items():
        (d / f"{name}.json").write_text(json.dumps(data))
    (d / "default.json").write_text(json.dumps({"instruction": [{"pos": t} for t in DEFAULTS]}))
    q = root / "extraction_questions.jsonl"
    q.write_text(
        "".join(json.dumps({"id": i, "question": text() + "?"}) + "\n" for i in range(240))
    )
    return d, q


def test_planted_pairs_are_the_near_duplicates(published):
    d, _ = published
    texts = []
    for p in sorted(d.glob("role_*.json")):
        data = json.loads(p.read_text())
        texts += [(p.stem, x["pos"]) for x in data["instruction"]]
        texts.append((p.stem, data["eval_prompt"]))
    found = near_duplicates(texts)
    assert sorted((a, b) for a, b, _ in found) == NEAR
    assert {jac for *_, jac in found} == {0.8}


def test_validate_warns_in_one_block_and_passes(published):
    d, q = published
    r = cli("roles", "validate", str(d), "--questions", str(q))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok: 275 roles, 5 default prompts, 240 questions; 3 warning(s)"
    head, *block = r.stderr.strip().splitlines()
    assert head == "warning: 3 policy finding(s), errors with --strict:"
    assert len(block) == 3 and all("have near-duplicate texts (0.8)" in x for x in block)
    for a, b in NEAR:
        assert sum(f"'{a}' and '{b}'" in x for x in block) == 1


def test_strict_refuses_with_one_error_line(published):
    d, q = published
    r = cli("roles", "validate", str(d), "--questions", str(q), "--strict")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    errors = [x for x in lines if x.startswith("error: ")]
    assert errors == [lines[-1]]
    assert errors[0] == (f"error: {d}: 3 problem(s) (275 roles, 5 default prompts, 240 questions)")
    assert sum("near-duplicate texts" in x for x in lines) == 3


def test_schema_errors_still_fail_a_user_set(published, tmp_path):
    d, q = published
    broken = tmp_path / "roles"
    broken.mkdir()
    for p in [d / "default.json", *sorted(d.glob("role_00*.json"))]:
        broken.joinpath(p.name).write_text(p.read_text())
    (broken / "role_000.json").write_text('{"eval_prompt": "e"}')
    r = cli("roles", "validate", str(broken), "--questions", str(q))
    assert r.returncode == 2
    assert "role_000.json: field 'instruction' must be a non-empty list" in r.stderr
    assert "10 roles, expected at least 275" in r.stderr  # the policy: a warning, listed too


def test_a_study_using_it_checks_and_builds_every_request(published, tmp_path):
    from persona_dynamics.generation.requests import build_requests
    from persona_dynamics.transcripts import selection

    d, q = published
    conf = tmp_path / "study.toml"
    conf.write_text(
        f'run_name = "published"\n[[checkpoints]]\nlabel = "instruct"\nmodel = "org/m"\n'
        f'[roles]\ndir = "{d}"\nquestions = "{q}"\n'
    )
    r = cli("config", "check", str(conf))
    assert r.returncode == 0, r.stderr
    assert f'dir = "{d}"' in r.stdout and f'questions = "{q}"' in r.stdout
    cfg = parse({"run_name": "p", "checkpoints": [{"label": "i", "model": "org/m"}],
                 "roles": {"dir": str(d), "questions": str(q), "question_count": 3}})  # fmt: skip
    roles, questions = selection(cfg)
    assert len(roles) == N_ROLES + 1 and roles[-1].name == "default"
    requests = build_requests(roles, questions, "OLMo", 1, 0)
    assert len(requests) == (N_ROLES * 5 + 5) * 3


@pytest.mark.slow
def test_generate_capture_analyze_accept_it(published, tmp_path, tiny_model_dir):
    """End to end on a tiny model over the near-duplicate roles and the default Assistant."""
    from persona_dynamics.analysis import run_analyze
    from persona_dynamics.capture import run_capture
    from persona_dynamics.generation import run_generate

    d, q = published
    include = sorted({*NEAR[0], "role_100"})
    cfg = make_study(
        tmp_path,
        run_name="published",
        checkpoints=[{"label": "tiny", "model": str(tiny_model_dir)}],
        roles={"dir": str(d), "questions": str(q), "include": include, "question_count": 2},
        generation={"backend": "hf", "max_tokens": 4, "device": "cpu"},
        capture={"layers": "all", "device": "cpu"},
        analysis={"bootstrap": 0, "min_samples": 1},
    )
    run_generate(cfg)
    run_capture(cfg)
    summary = json.loads((run_analyze(cfg).parent / "summary.json").read_text())
    assert summary["vectors"]["kept"] + len(summary["vectors"]["dropped"]) == len(include)
    assert summary["n_questions"] == 2
