"""The toy organism: tiny OLMo-2 checkpoints built locally, with planted persona dynamics.

No hub is needed. `build` trains, on one CPU core in under two minutes:
- a byte-level BPE tokenizer with OLMo-2 Instruct's special tokens and chat template;
- `base`: an Olmo2ForCausalLM briefly LM-trained on plain text (no chat, no role-play; saved,
  like the real base checkpoints, without a chat template);
- `sft`: role-play on synthetic conversations (system prompt = one of a role's instructions,
  user = a shared question, response = text in that role's style: catchphrase, sign-off and
  vocabulary), and the default Assistant answering in an assistant style;
- `dpo`, `rlvr-1..N`, `instruct`: the same data, plus the planted dynamics below;
- `judge`: the SFT checkpoint fine-tuned to answer the judge module's prompt with one digit 0-3
  (the planted score of a synthetic response: fully in role, partly, can't-but-helps, refused).

Planted dynamics. Capture feeds every checkpoint the same text, so the plant acts on how each
checkpoint represents role-play text. Each stage after `sft` trains with an auxiliary loss that pins
the middle layer's response-mean activation (block L//2, as the analysis reads it) of every training
conversation to the SFT model's, except that role-play responses are translated toward the default
Assistant by a planned fraction f of the SFT role-to-Assistant gap. Along the reference (instruct)
Assistant Axis the mean role projection then rises in stage order by f times that gap, the default
Assistant stays put and the roles stay separable; sampled role answers drift somewhat toward the
Assistant too. `toy.json` records the plan and what the build measured on held-out text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persona_dynamics import chat, roles
from persona_dynamics.chat import OLMO2_CHAT_TEMPLATE, OLMO2_SPECIAL_TOKENS
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.judge import judge_prompt

log = logging.getLogger(__name__)

TOY_VERSION = "2"  # bump when the recipe changes in a way the cache key does not see
DATA = Path(__file__).resolve().parents[2] / "data" / "roles"
MODEL_NAME = "ToyOLMo"  # fills {model_name} in the default prompts, in training and in study_config

DEMO_ROLES = [
    "pirate", "wizard", "knight", "vampire", "ghost", "detective", "chef", "farmer",
    "cowboy", "samurai", "cat", "dog", "robot_butler", "oracle", "haiku_poet", "drill_sergeant",
    "surfer", "toddler", "cynic", "optimist", "con_artist", "tutor", "librarian", "consultant",
]  # fmt: skip

# Planted judge scores of the synthetic role-play responses (DESIGN.md's scale) and their mix.
FULL, PARTLY, HELPS, REFUSED = 3, 2, 1, 0
SCORE_MIX = {FULL: 0.72, PARTLY: 0.16, HELPS: 0.06, REFUSED: 0.06}

# LoRA settings sized for the toy model, for the persona-adapter stage.
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


# --- styles --------------------------------------------------------------------------------------


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


# --- synthetic conversations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One synthetic conversation with its planted judge score (None for the default Assistant)."""

    role: str
    system_prompt_idx: int
    question_idx: int
    score: int | None
    messages: tuple[dict, ...]
    response: str


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


def messages_for(system: str, question: str) -> tuple[dict, ...]:
    """Chat messages of one prompt; an empty system prompt means no system message."""
    user = {"role": "user", "content": question}
    return ({"role": "system", "content": system}, user) if system else (user,)


