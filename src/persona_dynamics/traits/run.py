"""The `traits` stage: a vector per trait and layer from contrasting system prompts.

For each trait, the checkpoint answers every question under each positive and each negative
system prompt; the judge scores every answer's trait expression and coherence 0-100. Answers to
the held-out questions are set aside; of the rest, positive answers scoring at least
`traits.threshold` and negative ones below it, both coherent enough, are kept, and the vector at
layer i is the mean of the kept positive answers' mean block outputs minus the negative ones'.
Writes `traits/<run>/<trait>.json` (answers and scores, the per-trait resume unit),
`vectors.h5` and `summary.json` (counts, the held-out AUC per layer, cosines with the run's axis
and top PCs when a space exists).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from persona_dynamics import __version__
from persona_dynamics.chat import encode
from persona_dynamics.config import Study
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json
from persona_dynamics.generation.hf import HFGenerator
from persona_dynamics.generation.requests import Request, Sampling, derive_seed
from persona_dynamics.hooks import block_spans
from persona_dynamics.judges import make_judge
from persona_dynamics.layers import resolve
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.spacefile import read_directions
from persona_dynamics.traits.spec import COHERENCE, Trait, fill, load_trait, parse_100

log = logging.getLogger(__name__)


def settings(cfg: Study, trait: Trait) -> dict:
    """What makes a trait's answers and scores; compared on resume."""
    t, ckpt = cfg.traits, cfg.checkpoint(cfg.traits.checkpoint or cfg.reference_label)
    return {"trait": trait.name, "model": ckpt.model, "revision": ckpt.revision,
            "adapter": ckpt.adapter, "judge": cfg.judge.model, "questions": t.question_count,
            "rollouts": t.rollouts, "temperature": t.temperature, "top_p": t.top_p,
            "max_tokens": t.max_tokens, "seed": t.seed, "pairs": trait.pairs,
            "rubric": trait.rubric}  # fmt: skip


def answers(cfg: Study, trait: Trait, gen, judge) -> list[dict]:
    """Every (side, pair, question, rollout) answer, with its trait and coherence scores."""
    t = cfg.traits
    qs = trait.questions[: t.question_count]
    reqs = [Request((side, j, i), ({"role": "system", "content": pair[k]},
                                   {"role": "user", "content": q}),
                    tuple(range(t.rollouts)), derive_seed(t.seed, trait.name, side, j, i))
            for k, side in enumerate(("pos", "neg")) for j, pair in enumerate(trait.pairs)
            for i, q in enumerate(qs)]  # fmt: skip
    sampling = Sampling(t.temperature, t.top_p, t.max_tokens, t.seed)
    rows = []
    for batch in gen.generate(reqs, sampling):
        for res in batch:
            side, j, i = res.request.id
            msgs = list(res.request.messages)
            rows.append({"side": side, "pair": j, "question": i, "rollout": res.rollout,
                         "messages": msgs, "response": res.response})  # fmt: skip
    rows.sort(key=lambda r: (r["side"], r["pair"], r["question"], r["rollout"]))
    items = []
    for n, r in enumerate(rows):
        q = qs[r["question"]]
        items += [((n, "trait"), fill(trait.rubric, q, r["response"])),
                  ((n, "coherence"), fill(COHERENCE, q, r["response"]))]  # fmt: skip
    for (n, what), raw in tqdm(judge.answer(items), total=len(items), desc=f"judge {trait.name}"):
        rows[n][what] = parse_100(raw)
        rows[n][f"{what}_raw"] = raw
    return rows


