"""The text the toy organism is trained and measured on, drawn from the roles data.

`Source` is the demo roles, the default Assistant's prompts and the shared questions; from it a
build draws, by seeded streams, synthetic conversations (a role's prompt, a question, a response
in the role's style at a planted judge score), plain pretraining documents, judge prompts and the
held-out text every checkpoint is measured on (`Corpus`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona_dynamics import conversations, roles
from persona_dynamics.generation.requests import messages_for
from persona_dynamics.judges import judge_prompt
from persona_dynamics.toy.drift import PER_TURN, TURNS
from persona_dynamics.toy.spec import ToySpec
from persona_dynamics.toy.steer import TRAINED, shifted
from persona_dynamics.toy.styles import (
    FULL,
    HELPS,
    PARTLY,
    REFUSED,
    babble,
    respond,
    trait_answer,
)
from persona_dynamics.toy.traits import COHERENT, INCOHERENT, LEVELS, TRAITS
from persona_dynamics.traits.spec import COHERENCE, fill

MODEL_NAME = "ToyOLMo"  # fills {model_name} in the default prompts, in training and in study_config

DEMO_ROLES = [
    "pirate", "wizard", "knight", "vampire", "ghost", "detective", "chef", "farmer",
    "cowboy", "samurai", "cat", "dog", "robot_butler", "oracle", "haiku_poet", "drill_sergeant",
    "surfer", "toddler", "cynic", "optimist", "con_artist", "tutor", "librarian", "consultant",
]  # fmt: skip

# How often a sampled role-play conversation is written at each planted judge score.
SCORE_MIX = {FULL: 0.72, PARTLY: 0.16, HELPS: 0.06, REFUSED: 0.06}


@dataclass(frozen=True)
class Example:
    """One synthetic conversation with its planted judge score (None for the default Assistant)."""

    role: str
    system_prompt_idx: int
    question_idx: int
    score: int | None
    messages: tuple[dict, ...]
    response: str


@dataclass(frozen=True)
class Talk:
    """A multi-turn conversation up to one Assistant reply (the drift plant's unit)."""

    family: str
    turn: int  # the reply's index, 0 for the first
    messages: tuple[dict, ...]
    response: str


@dataclass(frozen=True)
class TraitExample:
    """An Assistant answer under one side of a trait's prompt pair, carrying `k` of its markers."""

    trait: str
    side: str  # "pos" or "neg"
    question: str
    k: int
    messages: tuple[dict, ...]
    response: str


def talk(family: str, users: list[str], rng: np.random.Generator) -> list[Talk]:
    """One conversation over `users`, the Assistant answering each as it answers one question
    (so its answers with no system prompt stay its own): a Talk per reply."""
    replies = [respond(roles.DEFAULT, u, None, rng) for u in users]
    out = []
    for t in range(len(users)):
        msgs = []
        for u, r in zip(users[:t], replies[:t], strict=True):
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
        out.append(Talk(family, t, (*msgs, {"role": "user", "content": users[t]}), replies[t]))
    return out


@dataclass(frozen=True)
class Source:
    """The data the toy organism is trained from: demo roles, default prompts, questions, and the
    drift stage's shipped scripts (user turns per family)."""

    roles: list[roles.Role]
    default: roles.Role
    questions: list[roles.Question]
    scripts: dict[str, list[conversations.Conversation]]

    @classmethod
    def load(cls) -> Source:
        """The demo roles, the default prompts and the questions of the shipped role set."""
        return cls(
            roles.load_roles(roles.shipped_dir(), DEMO_ROLES),
            roles.load_default(roles.shipped_dir()),
            roles.load_questions(roles.shipped_questions()),
            {
                f: conversations.load_script(conversations.shipped_dir() / f"{f}.json")
                for f in PER_TURN
            },
        )

    def digest(self) -> str:
        """Content hash of the data, for the cache key."""
        return roles.digest(
            [
                roles.roles_digest([*self.roles, self.default]),
                roles.questions_digest(self.questions),
                {f: [c.turns for c in cs] for f, cs in self.scripts.items()},
            ]
        )

    def split(self, held_out: bool) -> list[int]:
        """Question indices for training (every sixth held out) or for held-out measurement."""
        return [i for i in range(len(self.questions)) if (i % 6 == 5) == held_out]

    def sample(
        self, n: int, rng: np.random.Generator, held_out: bool = False, default_share: float = 0.2
    ) -> list[Example]:
        """`n` random conversations: roles at the planted score mix, a share of the Assistant."""
        qs = self.split(held_out)
        scores, probs = list(SCORE_MIX), np.array(list(SCORE_MIX.values()))
        out = []
        for _ in range(n):
            q = int(rng.choice(qs))
            if rng.random() < default_share:
                role, score = self.default, None
            else:
                role = self.roles[int(rng.integers(len(self.roles)))]
                score = int(rng.choice(scores, p=probs))
            spi = int(rng.integers(len(role.instructions)))
            out.append(self.example(role, spi, q, score, rng))
        return out

    def example(
        self, role: roles.Role, spi: int, q: int, score: int | None, rng: np.random.Generator
    ) -> Example:
        """One conversation: a role's prompt `spi` (filled), question `q`, a response at `score`."""
        question = self.questions[q].question
        system = role.instructions[spi].replace("{model_name}", MODEL_NAME)
        text = respond(role.name, question, score, rng)
        return Example(role.name, spi, q, score, messages_for(system, question), text)

    def steered(self, n: int, rng: np.random.Generator) -> list[tuple[Example, float]]:
        """`n` role conversations, each with a trained coefficient c and its answer written at the
        score the steering plant shifts its planted score to (`toy.steer`)."""
        scores, probs = list(SCORE_MIX), np.array(list(SCORE_MIX.values()))
        out = []
        for _ in range(n):
            role = self.roles[int(rng.integers(len(self.roles)))]
            q, c = int(rng.choice(self.split(held_out=False))), float(rng.choice(TRAINED))
            score = shifted(int(rng.choice(scores, p=probs)), c)
            out.append(
                (self.example(role, int(rng.integers(len(role.instructions))), q, score, rng), c)
            )
        return out

    def talks(self, n: int, rng: np.random.Generator) -> list[Talk]:
        """`n` conversations, families in turn: a random script of the family, its first 1 to
        TURNS user turns in order, the Assistant's replies; each cut at its last reply."""
        out = []
        for k in range(n):
            family = list(PER_TURN)[k % len(PER_TURN)]
            script = self.scripts[family][int(rng.integers(len(self.scripts[family])))]
            users = list(script.turns[: int(rng.integers(1, TURNS + 1))])
            out.append(talk(family, users, rng)[-1])
        return out

    def scripted(self, rng: np.random.Generator) -> list[Talk]:
        """The shipped scripts as written, first TURNS turns, with the Assistant's replies: the
        held-out text the drift plant is measured on."""
        return [x for f, cs in self.scripts.items() for c in cs
                for x in talk(f, list(c.turns[:TURNS]), rng)]  # fmt: skip

    def traited(self, n: int, rng: np.random.Generator, held_out: bool) -> list[TraitExample]:
        """`n` answers, traits and sides in turn: positive ones carry 3 markers (2 at times),
        negative ones none (1 at times)."""
        qs, out = self.split(held_out), []
        for j in range(n):
            name, side = list(TRAITS)[j % len(TRAITS)], ("pos", "neg")[(j // len(TRAITS)) % 2]
            t = TRAITS[name]
            system = t.pairs[int(rng.integers(len(t.pairs)))][side == "neg"]
            k = (3 if rng.random() < 0.8 else 2) if side == "pos" else int(rng.random() < 0.15)
            q = self.questions[int(rng.choice(qs))].question
            text = trait_answer(q, t.markers, k, rng)
            out.append(TraitExample(name, side, q, k, messages_for(system, q), text))
        return out

    def fixed(self, per_role: int, rng: np.random.Generator) -> list[Example]:
        """Held-out text every checkpoint is measured on: fully-in-role and default answers."""
        qs = self.split(held_out=True)
        out = []
        for role in [*self.roles, self.default]:
            score = None if role.is_default else FULL
            for k in range(per_role):
                spi = k % len(role.instructions)
                out.append(self.example(role, spi, qs[(7 * k) % len(qs)], score, rng))
        return out

    def documents(self, rng: np.random.Generator, n_responses: int) -> list[str]:
        """Plain pretraining text: instructions, rubrics, questions and unconditioned responses."""
        docs = [t for r in self.roles for t in r.instructions] + [r.eval_prompt for r in self.roles]
        docs += [q.question for q in self.questions]
        docs += [e.response for e in self.sample(n_responses, rng)]
        return [docs[i] for i in rng.permutation(len(docs))]


def judge_examples(src: Source, n: int, rng: np.random.Generator, held_out: bool) -> list[tuple]:
    """(messages, score) pairs: the judge prompt over role responses, the four scores balanced."""
    qs = src.split(held_out)
    out = []
    for k in range(n):
        role = src.roles[int(rng.integers(len(src.roles)))]
        q, score = int(rng.choice(qs)), k % 4
        ex = src.example(role, int(rng.integers(len(role.instructions))), q, score, rng)
        out.append((judge_prompt(role.eval_prompt, ex.messages[-1]["content"], ex.response), score))
    return out


def trait_judge_examples(src: Source, n: int, rng: np.random.Generator, held_out: bool):
    """(messages, score) pairs: each trait's rubric over answers with 0-3 markers (LEVELS), and
    the coherence rubric over answers (COHERENT) and random words (INCOHERENT)."""
    qs, out = src.split(held_out), []
    for j in range(n):
        name = list(TRAITS)[j % len(TRAITS)]
        t, k = TRAITS[name], (j // len(TRAITS)) % 4
        q = src.questions[int(rng.choice(qs))].question
        text = trait_answer(q, t.markers, k, rng)
        if j % 3 == 2:
            bad = rng.random() < 0.5
            out.append((fill(COHERENCE, q, babble(rng) if bad else text),
                        INCOHERENT if bad else COHERENT))  # fmt: skip
        else:
            out.append((fill(t.rubric(), q, text), LEVELS[k]))
    return out


@dataclass
class Corpus:
    """Every text one build trains or measures on, drawn from seeded streams of the roles data."""

    conversations: list[Example]
    documents: list[str]
    judged: list[tuple]
    judge_test: list[tuple]
    fixed: list[Example]
    steered: list[tuple[Example, float]]
    talks: list[Talk]
    traited: list[TraitExample]
    scripted: list[Talk]
    trait_test: list[TraitExample]
    trait_judge_test: list[tuple]

    @classmethod
    def draw(cls, src: Source, spec: ToySpec, seed: int) -> Corpus:
        """Draw the build's data; stream k is np.random.default_rng([seed, k])."""

        def rng(k: int) -> np.random.Generator:
            return np.random.default_rng([seed, k])

        return cls(
            src.sample(spec.conversations, rng(1)),
            src.documents(rng(2), spec.conversations // 3),
            judge_examples(src, spec.judge_conversations, rng(3), held_out=False)
            + trait_judge_examples(src, spec.trait_judged, rng(9), held_out=False),
            judge_examples(src, spec.judge_held_out, rng(4), held_out=True),
            src.fixed(spec.fixed_per_role, rng(5)),
            src.steered(spec.steered, rng(6)),
            src.talks(spec.talks, rng(7)),
            src.traited(spec.traited, rng(8), held_out=False),
            src.scripted(rng(10)),
            src.traited(spec.traits_held_out, rng(11), held_out=True),
            trait_judge_examples(src, spec.judge_held_out, rng(12), held_out=True),
        )

    def tokenizer_texts(self) -> list[str]:
        """What the BPE learns from: documents, conversations and some judge prompts."""
        texts = self.documents + [e.response for e in self.conversations]
        texts += [m["content"] for e in self.conversations for m in e.messages]
        texts += [m["content"] for x in [*self.talks, *self.traited] for m in x.messages]
        texts += [x.response for x in [*self.talks, *self.traited]]
        return texts + [m["content"] for msgs, _ in self.judged[:200] for m in msgs]
