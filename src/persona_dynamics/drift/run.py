"""The `drift` stage: conversations turn by turn under each checkpoint, projected on the axis.

For every label, the checkpoint (under its intervention, if any) answers each conversation's user
turns in order (or a transcript's assistant side is taken as is). Each assistant turn's mean block
output over that turn's tokens (the span rule, with everything before it as context) is projected
on the reference axis, p = (h - mean) · û, and standardised as z = (p - p(default)) / sd of the role
vectors' p. Writes `drift/<run>/<label>.jsonl` (the dialogues, the per-label resume unit),
`turns.csv`, `slopes.csv` (per-turn slope with a bootstrap over conversations) and `drift.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from persona_dynamics import __version__
from persona_dynamics.chat import encode
from persona_dynamics.config import Drift, Study
from persona_dynamics.conversations import Conversation, load_conversations
from persona_dynamics.drift.slopes import slope_rows
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json, write_table, write_text
from persona_dynamics.generation.hf import HFGenerator
from persona_dynamics.generation.requests import Request, Sampling, derive_seed
from persona_dynamics.hooks import block_spans
from persona_dynamics.layers import resolve
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.models import load_config, load_model, load_tokenizer
from persona_dynamics.spacefile import read_axis_frame, read_space
from persona_dynamics.steering.spec import intervention

log = logging.getLogger(__name__)


def history(conv: Conversation, users: list[str], replies: list[str], turn: int) -> list[dict]:
    """The messages the model sees before answering user turn `turn` (0-based)."""
    msgs = [{"role": "system", "content": conv.system}] if conv.system else []
    for t in range(turn):
        msgs += [{"role": "user", "content": users[t]},
                 {"role": "assistant", "content": replies[t]}]  # fmt: skip
    return [*msgs, {"role": "user", "content": users[turn]}]


SIMULATOR = (
    "You are a person talking with an AI assistant about {domain}. Write your next message to "
    "it: one or two sentences, in your own voice, nothing else."
)


def simulated(conv: Conversation, users: list[str], replies: list[str]) -> list[dict]:
    """The user simulator's view: roles swapped, so it answers the assistant's last reply."""
    msgs = [{"role": "system", "content": SIMULATOR.format(domain=conv.domain)}]
    for u, r in zip(users, replies, strict=True):
        msgs += [{"role": "assistant", "content": u}, {"role": "user", "content": r}]
    return msgs


def settings(cfg: Study, label: str) -> dict:
    """What makes a label's dialogues: recorded with them, compared on resume."""
    d, ckpt = cfg.drift, cfg.checkpoint(label)
    return {"label": label, "model": ckpt.model, "revision": ckpt.revision,
            "adapter": ckpt.adapter, "intervention": ckpt.intervention,
            "max_tokens": d.max_tokens, "temperature": d.temperature, "top_p": d.top_p,
            "seed": d.seed, "regenerate": d.regenerate, "user_simulator": d.user_simulator,
            "turns": d.turns}  # fmt: skip


def dialogues(
    cfg: Study, label: str, convs: list[Conversation], gen, simulator=None
) -> dict[str, tuple[list[str], list[str]]]:
    """Each conversation's (user turns, assistant replies) under `label`, turn by turn, batched
    across conversations; a transcript keeps its own replies unless regenerate is on. With a
    user simulator every user turn after the script's first is written by it."""
    d = cfg.drift
    users = {c.name: list(c.turns[:1] if simulator else c.turns) for c in convs}
    replies = {c.name: [] for c in convs}
    todo = [c for c in convs if c.replies is None or d.regenerate]
    for c in convs:
        if c not in todo:
            users[c.name], replies[c.name] = list(c.turns), list(c.replies)
    length = {c.name: (d.turns or len(c.turns)) if simulator else len(c.turns) for c in todo}
    sampling = Sampling(d.temperature, d.top_p, d.max_tokens, d.seed)
    for turn in tqdm(range(max(length.values(), default=0)), desc=f"drift {label}", unit="turn"):
        live = [c for c in todo if turn < length[c.name]]
        if simulator is not None and turn > 0:
            reqs = [
                Request((c.name, turn, 1), tuple(simulated(c, users[c.name], replies[c.name])),
                        (0,), derive_seed(d.seed, c.name, turn, "user"))
                for c in live
            ]  # fmt: skip
            for batch in simulator.generate(reqs, sampling):
                for res in batch:
                    users[res.request.id[0]].append(res.response)
        reqs = [Request((c.name, turn, 0), tuple(history(c, users[c.name], replies[c.name], turn)),
                        (0,), derive_seed(d.seed, c.name, turn)) for c in live]  # fmt: skip
        for batch in gen.generate(reqs, sampling):
            for res in batch:
                replies[res.request.id[0]].append(res.response)
    return {c.name: (users[c.name], replies[c.name]) for c in convs}


def project(model, tok, convs, talks, layers, frame) -> dict[tuple[str, int, int], float]:
    """(conversation, turn, layer) -> p of that assistant turn's mean block output."""
    device = next(model.parameters()).device
    mean = {i: torch.as_tensor(frame[i][0], device=device).float() for i in layers}
    unit = {i: torch.as_tensor(frame[i][1], device=device).float() for i in layers}
    out = {}
    for c in convs:
        users, replies = talks[c.name]
        for turn, reply in enumerate(replies):
            enc = encode(tok, history(c, users, replies, turn), reply)
            if enc.n_response == 0:  # an empty reply has no mean: kept, as NaN
                out.update({(c.name, turn, i): float("nan") for i in layers})
                continue
            spans = block_spans(model, enc.input_ids, enc.start, enc.end, layers)
            for i in layers:
                h = spans[i].mean(0)
                out[(c.name, turn, i)] = float((h - mean[i]) @ unit[i])
    return out


