"""What a toy build measures: each stage's roles and Assistant on the reference Assistant Axis
(the planted quantity, on held-out text) and the judge's answers.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from persona_dynamics import roles
from persona_dynamics.hooks import on_blocks
from persona_dynamics.space import PersonaSpace
from persona_dynamics.toy.data import Corpus, Example
from persona_dynamics.toy.sequences import Item, collate, encode
from persona_dynamics.toy.spec import ToySpec


def response_means(
    model, items: list[Item], layers: list[int], pad: int, batch: int = 32
) -> dict[int, np.ndarray]:
    """Mean residual after each block in `layers` over each item's response tokens, (n, hidden)."""
    import torch

    out: dict[int, list] = {x: [] for x in layers}
    seen: dict = {}
    keep = {x: partial(seen.__setitem__, x) for x in layers}
    with torch.no_grad(), on_blocks(model, keep):
        for lo in range(0, len(items), batch):
            ids, span, *_ = collate(items[lo : lo + batch], pad)
            model.model(input_ids=ids)
            for x in layers:
                mean = (seen[x] * span[..., None]).sum(1) / span.sum(1, keepdim=True)
                out[x].append(mean.double())
    return {x: torch.cat(v).numpy() for x, v in out.items()}


def axis_report(means: dict[str, np.ndarray], fixed: list[Example], reference: str) -> dict:
    """Each checkpoint's roles and default on the reference checkpoint's Assistant Axis.

    `means` maps a label to the (n, hidden) response means of the `fixed` examples. Projections
    follow docs/definitions.md: p(v) = (v - mu_ref) . u_ref. `closed` is the fraction of the SFT
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


def geometry_report(means: np.ndarray, fixed: list[Example], likeness: dict[str, float]) -> dict:
    """The paper's persona-space figures for one checkpoint and layer, on the fixed text.

    One vector per role (all fixed text is fully in role), the persona space fitted by the
    analysis' own `PersonaSpace`, and the Spearman correlation of PC1 with planted likeness.
    """
    who = np.array([e.role for e in fixed])
    names = [r for r in dict.fromkeys(who) if r != roles.DEFAULT]
    vectors = np.stack([means[who == r].mean(0) for r in names])
    space = PersonaSpace().fit(vectors, means[who == roles.DEFAULT].mean(0), np.ones(len(names)))
    planted = [likeness[r] for r in names]
    pos = space.default_position_
    return {
        "cos_pc1_axis": space.cos_pc1_axis_,
        "position_pc1": float(pos[0]),
        "position_pc2_10": [float(pos[1:10].min()), float(pos[1:10].max())],
        "n_pcs_70": space.n_target_,
        "spearman_pc1_likeness": float(spearmanr(space.projections_[:, 0], planted)[0]),
    }


def response_norm(model, items: list[Item], layer: int, pad: int, batch: int = 32) -> float:
    """Mean per-token residual norm after block `layer` over the response tokens (as calibrate)."""
    import torch

    total, count, seen = 0.0, 0.0, {}
    with torch.no_grad(), on_blocks(model, {layer: partial(seen.__setitem__, "h")}):
        for lo in range(0, len(items), batch):
            ids, span, *_ = collate(items[lo : lo + batch], pad)
            model.model(input_ids=ids)
            total += float((seen["h"].norm(dim=-1) * span).sum())
            count += float(span.sum())
    return total / count


def steering_report(
    model, judge, tok, examples: list[Example], rubrics: dict, layer: int, per_role: int = 2
) -> dict:
    """The judge's mean score of sampled answers to `per_role` role prompts each of `examples`
    with c·m·û added at block `layer` (û: this model's axis on the examples, m: its mean
    response-token norm), per c of the grid, beside the plant's prediction from the unsteered
    scores."""
    import torch

    from persona_dynamics import chat
    from persona_dynamics.hooks import edit_blocks
    from persona_dynamics.judges import judge_prompt
    from persona_dynamics.toy.steer import GRID, predicted

    pad = tok.pad_token_id
    items = [encode(tok, e.messages, e.response) for e in examples]
    h = response_means(model, items, [layer], pad)[layer]
    who = np.array([e.role for e in examples])
    axis = h[who == roles.DEFAULT].mean(0) - h[who != roles.DEFAULT].mean(0)
    push = response_norm(model, items, layer, pad) * axis / np.linalg.norm(axis)
    asked, taken = [], {}
    for e in examples:
        if e.role != roles.DEFAULT and taken.get(e.role, 0) < per_role:
            asked.append(e)
            taken[e.role] = taken.get(e.role, 0) + 1
    prompts = [chat.prompt_text(tok, list(e.messages)) for e in asked]
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left",
                add_special_tokens=False)  # fmt: skip
    scores = {}
    for c in GRID:
        edit = torch.tensor(c * push, dtype=torch.float32)
        torch.manual_seed(0)
        with torch.no_grad(), edit_blocks(model, {layer: lambda x, _, v=edit: x + v}):
            out = model.generate(**batch, do_sample=True, temperature=0.7, top_p=0.9,
                                 max_new_tokens=64, pad_token_id=pad)  # fmt: skip
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        asks = [judge_prompt(rubrics[e.role], e.messages[-1]["content"], t)
                for e, t in zip(asked, texts, strict=True)]  # fmt: skip
        scores[c] = judge_scores(judge, tok, [encode(tok, m, "0") for m in asks])
    base = [s for s in scores[0.0] if s is not None]
    return {
        "grid": list(GRID),
        "score": [float(np.mean([s for s in scores[c] if s is not None])) for c in GRID],
        "predicted": [predicted(base, c) for c in GRID],
        "unparsed": [sum(s is None for s in scores[c]) for c in GRID],
        "n": len(asked),
    }


def reference_frame(
    means: np.ndarray, fixed: list[Example]
) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, unit axis, D) of one layer's fixed-text means: the role vectors' mean, the unit
    direction from it to the default Assistant's vector, and that distance D (the Assistant's
    distance from the mean role along the axis)."""
    who = np.array([e.role for e in fixed])
    names = [r for r in dict.fromkeys(who) if r != roles.DEFAULT]
    mu = np.stack([means[who == r].mean(0) for r in names]).mean(0)
    gap = means[who == roles.DEFAULT].mean(0) - mu
    return mu, gap / np.linalg.norm(gap), float(np.linalg.norm(gap))


