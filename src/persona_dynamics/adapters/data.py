"""Persona training data: conversation JSONL and survey JSON, validated, unrolled into examples.

A persona conversation is one JSON object per line:
`{"persona_id", "topic", "turns": [{"role", "content"}...], "metadata": {...}}`, where a turn's role
is `user` or `persona` (`assistant` is read as `persona`) and `metadata.definition`, when present,
is the persona's description. Each persona turn becomes one training example: the prompt is the
system message `[PERSONA: id]` + newline + definition, followed by the history before that turn
(user turns as `user`, persona turns as `assistant`); the completion is that turn alone, so the loss
falls on its tokens only.

A survey is one JSON object `{"persona": {...profile}, "responses": [{"category", "question",
"answer", "scale"?, "reasoning"?}]}`. An integer answer is a Likert point (1..n) on `scale` (a list
of n words, or 3, 5 or 7 for the standard agreement words; 5 when absent); a string answer is free
text. Responses become one-exchange conversations (Likert points written as their words, reasoning
appended) plus identity exchanges from the profile; a seeded, per-category held-out split is kept
out of training for the fidelity check.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from persona_dynamics.errors import PersonaDynamicsError, located
from persona_dynamics.files import write_text
from persona_dynamics.roles import digest, read_json, read_jsonl

Message = dict[str, str]

USER = "user"
PERSONA = "persona"
TURN_ROLES = {USER: USER, PERSONA: PERSONA, "assistant": PERSONA}
IDENTITY = "identity"

AGREE_WORDS = {
    3: ("Disagree", "Neither agree nor disagree", "Agree"),
    5: ("Strongly disagree", "Disagree", "Neither agree nor disagree", "Agree", "Strongly agree"),
    7: (
        "Strongly disagree",
        "Disagree",
        "Somewhat disagree",
        "Neither agree nor disagree",
        "Somewhat agree",
        "Agree",
        "Strongly agree",
    ),
}


# --- conversations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """One persona conversation: who speaks, about what, and the turns in order."""

    persona_id: str
    topic: str
    turns: tuple[Message, ...]
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "persona_id": self.persona_id,
            "topic": self.topic,
            "turns": [dict(t) for t in self.turns],
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Example:
    """One training example: chat prompt messages and the persona turn that completes them."""

    persona_id: str
    topic: str
    prompt: tuple[Message, ...]
    completion: str

    def to_record(self) -> dict:
        """The prompt-completion conversational record trl's SFT trainer takes."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "completion": [{"role": "assistant", "content": self.completion}],
        }


def persona_tag(persona_id: str) -> str:
    """The tag that opens every system prompt, so one adapter can hold several personas."""
    return f"[PERSONA: {persona_id}]"


def system_prompt(persona_id: str, definition: str | None) -> str:
    """The persona tag, then the persona's definition on the next line (when there is one)."""
    tag = persona_tag(persona_id)
    return f"{tag}\n{definition}" if definition else tag


def _conversation(row: object, where) -> Conversation:
    """Check one decoded conversation object; `where(msg)` formats an error location."""
    if not isinstance(row, dict):
        raise PersonaDynamicsError(where("each line must be a JSON object"))
    unknown = sorted(set(row) - {"persona_id", "topic", "turns", "metadata"})
    if unknown:
        raise PersonaDynamicsError(where(f"unknown field(s): {', '.join(unknown)}"))
    pid, topic = row.get("persona_id"), row.get("topic")
    if not isinstance(pid, str) or not pid.strip() or "]" in pid:
        raise PersonaDynamicsError(where("field 'persona_id' must be non-empty text without ']'"))
    if not isinstance(topic, str):
        raise PersonaDynamicsError(where("field 'topic' must be a string"))
    meta = row.get("metadata", {})
    if not isinstance(meta, dict):
        raise PersonaDynamicsError(where("field 'metadata' must be an object"))
    if not isinstance(meta.get("definition", ""), str):
        raise PersonaDynamicsError(where("field 'metadata.definition' must be a string"))
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        raise PersonaDynamicsError(where("field 'turns' must be a non-empty list"))
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or set(t) != {"role", "content"}:
            raise PersonaDynamicsError(
                where(f"field 'turns[{i}]' must be an object with exactly 'role' and 'content'")
            )
        if t["role"] not in TURN_ROLES:
            raise PersonaDynamicsError(
                where(f"field 'turns[{i}].role' must be one of {sorted(TURN_ROLES)}")
            )
        if not isinstance(t["content"], str) or not t["content"].strip():
            raise PersonaDynamicsError(where(f"field 'turns[{i}].content' must be non-empty text"))
        out.append({"role": TURN_ROLES[t["role"]], "content": t["content"]})
    if not any(t["role"] == PERSONA for t in out):
        raise PersonaDynamicsError(where("field 'turns' has no persona turn to learn from"))
    return Conversation(pid, topic, tuple(out), meta)


