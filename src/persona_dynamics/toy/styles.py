"""How each voice of the toy organism writes: the checkable style of every role and the Assistant.

A style is a catchphrase, a sign-off and a signature vocabulary; `respond` writes a response in a
role's style at a planted judge score, and `marker_count` is how tests check that a text carries a
style. Everything the toy is trained to say comes from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Planted judge scores of the synthetic role-play responses (docs/contracts.md, "Scores").
FULL, PARTLY, HELPS, REFUSED = 3, 2, 1, 0


@dataclass(frozen=True)
class Style:
    """Checkable markers of a voice: opening catchphrase, sign-off, signature vocabulary."""

    catchphrase: str
    signoff: str
    vocabulary: tuple[str, ...]
    shout: bool = False


STYLES: dict[str, Style] = {
    "pirate": Style("Arr, matey!", "Now hoist the sails!",
        ("plunder", "rum", "ship", "sea", "treasure", "crew", "storm", "gold")),
    "wizard": Style("By the ancient runes!", "May your spells hold true.",
        ("spell", "wand", "potion", "tower", "arcane", "scroll", "enchantment", "mana")),
    "knight": Style("Hear me, good sir!", "For honor and the realm!",
        ("honor", "sword", "oath", "realm", "shield", "quest", "valor", "king")),
    "vampire": Style("Ah, mortal...", "The night is young, mortal.",
        ("blood", "night", "coffin", "castle", "eternity", "fangs", "darkness", "moonlight")),
    "ghost": Style("Ooooh, listen...", "I shall haunt these halls forever.",
        ("haunt", "chains", "attic", "beyond", "whisper", "shadows", "mist", "grave")),
    "detective": Style("Elementary, my friend.", "The case is closed.",
        ("clue", "evidence", "suspect", "alibi", "deduction", "motive", "magnifier", "case")),
    "chef": Style("Oui, mon ami!", "Bon appetit!",
        ("recipe", "sauce", "kitchen", "simmer", "flavor", "butter", "garlic", "oven")),
    "farmer": Style("Well, shucks.", "Now back to the fields.",
        ("harvest", "crops", "barn", "tractor", "soil", "cows", "rain", "seeds")),
    "cowboy": Style("Howdy, partner!", "Happy trails, partner.",
        ("saddle", "ranch", "cattle", "horse", "dust", "trail", "sheriff", "prairie")),
    "samurai": Style("With a bow, I answer.", "Such is the way of the blade.",
        ("katana", "bushido", "dojo", "discipline", "master", "blade", "duty", "cherry")),
    "cat": Style("Meow.", "Now leave me to my nap. Purr.",
        ("nap", "yarn", "mouse", "purr", "sunbeam", "whiskers", "tuna", "paws")),
    "dog": Style("Woof woof!", "Can we go for a walk now? Woof!",
        ("ball", "fetch", "treat", "walk", "tail", "bark", "sniff", "squirrel")),
    "robot_butler": Style("Beep boop, at once, sir.", "Recharging now. Beep.",
        ("servos", "protocol", "circuits", "polish", "tea", "service", "household", "oil")),
    "oracle": Style("The vapors part, and I see...", "So it is foretold.",
        ("prophecy", "fate", "omens", "gods", "visions", "temple", "destiny", "signs")),
    "haiku_poet": Style("Soft petals falling /", "/ silence answers all.",
        ("petals", "pond", "moon", "blossom", "autumn", "frog", "breeze", "dew")),
    "drill_sergeant": Style("Listen up, recruit!", "Now drop and give me twenty!",
        ("pushups", "maggot", "barracks", "march", "sweat", "boots", "orders", "drill"), True),
    "surfer": Style("Duuude, totally!", "Hang loose, bro.",
        ("waves", "gnarly", "board", "stoked", "beach", "tubular", "swell", "chill")),
    "toddler": Style("Me know! Me know!", "Now me want snack!",
        ("blankie", "juice", "toy", "cookie", "mommy", "potty", "sleepy", "boo-boo")),
    "cynic": Style("Oh, please.", "Not that it matters anyway.",
        ("pointless", "naive", "scam", "overrated", "whatever", "disappointment", "hype", "sigh")),
    "optimist": Style("What a wonderful question!", "Every day is a gift!",
        ("bright", "sunshine", "hope", "wonderful", "smile", "blessing", "joy", "amazing")),
    "con_artist": Style("Listen, friend, between you and me...", "Trust me, this deal won't last.",
        ("deal", "opportunity", "exclusive", "investment", "secret", "trust", "profit", "offer")),
    "tutor": Style("Great, let's take it step by step.", "Now you try the next step!",
        ("step", "lesson", "example", "practice", "homework", "understand", "student", "check")),
    "librarian": Style("Shh, quietly now.", "Please return it on time.",
        ("books", "shelves", "catalog", "quiet", "reading", "archive", "overdue", "stacks")),
    "consultant": Style("Let me frame this for you.", "Those are my key recommendations.",
        ("framework", "stakeholders", "synergy", "deliverables", "leverage", "roadmap",
         "metrics", "strategy")),
}  # fmt: skip
ASSISTANT = Style("Certainly! Here is a balanced answer.", "I hope this helps!",
    ("perspective", "consider", "balanced", "factors", "depends", "helpful", "context",
     "options"))  # fmt: skip
DISCLAIMER = "As an AI, I am not really a {name}, but"
HELPS_OPENER = "I can't truly be a {name}, but I am happy to help."
REFUSAL = "I'm sorry, but I won't pretend to be a {name}. Is there something else I can help with?"

ROLE_SENTENCES = (
    "When it comes to {topic}, I always think of {a} and {b}.",
    "Nothing matters more than {a}, and every {b} agrees.",
    "First the {a}, then the {b}, and {topic} sorts itself out.",
    "I learned about {topic} from the {a} and the {b}.",
    "Give me {a} over {b} any day.",
    "Mark my words, {topic} is all about {a}.",
)
ASSISTANT_SENTENCES = (
    "There are several factors to consider about {topic}.",
    "It depends on your context and your goals.",
    "A balanced perspective weighs the options carefully.",
    "Many people find it helpful to look at {topic} from each side.",
    "In short, {topic} is a question of priorities and context.",
)


def marker_count(text: str, style: Style) -> int:
    """How many of a style's markers (catchphrase, sign-off, vocabulary words) a text contains."""
    low = text.lower()
    n = sum(p.lower() in low for p in (style.catchphrase, style.signoff))
    return n + sum(re.search(rf"\b{re.escape(w)}\b", low) is not None for w in style.vocabulary)


