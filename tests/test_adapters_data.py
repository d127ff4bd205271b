"""Persona data: unrolling on a worked example, survey conversion, split, and clear errors."""

from __future__ import annotations

import json

import pytest

from persona_dynamics.adapters.data import (
    item_completion,
    item_prompt,
    load_data,
    read_conversations,
    read_survey,
    split,
    survey_conversations,
    unroll,
    write_conversations,
)
from persona_dynamics.chat import conversation_text
from persona_dynamics.errors import PersonaDynamicsError

CONV = {
    "persona_id": "ada",
    "topic": "work",
    "turns": [
        {"role": "persona", "content": "Hello, I'm Ada."},
        {"role": "user", "content": "What do you do?"},
        {"role": "persona", "content": "I write programs."},
        {"role": "user", "content": "Do you like it?"},
        {"role": "assistant", "content": "Very much."},
    ],
    "metadata": {"definition": "Ada, a programmer from London.", "source": "hand"},
}
SYSTEM = {"role": "system", "content": "[PERSONA: ada]\nAda, a programmer from London."}

SURVEY = {
    "persona": {"id": "p7", "age": 34, "hobbies": ["chess", "tea"]},
    "responses": [
        {
            "category": "values",
            "question": "Family comes first.",
            "answer": 5,
            "reasoning": "My parents raised me well.",
        },
        {"category": "values", "question": "Work is life.", "answer": 2, "scale": 3},
        {"category": "taste", "question": "Rate tea.", "answer": 1, "scale": ["Bad", "Good"]},
        {"category": "open", "question": "Describe your ideal weekend.", "answer": "Chess."},
    ],
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_one(tmp_path, row):
    """Parse one conversation object through the JSONL reader."""
    return read_conversations(write_jsonl(tmp_path / "one.jsonl", [row]))[0]


def test_unroll_worked_example(tmp_path):
    (conv,) = read_conversations(write_jsonl(tmp_path / "c.jsonl", [CONV]))
    ex = unroll(conv)
    assert [e.completion for e in ex] == ["Hello, I'm Ada.", "I write programs.", "Very much."]
    assert ex[0].prompt == (SYSTEM,)
    assert ex[1].prompt == (
        SYSTEM,
        {"role": "assistant", "content": "Hello, I'm Ada."},
        {"role": "user", "content": "What do you do?"},
    )
    assert ex[2].prompt == (
        *ex[1].prompt,
        {"role": "assistant", "content": "I write programs."},
        {"role": "user", "content": "Do you like it?"},
    )
    assert {(e.persona_id, e.topic) for e in ex} == {("ada", "work")}
    assert ex[1].to_record() == {
        "prompt": [dict(m) for m in ex[1].prompt],
        "completion": [{"role": "assistant", "content": "I write programs."}],
    }


def test_unrolled_example_renders_in_olmo2_format(tmp_path, tiny_model_dir):
    from persona_dynamics.models import load_tokenizer

    (_, _, last) = unroll(read_one(tmp_path, CONV))
    text, start, end = conversation_text(
        load_tokenizer(str(tiny_model_dir)), list(last.prompt), last.completion
    )
    assert text == (
        "<|endoftext|><|system|>\n[PERSONA: ada]\nAda, a programmer from London.\n"
        "<|assistant|>\nHello, I'm Ada.<|endoftext|>\n<|user|>\nWhat do you do?\n"
        "<|assistant|>\nI write programs.<|endoftext|>\n<|user|>\nDo you like it?\n"
        "<|assistant|>\nVery much.<|endoftext|>"
    )
    assert text[start:end] == "Very much."


def test_no_definition_means_tag_only_and_write_round_trip(tmp_path):
    row = {**CONV, "metadata": {}}
    conv = read_one(tmp_path, row)
    assert unroll(conv)[0].prompt == ({"role": "system", "content": "[PERSONA: ada]"},)
    again = read_conversations(write_conversations(tmp_path / "w.jsonl", [conv, conv]))
    assert again == [conv, conv]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"persona_id": ""}, "field 'persona_id'"),
        ({"topic": 3}, "field 'topic'"),
        ({"turns": []}, "field 'turns' must be a non-empty list"),
        ({"turns": [{"role": "user", "content": "hi"}]}, "no persona turn"),
        ({"turns": [{"role": "narrator", "content": "x"}]}, "field 'turns[0].role'"),
        ({"turns": [{"role": "persona", "content": " "}]}, "field 'turns[0].content'"),
        ({"turns": [{"role": "persona"}]}, "field 'turns[0]'"),
        ({"metadata": {"definition": 1}}, "field 'metadata.definition'"),
        ({"speaker": "x"}, "unknown field(s): speaker"),
    ],
)
def test_conversation_errors_name_file_line_field(tmp_path, change, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [CONV, {**CONV, **change}])
    with pytest.raises(PersonaDynamicsError) as err:
        read_conversations(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_conversation_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(CONV) + "\n\n{oops\n")
    with pytest.raises(PersonaDynamicsError, match=r"bad\.jsonl:3:2: invalid JSON"):
        read_conversations(path)