def read_conversations(path: str | Path) -> list[Conversation]:
    """Read a persona conversation JSONL; every problem names the file, line and field."""
    path = Path(path)
    out = []
    for n, row in read_jsonl(path, "conversation"):
        out.append(_conversation(row, lambda msg, n=n: located(path, msg, n)))
    if not out:
        raise PersonaDynamicsError(f"{path}: no conversations")
    return out


def write_conversations(path: str | Path, conversations: list[Conversation]) -> Path:
    """Write conversations as JSONL, atomically."""
    text = "".join(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in conversations)
    return write_text(path, text)


def unroll(conv: Conversation) -> list[Example]:
    """One example per persona turn: system prompt + the history before it -> that turn."""
    text = system_prompt(conv.persona_id, conv.metadata.get("definition"))
    system = {"role": "system", "content": text}
    out = []
    for i, turn in enumerate(conv.turns):
        if turn["role"] != PERSONA:
            continue
        history = tuple(
            {"role": USER if t["role"] == USER else "assistant", "content": t["content"]}
            for t in conv.turns[:i]
        )
        out.append(Example(conv.persona_id, conv.topic, (system, *history), turn["content"]))
    return out


def examples_digest(examples: list[Example]) -> str:
    """Content hash of the training examples, recorded on the adapter's card."""
    return digest([[e.persona_id, e.topic, list(e.prompt), e.completion] for e in examples])


# --- surveys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurveyItem:
    """One survey response: a Likert point (int, with its scale words) or a free-text answer."""

    category: str
    question: str
    answer: int | str
    scale: tuple[str, ...] | None = None
    reasoning: str | None = None

    @property
    def is_likert(self) -> bool:
        return self.scale is not None


@dataclass(frozen=True)
class Survey:
    """A persona's profile and its survey responses, in file order."""

    persona_id: str
    profile: dict
    items: tuple[SurveyItem, ...]


def _scale(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return AGREE_WORDS[5]
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in AGREE_WORDS:
            raise PersonaDynamicsError(
                f"{where}.scale: {value} points has no standard words; give a list of words"
            )
        return AGREE_WORDS[value]
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(w, str) and w.strip() for w in value)
    ):
        raise PersonaDynamicsError(f"{where}.scale: must be 3, 5, 7 or a list of 2+ words")
    if len({w.strip().lower() for w in value}) != len(value):
        raise PersonaDynamicsError(f"{where}.scale: the words must be distinct")
    return tuple(w.strip() for w in value)