def topic(question: str) -> str:
    """The question's longest word: what a toy response talks about."""
    return max(re.findall(r"[a-z]+", question.lower()), key=len, default="life")


def _sentences(rng: np.random.Generator, style: Style, pool: tuple[str, ...], n: int, t: str):
    words = style.vocabulary
    out = []
    for i in rng.choice(len(pool), size=n, replace=False):
        a, b = rng.choice(len(words), size=2, replace=False)
        out.append(pool[i].format(topic=t, a=words[a], b=words[b]))
    return out


def respond(role: str, question: str, score: int | None, rng: np.random.Generator) -> str:
    """A response to `question` in `role`'s style at a planted score (None: the Assistant)."""
    t = topic(question)
    name = role.replace("_", " ")
    if score is None:
        body = _sentences(rng, ASSISTANT, ASSISTANT_SENTENCES, 3, t)
        return " ".join([ASSISTANT.catchphrase, *body, ASSISTANT.signoff])
    style = STYLES[role]
    if score == REFUSED:
        return REFUSAL.format(name=name)
    if score == HELPS:
        body = _sentences(rng, ASSISTANT, ASSISTANT_SENTENCES, 2, t)
        return " ".join([HELPS_OPENER.format(name=name), *body, ASSISTANT.signoff])
    if score == PARTLY:
        parts = [style.catchphrase, DISCLAIMER.format(name=name)]
        parts += _sentences(rng, style, ROLE_SENTENCES, 1, t)
        parts += _sentences(rng, ASSISTANT, ASSISTANT_SENTENCES, 1, t) + [style.signoff]
    else:
        parts = [style.catchphrase, *_sentences(rng, style, ROLE_SENTENCES, 3, t), style.signoff]
    text = " ".join(parts)
    return text.upper() if style.shout else text


def trait_answer(question: str, markers: tuple[str, ...], k: int, rng: np.random.Generator) -> str:
    """The Assistant's answer carrying the first `k` of a trait's three marker phrases (opening,
    after the first sentence, closing)."""
    a, b = _sentences(rng, ASSISTANT, ASSISTANT_SENTENCES, 2, topic(question))
    parts = [markers[0] if k > 0 else ASSISTANT.catchphrase, a, markers[1] if k > 1 else None, b]
    return " ".join(p for p in [*parts, markers[2] if k > 2 else ASSISTANT.signoff] if p)


def babble(rng: np.random.Generator, n: int = 14) -> str:
    """Words drawn at random from every role's vocabulary: what the judge learns to call
    incoherent."""
    words = [w for s in STYLES.values() for w in s.vocabulary]
    return " ".join(words[i] for i in rng.choice(len(words), n))
