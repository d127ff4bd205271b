"""Training the toy family: the LM loop, the planted stage dynamics, and the judge.

`fit` is AdamW on the response tokens' LM loss, plus, for the geometry phase and the stages after
it, an `Anchor`: a representation loss that pins each conversation's response mean at the planted
layers to a planned target (module docstring of `persona_dynamics.toy`). One torch thread keeps a
seed's weights bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from persona_dynamics import roles
from persona_dynamics.hooks import edit_blocks, on_blocks
from persona_dynamics.toy import drift, geometry, traits
from persona_dynamics.toy.data import Corpus
from persona_dynamics.toy.measure import judge_scores, response_means, response_norm
from persona_dynamics.toy.sequences import Item, collate, encode, encode_document
from persona_dynamics.toy.spec import ToySpec
from persona_dynamics.toy.steer import Steer
from persona_dynamics.toy.styles import FULL, PARTLY
from persona_dynamics.toy.traits import TRAITS

BUCKET = 8  # batches per length-sorted chunk in the plain LM phases (sft, judge)


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


def batches(
    lengths: list[int], size: int, steps: int, rng: np.random.Generator, bucket: int = 1
) -> Iterator[np.ndarray]:
    """`steps` index batches from successive seeded permutations; with `bucket` > 1, cut into
    chunks of `bucket` batches whose items are sorted by length (so a batch pads little), in
    random order. Bucketing speeds the plain LM phases; the anchored ones keep mixed batches,
    since the representation plants learn worse from batches of one kind."""
    order, ready = np.empty(0, dtype=int), []
    lengths = np.asarray(lengths)
    for _ in range(steps):
        if not ready:
            while len(order) < bucket * size:
                order = np.concatenate([order, rng.permutation(len(lengths))])
            chunk, order = order[: bucket * size], order[bucket * size :]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            ready = [chunk[k : k + size] for k in range(0, len(chunk), size)]
            if bucket > 1:
                ready = [ready[k] for k in rng.permutation(len(ready))]
        yield ready.pop()


@dataclass
class Anchor:
    """The auxiliary target: item i's response mean at layer x should equal `targets[x][i]`.

    Each layer's squared error is divided by its `scales[x]` (its squared SFT gap), weighted per
    item by `items` (default 1), then summed.
    """

    targets: dict[int, np.ndarray]
    scales: dict[int, float]
    weight: float
    items: np.ndarray | None = None


@dataclass
class Steered:
    """Item i trains with `coefficients[i]`·`vector` added at block `layer`'s output."""

    layer: int
    vector: np.ndarray
    coefficients: np.ndarray