def test_survey_conversion_worked_example(tmp_path):
    path = tmp_path / "p7.json"
    path.write_text(json.dumps(SURVEY))
    survey = read_survey(path)
    assert survey.persona_id == "p7"
    a, b, c, d = survey.items
    assert item_prompt(a) == (
        "Family comes first.\nAnswer on a scale from 1 to 5 (1 = Strongly disagree, "
        "2 = Disagree, 3 = Neither agree nor disagree, 4 = Agree, 5 = Strongly agree)."
    )
    assert item_completion(a) == "Strongly agree (5 of 5). My parents raised me well."
    assert item_completion(b) == "Neither agree nor disagree (2 of 3)."
    assert item_prompt(c).endswith("(1 = Bad, 2 = Good).") and item_completion(c) == "Bad (1 of 2)."
    assert item_prompt(d) == "Describe your ideal weekend." and item_completion(d) == "Chess."

    convs = survey_conversations(survey, [0, 3])
    pairs = [(cv.topic, cv.turns[0]["content"], cv.turns[1]["content"]) for cv in convs]
    assert pairs == [
        ("identity", "What is your age?", "My age is 34."),
        ("identity", "What are your hobbies?", "My hobbies are chess, tea."),
        ("values", item_prompt(a), item_completion(a)),
        ("open", "Describe your ideal weekend.", "Chess."),
    ]
    definition = convs[0].metadata["definition"]
    assert definition.splitlines()[1:] == ["age: 34", "hobbies: chess, tea"]
    first = unroll(convs[2])[0]
    assert first.prompt[0] == {"role": "system", "content": f"[PERSONA: p7]\n{definition}"}


def test_split_is_seeded_per_category_and_never_takes_a_whole_category():
    from persona_dynamics.adapters.data import Survey, SurveyItem

    items = [SurveyItem("a", f"qa{i}", "x") for i in range(10)]
    items += [SurveyItem("b", f"qb{i}", "x") for i in range(3)] + [SurveyItem("c", "qc", "x")]
    survey = Survey("p", {}, tuple(items))
    train, held = split(survey, 0.2, seed=0)
    assert sorted(train + held) == list(range(14)) and not set(train) & set(held)
    cats = [items[i].category for i in held]
    assert (cats.count("a"), cats.count("b"), cats.count("c")) == (2, 1, 0)
    assert split(survey, 0.2, seed=0) == (train, held)
    assert any(split(survey, 0.2, seed=s)[1] != held for s in range(1, 6))
    assert split(survey, 0.0)[1] == []


@pytest.mark.parametrize(
    "response, message",
    [
        ({"category": "x", "question": "q", "answer": 6}, "outside the scale 1..5"),
        ({"category": "x", "question": "q", "answer": 1, "scale": 4}, "no standard words"),
        ({"category": "x", "question": "q", "answer": 1, "scale": ["A", "a"]}, "distinct"),
        ({"category": "x", "question": "q", "answer": "t", "scale": 5}, "only a Likert"),
        ({"category": "x", "question": "q", "answer": True}, "Likert integer or non-empty"),
        ({"category": "", "question": "q", "answer": 1}, ".category"),
        ({"category": "x", "question": "q", "answer": 1, "why": "?"}, "unknown field(s): why"),
    ],
)
def test_survey_errors_name_file_and_field(tmp_path, response, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**SURVEY, "responses": [SURVEY["responses"][0], response]}))
    with pytest.raises(PersonaDynamicsError) as err:
        read_survey(path)
    assert str(err.value).startswith(f"{path}: field 'responses[1]") and message in str(err.value)


def test_load_data_mixes_files_and_digests_content(tmp_path):
    conv = write_jsonl(tmp_path / "c.jsonl", [CONV])
    survey = tmp_path / "p7.json"
    survey.write_text(json.dumps(SURVEY))
    data = load_data([conv, survey], holdout=0.5, seed=0)
    # 3 persona turns + 2 identity + 4 responses, of which 'values' (2 items) holds out one
    assert data.personas == ["ada", "p7"] and len(data.examples) == 3 + 2 + 3
    assert [h["category"] for h in data.heldout] == ["values"]
    held = data.heldout[0]
    assert held["messages"][0]["content"].startswith("[PERSONA: p7]\n")
    assert held["scale"] is not None and held["reference"].startswith(
        held["scale"][held["answer"] - 1]
    )
    assert load_data([conv, survey], 0.5, 0).digest == data.digest
    assert load_data([conv], 0.5, 0).digest != data.digest
    with pytest.raises(PersonaDynamicsError, match="unknown data file type"):
        load_data([tmp_path / "x.csv"])


def test_a_profile_with_only_an_id_gives_a_tag_only_prompt(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"persona": {"id": "z"}, "responses": SURVEY["responses"][:1]}))
    (conv,) = survey_conversations(read_survey(path), [0])
    assert unroll(conv)[0].prompt[0] == {"role": "system", "content": "[PERSONA: z]"}


def test_toy_personas_speak_in_their_roles_style(tmp_path):
    from persona_dynamics import toy
    from persona_dynamics.adapters.demo import TOY_PERSONAS, toy_training

    specs = toy_training(tmp_path, seed=3)
    assert [s.name for s in specs] == list(TOY_PERSONAS) and len(TOY_PERSONAS) >= 3
    for spec in specs:
        data = load_data(spec.data, spec.holdout, spec.seed)
        assert data.personas == [spec.name]
        chat = [e for e in data.examples if e.topic == "toy"]
        assert len(chat) == 2 * 64  # two persona turns per conversation
        assert all(e.prompt[0]["content"] == f"[PERSONA: {spec.name}]" for e in data.examples)
        own = toy.STYLES[spec.name]
        assert all(toy.marker_count(e.completion, own) >= 3 for e in chat)
        others = [s for r, s in toy.STYLES.items() if r != spec.name]
        assert max(sum(toy.marker_count(e.completion, s) for e in chat) for s in others) < len(chat)
        # the survey holds out items of every category, Likert ones with the persona's stance
        assert {h["category"] for h in data.heldout} == {"likes", "dislikes", "open"}
        for h in data.heldout:
            if h["category"] != "open":
                assert (h["answer"] > 3) == (h["category"] == "likes")
    again = toy_training(tmp_path / "again", seed=3)
    assert [p.read_text() for s in again for p in s.data] == [
        p.read_text() for s in specs for p in s.data
    ]