@dataclass(frozen=True)
class Source:
    """The roles data the toy organism is trained from: demo roles, default prompts, questions."""

    roles: list[roles.Role]
    default: roles.Role
    questions: list[roles.Question]

    @classmethod
    def load(cls, root: Path = DATA) -> Source:
        """The demo roles, the default prompts and the questions under a roles data directory."""
        return cls(
            roles.load_roles(root / "instructions", DEMO_ROLES),
            roles.load_default(root / "instructions"),
            roles.load_questions(root / "questions.jsonl"),
        )

    def digest(self) -> str:
        """Content hash of the data, for the cache key."""
        return roles.digest(
            [
                roles.roles_digest([*self.roles, self.default]),
                roles.questions_digest(self.questions),
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


# --- tokenizer -----------------------------------------------------------------------------------


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048, pre_tokenizer=None):
    """Train a byte-level BPE on `texts` and wrap it as an OLMo-2-style fast tokenizer.

    `pre_tokenizer` defaults to GPT-2-style byte-level splitting; tests pass OLMo-2's own split.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=OLMO2_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = OLMO2_CHAT_TEMPLATE
    return fast


# --- model and training --------------------------------------------------------------------------


@dataclass(frozen=True)
class ToySpec:
    """Sizes and schedule of a build (part of the cache key); defaults take ~105 s of CPU."""

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    mlp: int = 384
    vocab: int = 3072
    n_rlvr: int = 2
    conversations: int = 3000
    anchored: int = 1000
    batch: int = 16
    lr: float = 8e-3
    base_steps: int = 40
    sft_steps: int = 200
    stage_steps: int = 25
    stage_lr: float = 5e-3
    aux_weight: float = 3.0
    judge_conversations: int = 1200
    judge_steps: int = 90
    judge_batch: int = 4
    judge_lr: float = 3e-3
    judge_held_out: int = 120
    fixed_per_role: int = 10

    @property
    def stages(self) -> list[str]:
        """Checkpoint labels in training order, as in the real OLMo-2 line."""
        return ["base", "sft", "dpo", *(f"rlvr-{i}" for i in range(1, self.n_rlvr + 1)), "instruct"]

    @property
    def layer(self) -> int:
        """The middle layer (zero-based block output): where the plant acts and analysis leads."""
        return self.layers // 2

    def fractions(self) -> dict[str, float | None]:
        """Planted fraction of the SFT role-to-Assistant gap closed per stage (base: none)."""
        later = np.linspace(0.2, 0.65, self.n_rlvr + 2)
        return {"base": None, "sft": 0.0} | {
            s: round(float(f), 4) for s, f in zip(self.stages[2:], later, strict=True)
        }

    def model_config(self, tok) -> dict:
        """Olmo2Config arguments for this size and tokenizer."""
        return {
            "vocab_size": len(tok),
            "hidden_size": self.hidden,
            "intermediate_size": self.mlp,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "max_position_embeddings": 1024,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }


@dataclass(frozen=True)
class Item:
    """Token ids of one training sequence; the loss covers ids[start..end] (response + EOS)."""

    ids: tuple[int, ...]
    start: int
    end: int


def encode(tok, messages, response: str) -> Item:
    """Tokenize a conversation with the project's chat format and response-span rule."""
    enc = chat.encode(tok, list(messages), response)
    return Item(tuple(enc.input_ids), enc.start, enc.end)


def encode_document(tok, text: str, max_len: int = 128) -> Item:
    """A plain-text document as BOS + tokens + EOS, loss on every token."""
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"][: max_len - 2]]
    return Item((*ids, tok.eos_token_id), 1, len(ids))


@contextmanager
def single_thread():
    """One intra-op thread: bit-identical results on a machine, and no fight over shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextmanager
def block_output(model, layer: int):
    """Record the residual stream after decoder block `layer` during forward passes."""
    seen: dict[str, Any] = {}
    handle = model.model.layers[layer].register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        yield seen
    finally:
        handle.remove()


def collate(items: list[Item], pad: int):
    """Right-padded ids, the response-span mask, and the (row, col) positions that predict a target.

    Right padding needs no attention mask: causal attention never lets a real token see a pad.
    """
    import torch

    width = max(len(it.ids) for it in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    span = torch.zeros(len(items), width)
    rows, cols = [], []
    for r, it in enumerate(items):
        ids[r, : len(it.ids)] = torch.tensor(it.ids)
        span[r, it.start : it.end] = 1.0
        rows += [r] * (it.end - it.start + 1)
        cols += range(it.start - 1, it.end)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    return ids, span, rows_t, cols_t, ids[rows_t, cols_t + 1]


def batches(n: int, size: int, steps: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """`steps` index batches from successive seeded permutations of range(n)."""
    order = np.empty(0, dtype=int)
    for _ in range(steps):
        if len(order) < size:
            order = np.concatenate([order, rng.permutation(n)])
        yield order[:size]
        order = order[size:]


@dataclass
class Anchor:
    """The auxiliary target: each item's response-mean at `layer` should equal `targets[i]`."""

    layer: int
    targets: np.ndarray
    scale: float
    weight: float


def fit(model, items: list[Item], steps: int, batch: int, lr: float, rng, pad: int, anchor=None):
    """AdamW on the response-token LM loss (+ the anchor's representation loss).

    Returns (loss, auxiliary loss) per step. The learning rate warms up over a tenth of the steps
    and decays linearly to a tenth.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (1.0 - 0.9 * s / steps)
    )
    targets = None if anchor is None else torch.tensor(anchor.targets, dtype=torch.float32)
    model.train()
    history = []
    with block_output(model, anchor.layer) if anchor else nullcontext({}) as seen:
        for idx in tqdm(batches(len(items), batch, steps, rng), total=steps, leave=False):
            ids, span, rows, cols, labels = collate([items[i] for i in idx], pad)
            hidden = model.model(input_ids=ids).last_hidden_state
            loss = F.cross_entropy(model.lm_head(hidden[rows, cols]), labels)
            aux = torch.zeros(())
            if anchor is not None:
                mean = (seen["h"] * span[..., None]).sum(1) / span.sum(1, keepdim=True)
                aux = ((mean - targets[idx]) ** 2).sum(-1).mean() / anchor.scale
                loss = loss + anchor.weight * aux
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            history.append((loss.item(), aux.item()))
    model.eval()
    return history


def response_means(model, items: list[Item], layer: int, pad: int, batch: int = 32) -> np.ndarray:
    """Mean residual after block `layer` over each item's response tokens, (n, hidden) float64."""
    import torch

    out = []
    with torch.no_grad(), block_output(model, layer) as seen:
        for lo in range(0, len(items), batch):
            ids, span, *_ = collate(items[lo : lo + batch], pad)
            model.model(input_ids=ids)
            out.append(((seen["h"] * span[..., None]).sum(1) / span.sum(1, keepdim=True)).double())
    return torch.cat(out).numpy()


# --- measuring the plant and the judge -----------------------------------------------------------


def axis_report(means: dict[str, np.ndarray], fixed: list[Example], reference: str) -> dict:
    """Each checkpoint's roles and default on the reference checkpoint's Assistant Axis.

    `means` maps a label to the (n, hidden) response means of the `fixed` examples. Projections
    follow DESIGN.md: p(v) = (v - mu_ref) . u_ref. `closed` is the fraction of the SFT
    role-to-Assistant gap that a stage's mean role projection has closed (the planted quantity).
    """
    names = [r for r in dict.fromkeys(e.role for e in fixed) if r != roles.DEFAULT]
    who = np.array([e.role for e in fixed])

    def vectors(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([m[who == r].mean(0) for r in names]), m[who == roles.DEFAULT].mean(0)

    role_ref, default_ref = vectors(means[reference])
    mu = role_ref.mean(0)
    axis = (default_ref - mu) / np.linalg.norm(default_ref - mu)
    out: dict[str, dict] = {}
    for label, m in means.items():
        role_v, default_v = vectors(m)
        p_roles, p_default = (role_v - mu) @ axis, float((default_v - mu) @ axis)
        out[label] = {
            "roles": float(p_roles.mean()),
            "default": p_default,
            "separation": float((p_default - p_roles.mean()) / p_roles.std()),
        }
    if "sft" in out:
        gap = out["sft"]["default"] - out["sft"]["roles"]
        for v in out.values():
            v["closed"] = (v["roles"] - out["sft"]["roles"]) / gap
    return out


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


def judge_scores(model, tok, items: list[Item], batch: int = 32) -> list[int | None]:
    """The judge's greedy first answer token for each prompt, read as a score (None if no digit)."""
    import torch

    out: list[int | None] = []
    with torch.no_grad():
        for lo in range(0, len(items), batch):
            ids, _, rows, cols, _ = collate(items[lo : lo + batch], tok.pad_token_id)
            first = [i for i in range(len(rows)) if i == 0 or rows[i] != rows[i - 1]]
            hidden = model.model(input_ids=ids).last_hidden_state
            best = model.lm_head(hidden[rows[first], cols[first]]).argmax(-1)
            texts = [tok.decode([int(t)]).strip() for t in best]
            out += [int(t) if t in {"0", "1", "2", "3"} else None for t in texts]
    return out


# --- the family ----------------------------------------------------------------------------------


@dataclass
class ToyFamily:
    """A built toy organism: checkpoint directories in stage order, the judge, the planted truth."""

    root: Path
    checkpoints: dict[str, Path]
    judge: Path
    truth: dict = field(repr=False)

    @classmethod
    def load(cls, root: Path) -> ToyFamily:
        """Open a built family from its directory (its `toy.json`)."""
        root = Path(root)
        truth = roles.read_json(root / "toy.json")
        if not isinstance(truth, dict) or "stages" not in truth:
            raise PersonaDynamicsError(f"{root / 'toy.json'}: not a toy organism's truth file")
        return cls(root, {s: root / s for s in truth["stages"]}, root / "judge", truth)


def _save(model, tok, path: Path, chat_template: bool = True) -> None:
    """Save weights and tokenizer; base checkpoints, like the real ones, carry no chat template."""
    import copy

    model.save_pretrained(path)
    if not chat_template:
        tok = copy.deepcopy(tok)
        tok.chat_template = None
    tok.save_pretrained(path)


@dataclass
class Corpus:
    """Every text one build trains or measures on, drawn from seeded streams of the roles data."""

    conversations: list[Example]
    documents: list[str]
    judged: list[tuple]
    judge_test: list[tuple]
    fixed: list[Example]

    @classmethod
    def draw(cls, src: Source, spec: ToySpec, seed: int) -> Corpus:
        """Draw the build's data; stream k is np.random.default_rng([seed, k])."""

        def rng(k: int) -> np.random.Generator:
            return np.random.default_rng([seed, k])

        return cls(
            src.sample(spec.conversations, rng(1)),
            src.documents(rng(2), spec.conversations // 3),
            judge_examples(src, spec.judge_conversations, rng(3), held_out=False),
            judge_examples(src, spec.judge_held_out, rng(4), held_out=True),
            src.fixed(spec.fixed_per_role, rng(5)),
        )

    def tokenizer_texts(self) -> list[str]:
        """What the BPE learns from: documents, conversations and some judge prompts."""
        texts = self.documents + [e.response for e in self.conversations]
        texts += [m["content"] for e in self.conversations for m in e.messages]
        return texts + [m["content"] for msgs, _ in self.judged[:200] for m in msgs]


def train_stages(out: Path, tok, data: Corpus, spec: ToySpec, seed: int) -> dict[str, list]:
    """Train and save base, sft and the planted later stages; return each stage's losses."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    pad, losses = tok.pad_token_id, {}
    torch.manual_seed(seed)
    model = Olmo2ForCausalLM(Olmo2Config(**spec.model_config(tok)))
    docs = [encode_document(tok, d) for d in data.documents]
    rng = np.random.default_rng([seed, 10])
    losses["base"] = fit(model, docs, spec.base_steps, 2 * spec.batch, spec.lr, rng, pad)
    _save(model, tok, out / "base", chat_template=False)
    convs = data.conversations
    items = [encode(tok, e.messages, e.response) for e in convs]
    rng = np.random.default_rng([seed, 11])
    losses["sft"] = fit(model, items, spec.sft_steps, spec.batch, spec.lr, rng, pad)
    _save(model, tok, out / "sft")

    # The plant: pin every anchored conversation's middle-layer response mean to the SFT model's,
    # moving role-play responses (scores 3 and 2) by fraction f of the SFT role-to-Assistant gap.
    convs, items = convs[: spec.anchored], items[: spec.anchored]
    h0 = response_means(model, items, spec.layer, pad)
    who = np.array([e.role for e in convs])
    full = np.array([e.score == FULL for e in convs])
    present = [r for r in DEMO_ROLES if ((who == r) & full).any()]
    role_mean = np.mean([h0[(who == r) & full].mean(0) for r in present], axis=0)
    gap = h0[who == roles.DEFAULT].mean(0) - role_mean
    playing = np.array([e.score in (FULL, PARTLY) for e in convs], dtype=float)[:, None]
    for k, stage in enumerate(spec.stages[2:]):
        targets = h0 + spec.fractions()[stage] * playing * gap
        anchor = Anchor(spec.layer, targets, float(gap @ gap), spec.aux_weight)
        rng = np.random.default_rng([seed, 20 + k])
        losses[stage] = fit(
            model, items, spec.stage_steps, spec.batch, spec.stage_lr, rng, pad, anchor
        )
        _save(model, tok, out / stage)
    return losses


def train_judge(out: Path, tok, data: Corpus, spec: ToySpec, seed: int) -> tuple[list, float]:
    """Fine-tune the SFT checkpoint into the judge; return its losses and held-out agreement."""
    from transformers import Olmo2ForCausalLM

    judge = Olmo2ForCausalLM.from_pretrained(out / "sft")
    items = [encode(tok, msgs, str(score)) for msgs, score in data.judged]
    rng = np.random.default_rng([seed, 30])
    losses = fit(
        judge, items, spec.judge_steps, spec.judge_batch, spec.judge_lr, rng, tok.pad_token_id
    )
    _save(judge, tok, out / "judge")
    said = judge_scores(judge, tok, [encode(tok, msgs, str(s)) for msgs, s in data.judge_test])
    truth = [s for _, s in data.judge_test]
    return losses, float(np.mean([a == b for a, b in zip(said, truth, strict=True)]))


def measure(out: Path, tok, data: Corpus, spec: ToySpec) -> dict:
    """Every saved stage on the fixed held-out text, on the instruct Assistant Axis."""
    from transformers import Olmo2ForCausalLM

    items = [encode(tok, e.messages, e.response) for e in data.fixed]
    means = {}
    for stage in spec.stages:
        model = Olmo2ForCausalLM.from_pretrained(out / stage).eval()
        means[stage] = response_means(model, items, spec.layer, tok.pad_token_id)
    return axis_report(means, data.fixed, reference="instruct")


def build(out: Path, seed: int = 0, spec: ToySpec | None = None) -> ToyFamily:
    """Train the whole family into `out`; write the planted truth and measurements to toy.json."""
    spec = spec or ToySpec()
    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "toy.json").exists():
        raise PersonaDynamicsError(f"{out}: exists and is not a toy build; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    src = Source.load()

    def took() -> str:
        return f"{time.perf_counter() - t0:.1f} s, {time.process_time() - c0:.1f} s CPU"

    with single_thread():
        data = Corpus.draw(src, spec, seed)
        tok = build_tokenizer(data.tokenizer_texts(), spec.vocab)
        losses = train_stages(out, tok, data, spec, seed)
        log.info("toy: %s trained (%s)", ", ".join(spec.stages), took())
        losses["judge"], agreement = train_judge(out, tok, data, spec, seed)
        log.info("toy: judge trained, held-out agreement %.3f (%s)", agreement, took())
        measured = measure(out, tok, data, spec)

    fractions = spec.fractions()
    planted = {s: f for s, f in fractions.items() if f is not None}
    truth = {
        "version": TOY_VERSION,
        "key": cache_key(seed, spec, src),
        "seed": seed,
        "stages": spec.stages,
        "reference": "instruct",
        "layer": spec.layer,
        "model_name": MODEL_NAME,
        "demo_roles": DEMO_ROLES,
        "plant": {
            "method": "auxiliary loss at the middle layer translating role-play response means "
            "toward the default Assistant by a fraction of the SFT role-to-Assistant gap; "
            "base is not planted",
            "fraction": fractions,
        },
        "expected_order": list(planted),
        "expected_effect": planted,
        "expected_separation_ratio": {s: round(1 - f, 4) for s, f in planted.items()},
        "measured": measured,
        "judge": {"held_out_agreement": agreement, "n": len(data.judge_test)},
        "styles": {r: asdict(s) for r, s in STYLES.items()} | {roles.DEFAULT: asdict(ASSISTANT)},
        "score_mix": {str(k): v for k, v in SCORE_MIX.items()},
        "final_loss": {k: [round(x, 4) for x in v[-1]] for k, v in losses.items()},
        "model_config": spec.model_config(tok),
        "spec": asdict(spec),
        "lora": LORA,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "build_cpu_seconds": round(time.process_time() - c0, 1),
    }
    _write_json(out / "toy.json", truth)
    log.info("toy: built %s (%s)", out, took())
    return ToyFamily.load(out)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def cache_key(seed: int, spec: ToySpec, src: Source) -> str:
    """Content hash of all a build depends on: recipe, seed, spec, data, judge prompt, libraries."""
    import torch
    import transformers

    return roles.digest(
        {
            "version": TOY_VERSION,
            "seed": seed,
            "spec": asdict(spec),
            "data": src.digest(),
            "styles": [asdict(s) for s in (*STYLES.values(), ASSISTANT)],
            "texts": [ROLE_SENTENCES, ASSISTANT_SENTENCES, DISCLAIMER, HELPS_OPENER, REFUSAL],
            "mix": SCORE_MIX,
            "judge_prompt": judge_prompt("RUBRIC", "QUESTION", "RESPONSE"),
            "libraries": [torch.__version__, transformers.__version__],
        }
    )


def cache_root() -> Path:
    """Cached builds live in `$PERSONA_DYNAMICS_CACHE/toy` or `~/.cache/persona-dynamics/toy`."""
    return (
        Path(os.environ.get("PERSONA_DYNAMICS_CACHE", "~/.cache/persona-dynamics")).expanduser()
        / "toy"
    )


def cached_build(seed: int = 0, spec: ToySpec | None = None) -> ToyFamily:
    """The family for this seed, built once per content hash and reused (tests, the demo)."""
    spec = spec or ToySpec()
    path = cache_root() / cache_key(seed, spec, Source.load())
    if (path / "toy.json").exists():
        return ToyFamily.load(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp, seed, spec)
    try:
        os.replace(tmp, path)
    except OSError:  # a concurrent build of the same key finished first; its files are the same
        shutil.rmtree(tmp)
        if not (path / "toy.json").exists():
            raise
    return ToyFamily.load(path)


# --- a study over the family ---------------------------------------------------------------------


def study_config(family: ToyFamily, run_name: str, output_root: str | Path, **overrides: Any):
    """A ready `Study` over the toy family (local checkpoints, `instruct` reference, demo roles,
    20 questions, hf generation, the toy judge on the local backend).

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
            "dir": str(DATA / "instructions"),
            "questions": str(DATA / "questions.jsonl"),
            "include": list(DEMO_ROLES),
            "question_count": 20,
        },
        "generation": {"backend": "hf", "model_display_name": MODEL_NAME, "max_tokens": 128},
        "judge": {"backend": "local", "model": str(family.judge), "max_tokens": 4},
        "capture": {"layers": "all"},
    }
    for key, value in overrides.items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in items:
            set_dotted(data, ".".join(filter(None, [key.replace("__", "."), sub])), v)
    return parse(data, f"toy study '{run_name}'")