def activations(model, tok, rows: list[dict], layers: list[int]) -> np.ndarray:
    """(rows, layers, hidden) mean block outputs over each answer's tokens (NaN if empty)."""
    out = np.full((len(rows), len(layers), model.config.hidden_size), np.nan, np.float32)
    for n, r in enumerate(tqdm(rows, desc="trait activations", mininterval=2)):
        enc = encode(tok, r["messages"], r["response"])
        if enc.n_response == 0:
            continue
        spans = block_spans(model, enc.input_ids, enc.start, enc.end, layers)
        for s, i in enumerate(layers):
            out[n, s] = spans[i].mean(0).cpu().numpy()
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties half (Mann-Whitney); NaN without both."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def vector(cfg: Study, trait: Trait, rows: list[dict], acts: np.ndarray, layers: list[int]):
    """(vectors (layers, hidden), summary) from the kept answers; held-out AUC per layer."""
    t = cfg.traits
    n_q = len(trait.questions[: t.question_count])
    held = set(range(n_q - int(round(t.holdout * n_q)), n_q))
    ok = np.array([not np.isnan(acts[n, 0, 0]) for n in range(len(rows))])
    coherent = np.array([(r.get("coherence") or 0) >= t.coherence for r in rows])
    score = np.array([np.nan if r.get("trait") is None else r["trait"] for r in rows], float)
    side = np.array([r["side"] for r in rows])
    train = np.array([r["question"] not in held for r in rows])
    pos = ok & train & coherent & (side == "pos") & (score >= t.threshold)
    neg = ok & train & coherent & (side == "neg") & (score < t.threshold)
    if not pos.any() or not neg.any():
        raise PersonaDynamicsError(
            f"{trait.path}: {int(pos.sum())} positive and {int(neg.sum())} negative answers pass "
            f"the filters (trait >= {t.threshold} / < {t.threshold}, coherence >= {t.coherence}); "
            "a vector needs both"
        )
    vecs = acts[pos].mean(0) - acts[neg].mean(0)
    hp, hn = ok & ~train & (side == "pos"), ok & ~train & (side == "neg")
    aucs = {str(i): auc(acts[hp, s] @ vecs[s], acts[hn, s] @ vecs[s]) for s, i in enumerate(layers)}
    summary = {
        "n_answers": len(rows), "n_pos": int(pos.sum()), "n_neg": int(neg.sum()),
        "n_unscored": int(np.isnan(score).sum()), "heldout_questions": sorted(held),
        "auc_heldout": aucs,
    }  # fmt: skip
    return vecs, summary


def cosines(cfg: Study, vecs: np.ndarray, layers: list[int]) -> dict:
    """Cosine of each layer's trait vector with the run's axis and PC1-3, where analyzed."""
    space = cfg.path("analysis", "space.h5")
    if not space.exists():
        return {}
    out = {}
    for name in ("axis", "pc1", "pc2", "pc3"):
        try:
            dirs = read_directions(space, name)
        except PersonaDynamicsError:  # a space with fewer PCs: that one is not reported
            continue
        out[name] = {str(i): float(vecs[s] @ dirs[i] / np.linalg.norm(vecs[s])
                                   / np.linalg.norm(dirs[i]))
                     for s, i in enumerate(layers) if i in dirs}  # fmt: skip
    return out


def run_traits(cfg: Study) -> Path:
    """Answers, scores, vectors and a summary for every trait spec; returns traits/<run>."""
    with hold(lock_file(cfg.path("traits"), "traits")):
        return _run_traits(cfg)


def _run_traits(cfg: Study) -> Path:
    """run_traits's work, under the run lock."""
    t = cfg.traits
    if not t.specs:
        raise PersonaDynamicsError("no traits.specs in the config: nothing to extract")
    if cfg.judge is None:
        raise PersonaDynamicsError("traits needs a [judge] section to score trait expression")
    specs = [load_trait(p) for p in t.specs]
    ckpt = cfg.checkpoint(t.checkpoint or cfg.reference_label)
    g = cfg.generation
    gen = HFGenerator(ckpt, g.device, g.dtype, g.batch_tokens)
    layers = resolve(t.layers, gen.model.config.num_hidden_layers, "traits.layers")
    out = cfg.path("traits")
    out.mkdir(parents=True, exist_ok=True)
    judge = None
    vectors, summary = {}, {}
    for trait in specs:
        path, want = out / f"{trait.name}.json", settings(cfg, trait)
        had = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if had and had.get("settings") == json.loads(json.dumps(want)):
            rows = had["rows"]
        else:
            judge = judge or make_judge(cfg.judge)
            rows = answers(cfg, trait, gen, judge)
            write_json(path, {"settings": want, "rows": rows})
        acts = activations(gen.model, gen.tokenizer, rows, layers)
        vectors[trait.name], summary[trait.name] = vector(cfg, trait, rows, acts, layers)
        summary[trait.name]["cosines"] = cosines(cfg, vectors[trait.name], layers)
    write_vectors(out / "vectors.h5", vectors, layers, summary, gen.info())
    write_json(out / "summary.json", {"layers": layers, "traits": summary, "model": gen.info(),
                                      "version": __version__})  # fmt: skip
    return out


def write_vectors(path: Path, vectors: dict, layers: list[int], summary: dict, model: dict):
    """vectors.h5: one group per trait, `vectors` (layers, hidden), counts as attributes."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        h5.attrs["layers"] = layers
        h5.attrs["model"] = json.dumps(model)
        for name, v in vectors.items():
            g = h5.create_group(name)
            g.create_dataset("vectors", data=v.astype(np.float32))
            for k in ("n_pos", "n_neg", "n_answers"):
                g.attrs[k] = summary[name][k]
    tmp.replace(path)
    return path