def fit(
    model,
    items: list[Item],
    steps: int,
    batch: int,
    lr: float,
    rng,
    pad: int,
    anchor: Anchor | None = None,
    steered: Steered | None = None,
    bucket: int = 1,
):
    """AdamW on the response-token LM loss (+ the anchor's representation loss).

    The anchor's targets cover the first items; the rest (steered ones) carry none. Returns (loss,
    auxiliary loss) per step. The learning rate warms up over a tenth of the steps and decays
    linearly to a tenth.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (1.0 - 0.9 * s / steps)
    )
    targets = (
        {}
        if anchor is None
        else {x: torch.tensor(t, dtype=torch.float32) for x, t in anchor.targets.items()}
    )
    n_anchored = len(next(iter(targets.values()))) if targets else 0
    per_item = torch.ones(n_anchored)
    if anchor is not None and anchor.items is not None:
        per_item = torch.tensor(anchor.items, dtype=torch.float32)
    model.train()
    history = []
    seen: dict = {}
    keep = {x: partial(seen.__setitem__, x) for x in targets}
    edits, now = {}, {}
    if steered is not None:
        vector = torch.tensor(steered.vector, dtype=torch.float32)
        coefficients = torch.tensor(steered.coefficients, dtype=torch.float32)
        edits = {steered.layer: lambda h, _: h + now["c"][:, None, None] * vector}
    with edit_blocks(model, edits), on_blocks(model, keep):
        for idx in tqdm(
            batches([len(x.ids) for x in items], batch, steps, rng, bucket),
            total=steps,
            leave=False,
        ):
            if steered is not None:
                now["c"] = coefficients[idx]
            ids, span, rows, cols, labels = collate([items[i] for i in idx], pad)
            hidden = model.model(input_ids=ids).last_hidden_state
            loss = F.cross_entropy(model.lm_head(hidden[rows, cols]), labels)
            aux = torch.zeros(())
            mine = torch.from_numpy(idx < n_anchored)
            for x, t in targets.items():
                if not mine.any():
                    break
                s = span[mine]
                mean = (seen[x][mine] * s[..., None]).sum(1) / s.sum(1, keepdim=True)
                at = idx[mine.numpy()]
                err = ((mean - t[at]) ** 2).sum(-1) * per_item[at]
                aux = aux + err.mean() / anchor.scales[x]
            if anchor is not None:
                loss = loss + anchor.weight * aux
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            history.append((loss.item(), aux.item()))
    model.eval()
    return history


def _save(model, tok, path: Path, chat_template: bool = True) -> None:
    """Save weights and tokenizer; base checkpoints, like the real ones, carry no chat template."""
    import copy

    model.save_pretrained(path)
    if not chat_template:
        tok = copy.deepcopy(tok)
        tok.chat_template = None
    tok.save_pretrained(path)


def train_stages(
    out: Path, tok, data: Corpus, spec: ToySpec, seed: int
) -> tuple[dict[str, list], Steer, dict[str, dict[int, np.ndarray]]]:
    """Train and save base, sft and the planted later stages; return each stage's losses, the
    steering plant's vector and the traits' planted directions per layer."""
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
    extra = [encode(tok, x.messages, x.response) for x in [*data.talks, *data.traited]]
    rng = np.random.default_rng([seed, 11])
    losses["sft"] = fit(
        model, items + extra, spec.sft_steps, spec.batch, spec.lr, rng, pad, bucket=BUCKET
    )
    # The geometry phase, then the stage plant, on the anchored conversations (module docstring),
    # with the drift and trait plants' conversations after them.
    convs, items = convs[: spec.anchored], items[: spec.anchored]
    n = len(items)
    items += extra
    layers = spec.planted_layers
    who = np.array([e.role for e in convs])
    full = np.array([e.score == FULL for e in convs])
    playing = np.array([e.score in (FULL, PARTLY) for e in convs])
    h = response_means(model, items, layers, pad)
    plan = spec.geometry()
    planned, directions = planted_targets(h, who, full, playing, data, spec, seed)
    # The steering plant (toy.steer) rides along: its conversations after the anchored ones.
    _, g, _ = geometry.frame(h[spec.layer][:n], who, full)
    norm = response_norm(model, items[:n], spec.layer, pad)
    steer = Steer(spec.layer, norm * g, norm)
    anchored = len(items)
    coefficients = np.array([0.0] * anchored + [c for _, c in data.steered])
    steered = Steered(steer.layer, steer.vector, coefficients)
    items = items + [encode(tok, e.messages, e.response) for e, _ in data.steered]
    weights = np.ones(anchored)
    weights[n : n + len(data.talks)] = spec.drift_weight
    anchor = Anchor(
        {x: t for x, (t, _) in planned.items()},
        {x: s for x, (_, s) in planned.items()},
        spec.aux_weight,
        weights,
    )
    rng = np.random.default_rng([seed, 12])
    losses["geometry"] = fit(
        model, items, spec.geometry_steps, spec.batch, spec.stage_lr, rng, pad, anchor, steered
    )
    _save(model, tok, out / "sft")

    # The stage plant: pin every anchored response mean to the SFT model's, moving role-play
    # responses (scores 3 and 2) by fraction f of the SFT role-to-Assistant gap, at every layer;
    # the drift talks keep being drawn to their planned places.
    h0 = response_means(model, items[:anchored], layers, pad)
    moved = np.concatenate([playing, np.zeros(anchored - n, dtype=bool)])
    gaps, kept = {}, {}
    for x in layers:
        _, g, size = geometry.frame(h0[x][:n], who, full)
        gaps[x], kept[x] = size * g, h0[x].copy()
        if x in spec.drift_layers:
            rows = slice(n, n + len(data.talks))
            default = h0[x][:n][who == roles.DEFAULT].mean(0)
            sft_gap = float(np.sqrt(planned[x][1]))
            kept[x][rows] = drift.place(h0[x][rows], default, g, sft_gap, data.talks, plan)
    for k, stage in enumerate(spec.stages[2:]):
        f = spec.fractions()[stage]
        anchor = Anchor(
            {x: kept[x] + f * moved[:, None] * gaps[x] for x in layers},
            {x: float(gaps[x] @ gaps[x]) for x in layers},
            spec.aux_weight,
            weights,
        )
        rng = np.random.default_rng([seed, 20 + k])
        losses[stage] = fit(
            model, items, spec.stage_steps, spec.batch, spec.stage_lr, rng, pad, anchor, steered
        )
        _save(model, tok, out / stage)
    return losses, steer, directions


def planted_targets(
    h: dict[int, np.ndarray], who, full, playing, data: Corpus, spec: ToySpec, seed: int
) -> tuple[dict[int, tuple[np.ndarray, float]], dict[str, dict[int, np.ndarray]]]:
    """The geometry phase's (targets, loss scale) per planted layer for the anchored items in
    order (role conversations, drift talks, trait answers), and the traits' planted directions.

    Roles and the default go where `geometry.targets` plans; talks and trait answers move out
    with the default, then each (family, turn)'s mean is set to its planned place along g (at
    the drift layers) and each trait's positive answers' mean to the negative ones' plus the
    planted vector (at the trait layers)."""
    n, plan = len(who), spec.geometry()
    planned, directions = {}, {name: {} for name in TRAITS}
    for x, hx in h.items():
        roles_t, scale = geometry.targets(hx[:n], who, full, playing, plan)
        _, g, size = geometry.frame(hx[:n], who, full)
        push = (plan.push - 1.0) * size * g
        talks = hx[n : n + len(data.talks)] + push
        if x in spec.drift_layers:
            default = hx[:n][who == roles.DEFAULT].mean(0) + push
            talks = drift.place(talks, default, g, size, data.talks, plan)
        said = hx[n + len(data.talks) :]
        answers = said + (plan.push - 1.0) * size * g
        for k, name in enumerate(TRAITS if x in spec.trait_layers else ()):
            v = traits.direction(g, TRAITS[name].cos_axis, np.random.default_rng([seed, 40, x, k]))
            directions[name][x] = v
            pos = np.array([t.trait == name and t.side == "pos" for t in data.traited])
            neg = np.array([t.trait == name and t.side == "neg" for t in data.traited])
            answers[pos] += traits.MAGNITUDE * size * v - (said[pos].mean(0) - said[neg].mean(0))
        planned[x] = (np.concatenate([roles_t, talks, answers]), scale)
    return planned, directions


def train_judge(out: Path, tok, data: Corpus, spec: ToySpec, seed: int) -> tuple[list, float]:
    """Fine-tune the SFT checkpoint into the judge; return its losses and held-out agreement."""
    from transformers import Olmo2ForCausalLM

    judge = Olmo2ForCausalLM.from_pretrained(out / "sft")
    items = [encode(tok, msgs, str(score)) for msgs, score in data.judged]
    rng = np.random.default_rng([seed, 30])
    losses = fit(
        judge, items, spec.judge_steps, spec.judge_batch, spec.judge_lr, rng, tok.pad_token_id,
        bucket=BUCKET,
    )  # fmt: skip
    _save(judge, tok, out / "judge")
    said = judge_scores(judge, tok, [encode(tok, msgs, str(s)) for msgs, s in data.judge_test])
    truth = [s for _, s in data.judge_test]
    return losses, float(np.mean([a == b for a, b in zip(said, truth, strict=True)]))