def drift_slopes(means: np.ndarray, talks, frame) -> dict[str, float]:
    """Per family, the least-squares slope over turns of the replies' projections in units of D."""
    mu, axis, size = frame
    p = (means - mu) @ axis / size
    out = {}
    for family in dict.fromkeys(t.family for t in talks):
        rows = [i for i, t in enumerate(talks) if t.family == family]
        out[family] = float(np.polyfit([talks[i].turn for i in rows], p[rows], 1)[0])
    return out


def trait_report(means: np.ndarray, answers, planted: np.ndarray, axis: np.ndarray) -> dict:
    """One trait at one layer: cosine of (mean positive - mean negative answer) with the planted
    direction and with the axis."""
    pos = np.array([a.side == "pos" for a in answers])
    v = means[pos].mean(0) - means[~pos].mean(0)
    v = v / np.linalg.norm(v)
    return {"cos_planted": float(v @ planted), "cos_axis": float(v @ axis)}


def judge_numbers(model, tok, asks: list, max_new_tokens: int = 4) -> list[int | None]:
    """The judge's greedy answers to 0-100 prompts, read as persona_vectors' traits stage reads."""
    import torch

    from persona_dynamics import chat
    from persona_dynamics.traits.spec import parse_100

    prompts = [chat.prompt_text(tok, list(m)) for m in asks]
    out: list[int | None] = []
    with torch.no_grad():
        for lo in range(0, len(prompts), 16):
            batch = tok(prompts[lo : lo + 16], return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False)  # fmt: skip
            said = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                  pad_token_id=tok.pad_token_id)  # fmt: skip
            texts = tok.batch_decode(said[:, batch["input_ids"].shape[1] :],
                                     skip_special_tokens=True)  # fmt: skip
            out += [parse_100(t) for t in texts]
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


def measure(
    out: Path,
    tok,
    data: Corpus,
    spec: ToySpec,
    rubrics: dict[str, str],
    directions: dict[str, dict[int, np.ndarray]],
) -> dict:
    """Every saved stage on the fixed held-out text: the stage plant on the instruct Assistant
    Axis at the middle layer (`axis`), the persona geometry of base and instruct at every layer
    (`geometry`), instruct's steering relation as the judge scores it (`steering`), each stage's
    drift slopes on the shipped scripts along instruct's axis (`drift`), instruct's trait
    directions on held-out answers (`traits`) and the judge's 0-100 answers (`trait_judge`)."""
    from transformers import Olmo2ForCausalLM

    items = [encode(tok, e.messages, e.response) for e in data.fixed]
    talks = [encode(tok, t.messages, t.response) for t in data.scripted]
    answers = [encode(tok, a.messages, a.response) for a in data.trait_test]
    layers = list(range(spec.layers))
    means, talk_means = {}, {}
    for stage in spec.stages:
        model = Olmo2ForCausalLM.from_pretrained(out / stage).eval()
        means[stage] = response_means(model, items, layers, tok.pad_token_id)
        talk_means[stage] = response_means(model, talks, [spec.layer], tok.pad_token_id)
    likeness = spec.geometry().likeness()
    instruct = Olmo2ForCausalLM.from_pretrained(out / "instruct").eval()
    judge = Olmo2ForCausalLM.from_pretrained(out / "judge").eval()
    steering = steering_report(instruct, judge, tok, data.fixed, rubrics, spec.layer)
    frames = {x: reference_frame(means["instruct"][x], data.fixed) for x in layers}
    answer_means = response_means(instruct, answers, spec.trait_layers, tok.pad_token_id)
    said = judge_numbers(judge, tok, [m for m, _ in data.trait_judge_test])
    truth = [s for _, s in data.trait_judge_test]
    return {
        "axis": axis_report(
            {s: m[spec.layer] for s, m in means.items()}, data.fixed, reference="instruct"
        ),
        "geometry": {
            s: {str(x): geometry_report(means[s][x], data.fixed, likeness) for x in layers}
            for s in ("base", "instruct")
        },
        "steering": steering,
        "drift": {
            "layer": spec.layer,
            "per_turn": {
                s: drift_slopes(m[spec.layer], data.scripted, frames[spec.layer])
                for s, m in talk_means.items()
            },
        },
        "traits": {
            name: {
                str(x): trait_report(
                    answer_means[x][[a.trait == name for a in data.trait_test]],
                    [a for a in data.trait_test if a.trait == name],
                    directions[name][x],
                    frames[x][1],
                )
                for x in directions[name]
            }
            for name in directions
        },
        "trait_judge": {
            "agreement": float(np.mean([a == b for a, b in zip(said, truth, strict=True)])),
            "side_of_50": float(
                np.mean(
                    [
                        a is not None and (a >= 50) == (b >= 50)
                        for a, b in zip(said, truth, strict=True)
                    ]
                )
            ),  # fmt: skip
            "n": len(truth),
        },
    }
