"""What a toy build measures: each stage's roles and Assistant on the reference Assistant Axis
(the planted quantity, on held-out text) and the judge's answers.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from persona_dynamics import roles
from persona_dynamics.hooks import on_blocks
from persona_dynamics.toy.data import Corpus, Example
from persona_dynamics.toy.sequences import Item, collate, encode
from persona_dynamics.toy.spec import ToySpec


def response_means(model, items: list[Item], layer: int, pad: int, batch: int = 32) -> np.ndarray:
    """Mean residual after block `layer` over each item's response tokens, (n, hidden) float64."""
    import torch

    out, seen = [], {}
    with torch.no_grad(), on_blocks(model, {layer: partial(seen.__setitem__, "h")}):
        for lo in range(0, len(items), batch):
            ids, span, *_ = collate(items[lo : lo + batch], pad)
            model.model(input_ids=ids)
            out.append(((seen["h"] * span[..., None]).sum(1) / span.sum(1, keepdim=True)).double())
    return torch.cat(out).numpy()


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


def measure(out: Path, tok, data: Corpus, spec: ToySpec) -> dict:
    """Every saved stage on the fixed held-out text, on the instruct Assistant Axis."""
    from transformers import Olmo2ForCausalLM

    items = [encode(tok, e.messages, e.response) for e in data.fixed]
    means = {}
    for stage in spec.stages:
        model = Olmo2ForCausalLM.from_pretrained(out / stage).eval()
        means[stage] = response_means(model, items, spec.layer, tok.pad_token_id)
    return axis_report(means, data.fixed, reference="instruct")
