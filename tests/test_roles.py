"""The shipped roles dataset and the validator, including a battery of broken copies."""

from __future__ import annotations

import json
import shutil

import pytest

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.roles import (
    load_default,
    load_questions,
    load_role,
    load_roles,
    near_duplicates,
    validate,
)

from helpers.paths import QUESTIONS, ROLES_DIR


def test_shipped_set_is_valid_at_paper_scale():
    rep = validate(ROLES_DIR, QUESTIONS, min_roles=275, variants=5)
    assert rep.problems == []
    assert rep.n_roles >= 275
    assert rep.n_questions == 240
    assert rep.n_default_prompts >= 5


def test_shipped_roles_are_varied():
    roles = load_roles(ROLES_DIR)
    for r in roles:
        assert len(r.instructions) == 5
        openings = {" ".join(t.split()[:3]).lower() for t in r.instructions}
        assert len(openings) >= 4, f"{r.name}: variants look templated: {openings}"
        assert r.eval_prompt and len(r.eval_prompt.split()) >= 20, r.name
    # the space has a near end (roles close to the Assistant) and adversarial characters
    names = {r.name for r in roles}
    assert {"tutor", "librarian", "consultant", "con_artist", "pirate", "cat"} <= names


def test_default_prompts_include_empty_and_model_name():
    d = load_default(ROLES_DIR)
    assert "" in d.instructions
    assert any("{model_name}" in t for t in d.instructions)
    assert d.eval_prompt is None


def test_questions_have_ids_and_categories():
    qs = load_questions(QUESTIONS)
    assert [q.id for q in qs] == list(range(240))
    assert all(q.category for q in qs)
    assert len(load_questions(QUESTIONS, count=8)) == 8


@pytest.fixture
def copy_dir(tmp_path):
    """A small valid roles directory (3 shipped roles + default) to break in tests."""
    d = tmp_path / "roles"
    d.mkdir()
    for name in ("pirate", "tutor", "cat", "default"):
        shutil.copy(ROLES_DIR / f"{name}.json", d)
    q = tmp_path / "questions.jsonl"
    q.write_text(
        "".join(json.dumps({"id": i, "question": f"Question number {i}?"}) + "\n" for i in range(3))
    )
    return d, q


def _problems(d, q, **kw):
    return "\n".join(validate(d, q, **kw).problems)


def test_copy_is_valid(copy_dir):
    d, q = copy_dir
    assert validate(d, q, variants=5).problems == []


BROKEN = {
    "bad json": (
        lambda p: p.write_text('{"instruction": [\n  {"pos": "x"},\n  oops]}'),
        "pirate.json:3:3: invalid JSON",
    ),
    "missing instruction": (
        lambda p: p.write_text('{"eval_prompt": "e"}'),
        "field 'instruction' must be a non-empty list",
    ),
    "wrong type": (
        lambda p: p.write_text('{"instruction": [{"pos": 3}], "eval_prompt": "e"}'),
        "instruction[0]",
    ),
    "empty variant": (
        lambda p: p.write_text('{"instruction": [{"pos": "  "}], "eval_prompt": "e"}'),
        "instruction[0].pos' is empty",
    ),
    "no eval prompt": (
        lambda p: p.write_text('{"instruction": [{"pos": "Be a pirate."}]}'),
        "'eval_prompt' is missing",
    ),
    "unknown field": (
        lambda p: p.write_text('{"instruction": [{"pos": "a"}], "eval_prompt": "e", "x": 1}'),
        "unknown field(s): x",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_role_files_are_named(copy_dir, case):
    d, q = copy_dir
    breaker, message = BROKEN[case]
    breaker(d / "pirate.json")
    out = _problems(d, q)
    assert "pirate.json" in out and message in out


def test_duplicate_variants_and_counts(copy_dir):
    d, q = copy_dir
    data = json.loads((d / "cat.json").read_text())
    data["instruction"][1] = dict(data["instruction"][0])
    (d / "cat.json").write_text(json.dumps(data))
    out = _problems(d, q, variants=5, min_roles=10)
    assert "cat.json: duplicate instruction variants" in out
    assert "3 roles, expected at least 10" in out


def test_near_duplicate_across_roles(copy_dir):
    d, q = copy_dir
    tutor = json.loads((d / "tutor.json").read_text())
    cat = json.loads((d / "cat.json").read_text())
    cat["instruction"][2] = {"pos": tutor["instruction"][0]["pos"] + " Meow."}
    (d / "cat.json").write_text(json.dumps(cat))
    out = _problems(d, q)
    assert "'cat' and 'tutor'" in out or "'tutor' and 'cat'" in out


def test_near_duplicates_ignores_same_owner_and_distinct_texts():
    a = "the quick brown fox jumps over the lazy dog near the river bank today"
    assert near_duplicates([("x", a), ("x", a)]) == []
    assert (
        near_duplicates([("x", a), ("y", "an entirely different sentence about cats and dogs")])
        == []
    )
    assert near_duplicates([("x", a), ("y", a + " again")])


def test_default_without_empty_prompt(copy_dir):
    d, q = copy_dir
    (d / "default.json").write_text('{"instruction": [{"pos": "You are helpful."}]}')
    assert "empty system prompt is missing" in _problems(d, q)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"id": 0, "question": "ok?"}\n{"id": 0, "question": "again?"}\n',
            "duplicate question id",
        ),
        ('{"id": 0, "question": "ok?"}\n{"id": 1}\n', "questions.jsonl:2: field 'question'"),
        ('{"id": 0, "question": "ok?"}\nnot json\n', "questions.jsonl:2:1: invalid JSON"),
        ("", "the question set is empty"),
        ('{"id": "a", "question": "ok?"}\n', "field 'id' must be an integer"),
    ],
)
def test_broken_questions(copy_dir, content, message):
    d, q = copy_dir
    q.write_text(content)
    assert message in _problems(d, q)
    with pytest.raises(PersonaDynamicsError, match=message.split(": ")[-1].split(":")[-1].strip()):
        load_questions(q)


def test_bad_role_name_and_unknown_role(tmp_path, copy_dir):
    d, _ = copy_dir
    bad = tmp_path / "Bad-Name.json"
    bad.write_text("{}")
    with pytest.raises(PersonaDynamicsError, match=r"\[a-z0-9_\]\+"):
        load_role(bad)
    with pytest.raises(PersonaDynamicsError, match="unknown role\\(s\\): wizard"):
        load_roles(d, ["pirate", "wizard"])