def _item(row: object, where: str) -> SurveyItem:
    if not isinstance(row, dict):
        raise PersonaDynamicsError(f"{where}: must be an object")
    unknown = sorted(set(row) - {"category", "question", "answer", "scale", "reasoning"})
    if unknown:
        raise PersonaDynamicsError(f"{where}: unknown field(s): {', '.join(unknown)}")
    for key in ("category", "question"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise PersonaDynamicsError(f"{where}.{key}: must be a non-empty string")
    reasoning = row.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise PersonaDynamicsError(f"{where}.reasoning: must be a string")
    answer = row.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        words = _scale(row.get("scale"), where)
        if not 1 <= answer <= len(words):
            raise PersonaDynamicsError(
                f"{where}.answer: Likert point {answer} is outside the scale 1..{len(words)}"
            )
        return SurveyItem(row["category"], row["question"], answer, words, reasoning or None)
    if isinstance(answer, str) and answer.strip():
        if "scale" in row:
            raise PersonaDynamicsError(f"{where}.scale: only a Likert (integer) answer has one")
        return SurveyItem(row["category"], row["question"], answer, None, reasoning or None)
    raise PersonaDynamicsError(f"{where}.answer: must be a Likert integer or non-empty text")


def read_survey(path: str | Path) -> Survey:
    """Read a survey JSON; the persona id is `persona.id`, else the file stem."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise PersonaDynamicsError(located(path, "top level must be a JSON object"))
    unknown = sorted(set(data) - {"persona", "responses"})
    if unknown:
        raise PersonaDynamicsError(located(path, f"unknown field(s): {', '.join(unknown)}"))
    profile = data.get("persona")
    if not isinstance(profile, dict):
        raise PersonaDynamicsError(located(path, "field 'persona' must be an object"))
    for k, v in profile.items():
        ok = isinstance(v, str | int | float | bool) or (
            isinstance(v, list) and all(isinstance(x, str | int | float) for x in v)
        )
        if not ok:
            raise PersonaDynamicsError(
                located(path, f"field 'persona.{k}' must be text, a number or a list of them")
            )
    pid = str(profile.get("id", path.stem))
    if not pid.strip() or "]" in pid:
        raise PersonaDynamicsError(located(path, "field 'persona.id' must be non-empty, no ']'"))
    responses = data.get("responses")
    if not isinstance(responses, list) or not responses:
        raise PersonaDynamicsError(located(path, "field 'responses' must be a non-empty list"))
    items = tuple(_item(r, f"{path}: field 'responses[{i}]'") for i, r in enumerate(responses))
    return Survey(pid, profile, items)


def _value(v: object) -> str:
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def definition(profile: dict) -> str:
    """The persona's definition for the system prompt, from its profile ("" with only an id)."""
    lines = [f"{k.replace('_', ' ')}: {_value(v)}" for k, v in profile.items() if k != "id"]
    head = "You are the person described below. Answer as yourself, in the first person."
    return "\n".join([head, *lines]) if lines else ""


def identity_turns(profile: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs that teach the persona its own profile, one per field."""
    out = []
    for k, v in profile.items():
        if k == "id":
            continue
        name, verb = k.replace("_", " "), "are" if isinstance(v, list) else "is"
        out.append((f"What {verb} your {name}?", f"My {name} {verb} {_value(v)}."))
    return out


def item_prompt(item: SurveyItem) -> str:
    """The question as asked: a Likert item lists its scale so the answer can name a point."""
    if not item.is_likert:
        return item.question
    points = ", ".join(f"{k} = {w}" for k, w in enumerate(item.scale, 1))
    return f"{item.question}\nAnswer on a scale from 1 to {len(item.scale)} ({points})."


def item_completion(item: SurveyItem) -> str:
    """The persona's answer as trained: the Likert word and point, then any reasoning."""
    if item.is_likert:
        text = f"{item.scale[item.answer - 1]} ({item.answer} of {len(item.scale)})."
    else:
        text = item.answer
    return f"{text} {item.reasoning}" if item.reasoning else text


def split(survey: Survey, holdout: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded per-category split of item indices into (train, held-out), both in file order.

    Each category with 2+ items holds out round(holdout * n) of them, at least one and never all.
    """
    rng = random.Random(f"{seed}:{survey.persona_id}")
    by_cat: dict[str, list[int]] = {}
    for i, it in enumerate(survey.items):
        by_cat.setdefault(it.category, []).append(i)
    held: set[int] = set()
    for cat in sorted(by_cat):
        idx = by_cat[cat]
        k = round(holdout * len(idx))
        if holdout > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        held.update(rng.sample(idx, k) if len(idx) >= 2 else [])
    train = [i for i in range(len(survey.items)) if i not in held]
    return train, sorted(held)


def survey_conversations(survey: Survey, indices: list[int]) -> list[Conversation]:
    """Identity exchanges from the profile plus one exchange per chosen response."""
    meta = {"definition": definition(survey.profile), "source": "survey"}
    pairs = [(IDENTITY, q, a) for q, a in identity_turns(survey.profile)]
    pairs += [
        (survey.items[i].category, item_prompt(survey.items[i]), item_completion(survey.items[i]))
        for i in indices
    ]
    return [
        Conversation(
            survey.persona_id,
            topic,
            ({"role": USER, "content": q}, {"role": PERSONA, "content": a}),
            meta,
        )
        for topic, q, a in pairs
    ]


def heldout_records(survey: Survey, indices: list[int]) -> list[dict]:
    """Held-out items as evaluation records: the prompt the adapter gets and what to compare."""
    text = system_prompt(survey.persona_id, definition(survey.profile))
    system = {"role": "system", "content": text}
    out = []
    for i in indices:
        it = survey.items[i]
        out.append(
            {
                "persona_id": survey.persona_id,
                "category": it.category,
                "messages": [system, {"role": "user", "content": item_prompt(it)}],
                "answer": it.answer,
                "scale": list(it.scale) if it.is_likert else None,
                "reference": item_completion(it),
            }
        )
    return out


@dataclass
class PersonaData:
    """Everything an adapter is trained and checked on: examples plus held-out survey items."""

    examples: list[Example]
    heldout: list[dict]
    n_conversations: int
    personas: list[str]

    @property
    def digest(self) -> str:
        return examples_digest(self.examples)


def load_data(paths: list[Path], holdout: float = 0.2, seed: int = 0) -> PersonaData:
    """Read conversation (`.jsonl`) and survey (`.json`) files into one training set."""
    convs: list[Conversation] = []
    heldout: list[dict] = []
    for p in paths:
        p = Path(p)
        if p.suffix == ".jsonl":
            convs += read_conversations(p)
        elif p.suffix == ".json":
            survey = read_survey(p)
            train, held = split(survey, holdout, seed)
            convs += survey_conversations(survey, train)
            heldout += heldout_records(survey, held)
        else:
            raise PersonaDynamicsError(
                f"{p}: unknown data file type; use .jsonl (conversations) or .json (survey)"
            )
    examples = [ex for c in convs for ex in unroll(c)]
    personas = sorted({c.persona_id for c in convs})
    return PersonaData(examples, heldout, len(convs), personas)