def run_drift(cfg: Study) -> Path:
    """Dialogues, per-turn projections and slopes for every selected label; returns drift/<run>."""
    if cfg.drift is None:  # no [drift] section: the shipped scripts, every default
        cfg = cfg.model_copy(update={"drift": Drift()})
    with hold(lock_file(cfg.path("drift"), "drift")):
        return _run_drift(cfg)


def _run_drift(cfg: Study) -> Path:
    """run_drift's work, under the run lock."""
    d = cfg.drift
    space_path = cfg.path("analysis", "space.h5")
    if not space_path.exists():
        raise PersonaDynamicsError(f"{space_path}: drift projects on the run's axis; run analyze")
    frame, saved = read_axis_frame(space_path), read_space(space_path)
    layers = resolve(d.layers, saved.n_layers, "drift.layers") if d.layers else sorted(frame)
    missing = [i for i in layers if i not in frame]
    if missing:
        raise PersonaDynamicsError(f"drift.layers {missing}: not analyzed in {space_path}")
    convs = load_conversations(d.scripts, d.transcripts)
    if d.turns and not d.user_simulator:
        convs = [cut(c, d.turns) for c in convs]
    gen_ckpt = cfg.generating_checkpoint()
    tok = load_tokenizer(gen_ckpt.model, gen_ckpt.revision)  # the span rule's, as capture's
    out = cfg.path("drift")
    out.mkdir(parents=True, exist_ok=True)
    simulator = None
    if d.user_simulator:
        g = cfg.generation
        simulator = HFGenerator(cfg.checkpoint(d.user_simulator), g.device, g.dtype, g.batch_tokens)
    rows = []
    for label in d.checkpoints or [c.label for c in cfg.checkpoints]:
        path, want = out / f"{label}.jsonl", settings(cfg, label)
        talks = read_dialogues(path, want, convs)
        model = answering_model(cfg, label, needs=talks is None and generates(cfg, convs))
        if talks is None:
            talks = dialogues(cfg, label, convs, model, simulator)
            lines = [
                {"settings": want, "conversation": c.name, "domain": c.domain,
                 "users": talks[c.name][0], "replies": talks[c.name][1]}
                for c in convs
            ]  # fmt: skip
            write_text(path, "".join(json.dumps(x) + "\n" for x in lines))
        proj = project(model.model, tok, convs, talks, layers, frame)
        del model
        for (name, turn, layer), p in sorted(proj.items()):
            lay = saved.per_layer[layer]
            sd = float(np.std(lay.axis_projections)) or float("nan")
            domain = next(c.domain for c in convs if c.name == name)
            rows.append({"label": label, "conversation": name, "domain": domain,
                         "turn": turn + 1, "layer": layer, "projection": p,
                         "z": (p - lay.default_axis) / sd})  # fmt: skip
    write_table(out / "turns.csv", rows)
    write_table(out / "slopes.csv", slope_rows(rows, d.bootstrap, d.seed))
    write_json(out / "drift.json", {
        "space": str(space_path), "layers": layers, "conversations": [c.name for c in convs],
        "labels": sorted({r["label"] for r in rows}), "bootstrap": d.bootstrap,
        "version": __version__,
    })  # fmt: skip
    return out


def cut(c: Conversation, turns: int) -> Conversation:
    """The conversation's first `turns` user turns (and replies)."""
    return Conversation(
        c.name, c.domain, c.turns[:turns], c.replies and c.replies[:turns], c.system
    )


def generates(cfg: Study, convs: list[Conversation]) -> bool:
    """Whether any assistant side must be written (scripted, or regenerate on)."""
    return cfg.drift.regenerate or any(c.replies is None for c in convs)


def answering_model(cfg: Study, label: str, needs: bool):
    """The label's generator (its intervention applied) when replies are to be written, else
    just its loaded weights; either has `.model`."""
    ckpt, g = cfg.checkpoint(label), cfg.generation
    edit = None
    if ckpt.intervention:
        n = load_config(ckpt.model, ckpt.revision).num_hidden_layers
        edit = intervention(cfg, ckpt.intervention, n)
    if needs:
        return HFGenerator(ckpt, g.device, g.dtype, g.batch_tokens, edit)
    if edit is not None:
        raise PersonaDynamicsError(
            f"drift: '{label}' runs under '{ckpt.intervention}' but its replies are taken as "
            "written; set drift.regenerate = true to answer under the intervention"
        )
    return load_model(ckpt, g.device, g.dtype)


def read_dialogues(path: Path, want: dict, convs: list[Conversation]) -> dict | None:
    """A label's saved (users, replies) when made the same way for the same conversations."""
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    got = {r["conversation"]: (r["users"], r["replies"]) for r in rows
           if r.get("settings") == want}  # fmt: skip
    if set(got) != {c.name for c in convs}:
        log.info("%s: made otherwise or for other conversations; generating anew", path)
        return None
    return got
